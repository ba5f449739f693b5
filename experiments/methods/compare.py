"""The methods grid of config.py as Markdown tables: RTN, GPTQ and AWQ side by side.

    python experiments/methods/compare.py W/results

1. Validation perplexity per size, k and data type under each method, with total model
   bits (GPTQ stores what RTN stores; AWQ adds its unfolded scales).
2. Quantization damage ppl(k) / ppl(16) per data type and method, geometric mean over the
   sizes.
3. The bit-optimal k per method: at budgets spread over the total bits that every
   method's quantized cells span, each k's perplexity is interpolated between sizes
   (linear in log bits, log ppl, the study's procedure; no extrapolation) and the k with
   the lowest wins; counted per method and data type. `kbit report`'s "Bit-optimal k per
   quantization method" does the same on its own budgets, with bootstrap shares over
   training seeds.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from kbit_jax.analysis import results

PPL = "ppl/validation/perplexity"
METHODS = ("rtn", "gptq", "awq")
BUDGETS = 12


def load_cells(results_dir: str) -> pd.DataFrame:
  df = results.load(results_dir)
  df["method"] = df["method"].fillna("rtn")
  df["dtype"] = np.where(df["bits"] == 16, "-", df["dtype"])
  return df


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def perplexity_table(df: pd.DataFrame) -> str:
  wide = df.pivot_table(index=["preset", "bits", "dtype"], columns="method", values=PPL)
  mbit = df.pivot_table(index=["preset", "bits", "dtype"], columns="method", values="total_bits")
  rows = []
  for (preset, k, dtype), r in wide.sort_index(ascending=[True, False, True]).iterrows():
    got = [f"{r[m]:.2f}" if m in r and not np.isnan(r[m]) else "-" for m in METHODS]
    bits = mbit.loc[(preset, k, dtype)]
    awq_bits = f" / {bits['awq'] / 1e6:.3f}" if k != 16 else ""
    rows.append([preset, str(k), dtype, f"{bits['rtn'] / 1e6:.3f}{awq_bits}", *got])
  return _table(["size", "k", "dtype", "Mbit (rtn, gptq / awq)", *METHODS], rows)


def damage_table(df: pd.DataFrame) -> str:
  base = df[df["bits"] == 16].set_index("preset")[PPL]
  q = df[df["bits"] != 16].copy()
  q["ratio"] = q[PPL] / q["preset"].map(base)
  geo = q.groupby(["bits", "dtype", "method"])["ratio"].apply(lambda r: np.exp(np.log(r).mean()))
  rows = []
  for k in sorted(q["bits"].unique()):
    for dtype in sorted(q["dtype"].unique()):
      rows.append([str(k), dtype, *(f"{geo[(k, dtype, m)]:.4f}" for m in METHODS)])
  return _table(["k", "dtype", *(f"{m} ppl(k)/ppl(16)" for m in METHODS)], rows)


def best_k(df: pd.DataFrame, method: str, dtype: str, budgets: np.ndarray) -> list[int | None]:
  """Per budget the k whose interpolated perplexity is lowest (None: no k reaches it)."""
  curves = {}
  for k in sorted(df["bits"].unique()):
    rows = df[(df["bits"] == k) & ((k == 16) | ((df["method"] == method) & (df["dtype"] == dtype)))]
    rows = rows.sort_values("total_bits")
    curves[k] = (np.log(rows["total_bits"].to_numpy()), np.log(rows[PPL].to_numpy()))
  out = []
  for b in np.log(budgets):
    at = {k: np.interp(b, x, y) for k, (x, y) in curves.items() if x[0] <= b <= x[-1]}
    out.append(min(at, key=at.get) if at else None)
  return out


def bit_optimal_table(df: pd.DataFrame) -> str:
  q = df[df["bits"] != 16]
  span = q.groupby("method")["total_bits"].agg(["min", "max"])  # AWQ's cells sit higher
  budgets = np.geomspace(span["min"].max(), span["max"].min(), BUDGETS)
  rows = []
  for dtype in sorted(q["dtype"].unique()):
    per = {m: best_k(df, m, dtype, budgets) for m in METHODS}
    for m in METHODS:
      wins = pd.Series([k for k in per[m] if k is not None]).value_counts().sort_index()
      moved = sum(a != b for a, b in zip(per[m], per["rtn"]) if a is not None and b is not None)
      rows.append([dtype, m, ", ".join(f"k{k}: {n}" for k, n in wins.items()), str(moved)])
  return _table(["dtype", "method", f"best k over {BUDGETS} budgets", "budgets != rtn"], rows)


def main(results_dir: str) -> None:
  df = load_cells(results_dir)
  print(perplexity_table(df), damage_table(df), bit_optimal_table(df), sep="\n\n")


if __name__ == "__main__":
  main(sys.argv[1])

"""Side by side: the GPT-style and the Llama-style grids of config.py (Markdown tables).

    python experiments/model_families/compare.py W/gpt/results W/llama/results

1. Perplexity at each k per size pair (s_i, l_i: equal total parameters), with total
   model bits: at one k the Llama-style model holds slightly more quantized parameters
   (no position table, no biases), so its bits differ a little from the GPT-style one's.
2. Quantization damage ppl(k) / ppl(16), per family (geometric mean over its sizes).
3. Bit-level scaling: per family and k the power law ppl = c x bits^b fitted by least
   squares in log-log over the sizes (b < 0: more bits, lower perplexity), both fits
   compared at one budget of total bits inside both families' ranges, and each family's
   Pareto frontier over all its cells (the bit-optimal cells).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from kbit_jax.analysis import results

PPL = "ppl/validation/perplexity"


def _cells(results_dir: str, family: str) -> pd.DataFrame:
  df = results.load(results_dir)
  df = df[df["act_bits"].isna() | (df["act_bits"] == 16)] if "act_bits" in df else df
  df = df[(df["bits"] == 16) | (df["blocksize"] == 64)].copy()
  df["family"] = family
  df["dtype"] = np.where(df["bits"] == 16, "-", df["dtype"])
  sizes = sorted(df["preset"].unique(), key=lambda p: df.loc[df["preset"] == p, "params"].iloc[0])
  df["size"] = df["preset"].map({p: i + 1 for i, p in enumerate(sizes)})
  return df


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def side_by_side(gpt: pd.DataFrame, llama: pd.DataFrame) -> str:
  key = ["size", "dtype", "bits"]
  both = gpt.merge(llama, on=key, suffixes=("_g", "_l")).sort_values(key)
  rows = [
    [
      f"{r.preset_g} / {r.preset_l}",
      str(r.bits),
      r["dtype"],
      f"{r.total_bits_g / 1e6:.2f} / {r.total_bits_l / 1e6:.2f}",
      f"{r[PPL + '_g']:.1f}",
      f"{r[PPL + '_l']:.1f}",
      f"{r[PPL + '_l'] / r[PPL + '_g']:.3f}",
    ]
    for _, r in both.iterrows()
  ]
  return _table(
    ["sizes", "k", "dtype", "Mbit (gpt / llama)", "ppl gpt", "ppl llama", "ratio"], rows
  )


def damage(cells: pd.DataFrame) -> str:
  base = cells[cells["bits"] == 16].set_index(["family", "size"])[PPL]
  q = cells[cells["bits"] != 16].copy()
  q["damage"] = q[PPL].to_numpy() / base.loc[list(zip(q["family"], q["size"]))].to_numpy()
  g = q.groupby(["dtype", "bits", "family"])["damage"].apply(lambda d: np.exp(np.log(d).mean()))
  g = g.unstack("family")
  rows = [[str(k), d, *(f"{g.loc[(d, k), f]:.3f}" for f in g.columns)] for d, k in g.index]
  return _table(["k", "dtype", *[f"ppl(k)/ppl(16) {f}" for f in g.columns]], rows)


def scaling(cells: pd.DataFrame) -> str:
  """Per (k, dtype): each family's exponent b, and both fits at one budget inside both
  families' ranges of total bits (the geometric middle of the overlap)."""
  rows = []
  for (dtype, k), c in cells.groupby(["dtype", "bits"]):
    fits, spans = {}, {}
    for family, f in c.groupby("family"):
      fits[family] = np.polyfit(np.log(f["total_bits"]), np.log(f[PPL]), 1)
      spans[family] = (f["total_bits"].min(), f["total_bits"].max())
    low, high = max(s[0] for s in spans.values()), min(s[1] for s in spans.values())
    at = np.sqrt(low * high)
    ppl = {family: np.exp(np.polyval(fit, np.log(at))) for family, fit in fits.items()}
    rows.append(
      [
        str(k),
        dtype,
        f"{fits['gpt'][0]:.3f}",
        f"{fits['llama'][0]:.3f}",
        f"{at / 1e6:.2f}" + ("" if low <= high else " (no overlap)"),
        f"{ppl['gpt']:.1f}",
        f"{ppl['llama']:.1f}",
        f"{ppl['llama'] / ppl['gpt']:.3f}",
      ]
    )
  header = ["k", "dtype", "b gpt", "b llama", "at Mbit", "ppl gpt", "ppl llama", "ratio"]
  return _table(header, rows)


def frontier(cells: pd.DataFrame) -> str:
  rows = []
  for family, c in cells.groupby("family"):
    best = np.inf
    for _, r in c.sort_values("total_bits").iterrows():
      if r[PPL] < best:
        best = r[PPL]
        rows.append(
          [family, r.preset, str(r.bits), r["dtype"], f"{r.total_bits / 1e6:.2f}", f"{best:.1f}"]
        )
  return _table(["family", "size", "k", "dtype", "Mbit", "ppl"], rows)


def main(gpt_dir: str, llama_dir: str) -> str:
  gpt, llama = _cells(gpt_dir, "gpt"), _cells(llama_dir, "llama")
  cells = pd.concat([gpt, llama], ignore_index=True)
  parts = [
    "Perplexity (validation) at B=64, per size pair and k:\n\n" + side_by_side(gpt, llama),
    "Quantization damage (geometric mean over the sizes):\n\n" + damage(cells),
    "Bit-level scaling, ppl = c x bits^b over the sizes, compared at equal total bits:\n\n"
    + scaling(cells),
    "Pareto frontier (no cell with fewer bits has lower perplexity):\n\n" + frontier(cells),
  ]
  text = "\n\n".join(parts)
  print(text)
  return text


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: compare.py GPT_RESULTS_DIR LLAMA_RESULTS_DIR")
  main(sys.argv[1], sys.argv[2])

"""The grid's extra axes, analysed: k-bit probes, activation bits, training tokens.

    cells = extra_axes.axes_cells(store)             # store: cells.load_store(results_dir)
    probe = extra_axes.probe_table(cells)            # recovered bits per size x weight k
    acts = extra_axes.act_tables(cells, "nll")       # {preset: weight k x activation a}
    fits = extra_axes.nd_fits(cells)                 # Performance = a * N^b * D^c
    pen = extra_axes.ptq_penalty(cells)              # PTQ penalty vs D at fixed N

The cells are a store's (cells.load_store) of its most common eval_id, activation-
quantized ones included: none of check_cells' other checks apply here. Weight-only tables
and fits use act_bits = 16 cells, one method: the *main* one (labels.main_method), the
one the figures and the report show.

N-D fit: on the 16-bit (weights and activations) cells, ln y = ln a + b ln N + c ln D by
least squares, y = nll (ln perplexity: "loss") and y = mean zero-shot accuracy, N the
non-embedding parameters, D the training tokens; needs >= 2 distinct N, >= 2 distinct D
and more points than parameters (3).

PTQ penalty: nll(k-bit) - nll(16-bit) of the same trained model (preset, seed, D); per
(preset, k) against D and D/N, with the slope of ln penalty vs ln D where positive.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from etils import epath

from kbit_jax.analysis.cells import METRICS, keep_largest
from kbit_jax.analysis.labels import BASELINE_BITS, main_method, tokens_label


def axes_cells(cells: pd.DataFrame) -> pd.DataFrame:
  """The cells the extra axes are analysed on: those of a store (cells.load_store), act_bits
  < 16 included, of its most common eval_id."""
  return keep_largest(cells, "eval_id", "evaluation settings (eval_id)", [])


def main_method_cells(cells: pd.DataFrame) -> pd.DataFrame:
  """The 16-bit cells and the cells of the main method (labels.main_method), at every
  activation precision."""
  base = cells[cells["k"] == BASELINE_BITS]
  main = main_method(cells)
  return base if main is None else pd.concat([base, cells[cells["method"] == main.label]])


def _weights_only(cells: pd.DataFrame) -> pd.DataFrame:
  return main_method_cells(cells[cells["act_bits"] == BASELINE_BITS])


# ----------------------------------------------------------------------------- probes


def probe_columns(cells: pd.DataFrame, metric: str = "bits") -> list[str]:
  """probe_<metric>/k<k> columns, by k."""
  cols = [c for c in cells.columns if c.startswith(f"probe_{metric}/k")]
  return sorted(cols, key=lambda c: int(c.rsplit("k", 1)[1]))


def probe_table(cells: pd.DataFrame) -> pd.DataFrame:
  """Rows (tokens, params, preset, weight k): recovered bits per probe, their sum and
  max_k (weights-only cells of the main method, mean over seeds); empty without probes."""
  cols = probe_columns(cells) + [
    c for c in ("probe_bits/summary", "probe_max_k/summary") if c in cells
  ]
  if not probe_columns(cells):
    return pd.DataFrame()
  w = _weights_only(cells)
  table = w.groupby(["tokens", "n", "preset", "k"])[cols].mean()
  return table.rename(
    columns={
      **{c: c.split("/")[-1] for c in probe_columns(cells)},
      "probe_bits/summary": "bits total",
      "probe_max_k/summary": "max_k",
    }
  )


def probe_fits(cells: pd.DataFrame) -> pd.DataFrame:
  """Recovered bits (summed over the probes) = a + b ln x, by least squares over sizes,
  per training budget and weight k, for x = N (non-embedding parameters; the claim is
  k-bit reasoning ~ log N) and x = total model bits. Needs >= 2 sizes; `sizes` says how
  many points each line has (with 2 it is exact, not a fit)."""
  if "probe_bits/summary" not in cells:
    return pd.DataFrame()
  rows = []
  for (tokens, k), g in _weights_only(cells).groupby(["tokens", "k"]):
    per_size = g.groupby("preset")[["n", "total_bits", "probe_bits/summary"]].mean()
    if len(per_size) < 2:
      continue
    for column, x in (("n", "ln N"), ("total_bits", "ln total bits")):
      slope, intercept = np.polyfit(np.log(per_size[column]), per_size["probe_bits/summary"], 1)
      rows.append(
        dict(tokens=tokens, k=k, x=x, slope=slope, intercept=intercept, sizes=len(per_size))
      )
  return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- activations


def act_tables(cells: pd.DataFrame, metric: str = "nll") -> dict[str, pd.DataFrame]:
  """{"<preset> D=<tokens>": rows weight k, columns activation bits a: `metric`} for each
  model with act_bits < 16 cells (main method, mean over seeds); {} without them."""
  if metric not in cells or not (cells["act_bits"] != BASELINE_BITS).any():
    return {}
  main = main_method_cells(cells).sort_values(["n", "tokens"])
  out = {}
  for (_, preset, tokens), group in main.groupby(["n", "preset", "tokens"], sort=True):
    if (group["act_bits"] != BASELINE_BITS).any():
      table = group.pivot_table(index="k", columns="act_bits", values=metric, aggfunc="mean")
      out[f"{preset} {tokens_label(tokens)}"] = table
  return out


# ----------------------------------------------------------------------------- N x D


def nd_fit(cells: pd.DataFrame, metric: str) -> dict[str, Any] | None:
  """ln metric = ln a + b ln N + c ln D on the 16-bit cells; None if not identifiable."""
  base = cells[(cells["k"] == BASELINE_BITS) & (cells["act_bits"] == BASELINE_BITS)]
  base = base[np.isfinite(base[metric].to_numpy(float)) & (base[metric] > 0) & (base["tokens"] > 0)]
  if base["n"].nunique() < 2 or base["tokens"].nunique() < 2 or len(base) < 4:
    return None
  x = np.stack(
    [np.ones(len(base)), np.log(base["n"].to_numpy(float)), np.log(base["tokens"].to_numpy(float))],
    axis=1,
  )
  y = np.log(base[metric].to_numpy(float))
  coef, *_ = np.linalg.lstsq(x, y, rcond=None)
  resid = y - x @ coef
  r2 = 1 - float(resid @ resid) / max(float(((y - y.mean()) ** 2).sum()), 1e-300)
  return {
    "metric": metric,
    "a": float(np.exp(coef[0])),
    "b": float(coef[1]),
    "c": float(coef[2]),
    "r2": r2,
    "points": len(base),
    "rmse_log": float(np.sqrt(np.mean(resid**2))),
  }


def nd_fits(cells: pd.DataFrame) -> dict[str, dict[str, Any]]:
  """{metric: fit} for nll (loss) and acc where identifiable."""
  return {m: f for m in METRICS if (f := nd_fit(cells, m)) is not None}


# ----------------------------------------------------------------------------- PTQ vs D


def ptq_penalty(cells: pd.DataFrame) -> pd.DataFrame:
  """One row per quantized weights-only cell of the main method: preset, n, seed, tokens,
  D/N, k, penalty = nll(k) - nll(16-bit of the same model)."""
  w = _weights_only(cells)
  base = w[w["k"] == BASELINE_BITS].set_index("unit")["nll"]
  q = w[(w["k"] != BASELINE_BITS) & w["unit"].isin(base.index)]
  out = pd.DataFrame(
    {
      "preset": q["preset"],
      "n": q["n"],
      "seed": q["seed"],
      "tokens": q["tokens"],
      "d_over_n": q["tokens"] / q["n"],
      "k": q["k"],
      "penalty": q["nll"].to_numpy() - base.loc[q["unit"]].to_numpy(),
    }
  )
  return out.reset_index(drop=True)


def penalty_table(penalty: pd.DataFrame) -> pd.DataFrame:
  """Rows (preset, k), columns D: mean penalty; plus the slope of ln penalty vs ln D."""
  if penalty.empty:
    return pd.DataFrame()
  table = penalty.pivot_table(
    index=["n", "preset", "k"], columns="tokens", values="penalty", aggfunc="mean"
  )

  def slope(row: pd.Series) -> float:
    ok = row.notna() & (row > 0)
    if ok.sum() < 2:
      return float("nan")
    return float(np.polyfit(np.log(row.index[ok].to_numpy(float)), np.log(row[ok]), 1)[0])

  table["slope ln pen/ln D"] = table.apply(slope, axis=1)
  return table.droplevel("n")


# ----------------------------------------------------------------------------- output


def write_tables(cells: pd.DataFrame, out_dir: str) -> dict[str, Any]:
  """nd_fits.json, ptq_penalty.csv (+ _by_d), probe_bits.csv, probe_fits.csv,
  act_bits_nll.csv: those the
  store allows. Returns {name: path}."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {}
  fits = nd_fits(cells)
  if fits:
    paths["nd_fits"] = out / "nd_fits.json"
    paths["nd_fits"].write_text(json.dumps(fits, indent=1))
  penalty = ptq_penalty(cells)
  tables = {
    "ptq_penalty": penalty,
    "ptq_penalty_by_d": penalty_table(penalty).reset_index(),
    "probe_bits": probe_table(cells).reset_index(),
    "probe_fits": probe_fits(cells),
  }
  acts = act_tables(cells, "nll")
  if acts:
    tables["act_bits_nll"] = pd.concat(acts, names=["model"]).reset_index()
  for name, table in tables.items():
    if len(table):
      paths[name] = out / f"{name}.csv"
      paths[name].write_text(table.to_csv(index=False))
  return paths


def summary(cells: pd.DataFrame) -> str:
  """The N-D fits and the PTQ penalty slopes, a few lines for the terminal."""
  lines = [
    f"  N-D fit {m}: {f['a']:.3g} N^{f['b']:.3f} D^{f['c']:.3f} (R^2 {f['r2']:.3f}, "
    f"{f['points']} cells)"
    for m, f in nd_fits(cells).items()
  ]
  fits = probe_fits(cells)
  for row in fits[fits["x"] == "ln N"].itertuples() if len(fits) else ():
    lines.append(
      f"  probe bits, D={row.tokens:.3g}, k{row.k}: {row.intercept:.2f} + "
      f"{row.slope:.2f} ln N ({row.sizes} sizes)"
    )
  table = penalty_table(ptq_penalty(cells))
  if len(table) and table.shape[1] > 2:
    by_k = table.groupby(level="k")["slope ln pen/ln D"].median()
    lines.append(
      "  PTQ penalty vs D, median slope of ln penalty / ln D per k: "
      + ", ".join(f"k{k} {v:.2f}" for k, v in by_k.items())
    )
  return "\n".join(lines)

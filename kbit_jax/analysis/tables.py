"""The tables of an Analysis: fitted parameters, extrapolation errors, bit-optimal k,
provenance; written as fits.json + CSVs, and a terminal summary.

    paths = tables.write_tables(analysis, out_dir)   # fits.json, params.csv, ...
    print(tables.summary(analysis))
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from etils import epath

from kbit_jax.analysis.analyse import Analysis
from kbit_jax.analysis.fitting import FitResult
from kbit_jax.analysis.labels import BASELINE_BITS, blocksize_label, blocksize_order, quant_methods


def _fit_rows(key: dict[str, Any], fit: FitResult) -> list[dict[str, Any]]:
  common = dict(
    key,
    form=fit.name,
    metric=fit.metric,
    cells=fit.n_cells,
    sizes=fit.n_sizes,
    boot_ok=fit.n_boot_ok,
    at_bound=",".join(fit.at_bound),
  )
  return [
    dict(
      common,
      param=p,
      value=v,
      lo=fit.ci.get(p, (np.nan, np.nan))[0],
      hi=fit.ci.get(p, (np.nan, np.nan))[1],
      not_identified=fit.unidentified.get(p, ""),
    )
    for p, v in fit.params.items()
  ]


def params_table(a: Analysis) -> pd.DataFrame:
  """Long format: one row per (fit, parameter) with its bootstrap interval [lo, hi]."""
  rows = []
  for (family, method, curve, _), fit in a.curve_fits.items():
    rows += _fit_rows(dict(family=family, method=method, curve=curve), fit)
  for (method, _), fit in a.joint_fits.items():
    rows += _fit_rows(dict(family="all", method=method, curve="all k"), fit)
  return pd.DataFrame(rows)


def extrapolation_table(a: Analysis) -> pd.DataFrame:
  """Leave-largest-size-out error of every fit (a note where it could not be made)."""
  rows = []
  items = [((f, m, c), fit) for (f, m, c, _), fit in a.curve_fits.items()]
  items += [(("all", m, "all k"), fit) for (m, _), fit in a.joint_fits.items()]
  for (family, method, curve), fit in items:
    e = fit.extrapolation or {}
    preset = ""
    if e:
      size_col = "n" if curve == "all k" else "params"
      match = a.cells.loc[a.cells[size_col] == e["heldout_size"], "preset"]
      preset = match.iloc[0] if len(match) else str(e["heldout_size"])
    rows.append(
      dict(
        family=family,
        method=method,
        curve=curve,
        form=fit.name,
        metric=fit.metric,
        heldout=preset,
        cells=e.get("cells", 0),
        mean_error=e.get("mean_error", np.nan),
        mean_abs_error=e.get("mean_abs_error", np.nan),
        ppl_rel_error=e.get("ppl_rel_error", np.nan),
        note=fit.extrapolation_note,
      )
    )
  return pd.DataFrame(rows)


def bit_optimal_table(a: Analysis) -> pd.DataFrame:
  frames = [t.assign(family=f, method=m) for (f, m, _), t in a.bit_optimal.items()]
  if not frames:
    return pd.DataFrame()
  out = pd.concat(frames, ignore_index=True)
  return out[
    [
      "family",
      "method",
      "metric",
      "budget_bits",
      "candidates",
      "best_interp",
      "share_interp",
      "best_fit",
      "share_fit",
    ]
  ]


def method_optimal_table(a: Analysis) -> pd.DataFrame:
  """a.method_optimal as one frame (family, base method, metric, budget, per method)."""
  frames = [t.assign(family=f, method=b) for (f, b, _), t in a.method_optimal.items()]
  if not frames:
    return pd.DataFrame()
  out = pd.concat(frames, ignore_index=True)
  first = ["family", "method", "metric", "budget_bits"]
  return out[first + [c for c in out.columns if c not in first]]


def provenance(a: Analysis) -> dict[str, Any]:
  """Where the numbers come from: store, commits, axes, training setup per preset."""
  c = a.cells
  quantized = c[c["k"] != BASELINE_BITS]
  presets = (
    c.sort_values("params")
    .groupby("preset", sort=False)
    .agg(
      params=("params", "first"),
      non_embedding=("n", "first"),
      tokens=("tokens", lambda s: sorted(set(s.dropna().astype(int)))),
      seeds=("seed", lambda s: sorted(set(s))),
      cells=("cell", "size"),
    )
  )
  for col in ("train_steps", "train_batch_size", "seq_len", "train_lr"):
    if col in c:
      presets[col] = c.groupby("preset")[col].agg(lambda s: sorted(set(s.dropna())))
  created = sorted(x for x in c["created"].astype(str) if x and x != "nan")
  return {
    "results_dir": c.attrs.get("results_dir", ""),
    "cells": int(len(c)),
    "commits": {str(k): int(v) for k, v in c["commit"].value_counts().items()},
    "created": [created[0], created[-1]] if created else [],
    "eval_id": sorted(set(c["eval_id"].astype(str))),
    "ppl_split": c.attrs.get("ppl_split", "?"),
    "tasks": c.attrs.get("tasks", []),
    "chance": float(c["chance"].mean()) if len(c) else 0.0,
    "bits": sorted(set(c["k"].astype(int))),
    "dtypes": sorted(set(quantized["dtype"].astype(str))),
    "blocksizes": [
      blocksize_label(b) for b in sorted(set(quantized["blocksize"].dropna()), key=blocksize_order)
    ],
    "outlier_shares": sorted(set(quantized["outlier_share"])),
    "targets": sorted(set(quantized["targets"].astype(str))),
    "families": a.families(),
    "methods": a.methods(),
    "quant_methods": quant_methods(c),
    "presets": presets.reset_index().to_dict(orient="records"),
    "n_boot": a.n_boot,
    "level": a.level,
  }


def _json_default(x: Any) -> Any:
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return None if not np.isfinite(x) else float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def qid_table(a: Analysis) -> pd.DataFrame:
  """The QiD laws' parameters (long format, as params_table) with their held-out error."""
  rows = []
  for (method, _), f in a.qid_fits.items():
    held = f.heldout or {}
    key = dict(
      family="all",
      method=method,
      curve="all k",
      heldout_abs_log_error=held.get("mean_abs_log_error", np.nan),
      dropped=f.dropped,
    )
    rows += _fit_rows(key, f.fit)
  return pd.DataFrame(rows)


def write_tables(a: Analysis, out_dir: str) -> dict[str, epath.Path]:
  """fits.json (everything), params.csv, extrapolation.csv, bit_optimal.csv; signal.csv,
  qid.csv and qid_rows.csv where not empty."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tables = {
    "params": params_table(a),
    "extrapolation": extrapolation_table(a),
    "bit_optimal": bit_optimal_table(a),
  }
  # written where the store allows them (several training budgets; stderrs)
  optional = {"signal": a.signal, "qid": qid_table(a), "qid_rows": a.qid_rows}
  tables.update({name: t for name, t in optional.items() if len(t)})
  if a.method_optimal:  # several quantization methods (grid.methods)
    tables["bit_optimal_methods"] = method_optimal_table(a)
  paths = {}
  for name, table in tables.items():
    paths[name] = out / f"{name}.csv"
    paths[name].write_text(table.to_csv(index=False))
  paths["fits"] = out / "fits.json"
  paths["fits"].write_text(
    json.dumps(
      {
        "provenance": provenance(a),
        "issues": a.issues,
        "skipped": a.skipped,
        **{name: t.replace({np.nan: None}).to_dict(orient="records") for name, t in tables.items()},
      },
      indent=1,
      default=_json_default,
    )
  )
  return paths


def _exponents(fit: FitResult, names: list[str]) -> str:
  """'alpha=0.31 [0.25, 0.37], gamma_N not identified by this grid ([-0.27, 0.2])'."""
  out = []
  for p in names:
    ci = fit.ci.get(p)
    interval = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""
    if fit.unidentified.get(p):
      out.append(f"{p} not identified by this grid ({fit.params[p]:.3g}{interval})")
    else:
      out.append(f"{p}={fit.params[p]:.3g}{interval}")
  return ", ".join(out)


def summary(a: Analysis) -> str:
  """A few lines for the terminal."""
  lines = [
    f"scaling: {len(a.cells)} cells, {len(a.curve_fits)} curve fits, "
    f"{len(a.joint_fits)} precision-law fits, {len(a.skipped)} skipped, "
    f"{len(a.issues)} data issue(s); {a.n_boot} bootstrap replicates, "
    f"{a.level:.0%} intervals"
  ]
  for (method, name), fit in list(a.joint_fits.items())[:4]:
    shown = [p for p in fit.params if p.startswith(("alpha", "gamma"))]
    lines.append(f"  {name} law, {method}: {_exponents(fit, shown)}")
  for (method, name), f in a.qid_fits.items():
    held = f.heldout
    err = f"; held-out largest D |ln error| {held['mean_abs_log_error']:.3g}" if held else ""
    lines.append(f"  QiD {name} law, {method}: {_exponents(f.fit, list(f.fit.params)[1:])}{err}")
  lines += [f"  {note}" for note in a.flat.values()]
  for (family, method, metric), t in list(a.bit_optimal.items())[:4]:
    best = t["best_interp"].dropna()
    if len(best):
      lines.append(
        f"  bit-optimal ({metric}, {family}, {method}) by interpolation: "
        + ", ".join(f"{k} {n}x" for k, n in best.value_counts().items())
      )
  return "\n".join(lines)

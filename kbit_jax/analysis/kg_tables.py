"""A knowledge-graph analysis (kg_analyse.KGAnalysis) as tables: one frame per kind of
result, the provenance, the files `kbit fit` and `kbit report` write, and the few lines
printed to the terminal.

    paths = kg_tables.write_tables(analysis, out_dir)   # signal/params/... .csv, fits.json
    print(kg_tables.summary(analysis))

Tables: signal.csv (per family x metric: range, noise tests, verdict), params.csv (per
curve fit and parameter: value, bootstrap interval, chi2 against the standard errors),
bit_optimal.csv (per family x method x metric x budget: the winning k, whether it is
resolved), extrapolation.csv (leave the largest dimension out), nd_fits.csv (where there
is one); fits.json holds them all with the provenance, data issues and skipped fits.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from etils import epath

from kbit_jax.analysis import kg_cells
from kbit_jax.analysis.kg_analyse import KGAnalysis
from kbit_jax.analysis.kg_cells import FIT_METRICS, Z


def params_table(a: KGAnalysis) -> pd.DataFrame:
  """One row per (curve fit, parameter) with its bootstrap interval and the fit's chi2."""
  rows = []
  for key, fit in a.curve_fits.items():
    family, method, curve, metric = key
    check = a.fit_checks.get(key, {})
    for p, v in fit.params.items():
      lo, hi = fit.ci.get(p, (np.nan, np.nan))
      rows.append(
        dict(
          family=family,
          method=method,
          curve=curve,
          metric=metric,
          form=fit.name,
          param=p,
          value=v,
          lo=lo,
          hi=hi,
          cells=fit.n_cells,
          sizes=fit.n_sizes,
          boot_ok=fit.n_boot_ok,
          at_bound=",".join(fit.at_bound),
          chi2=check.get("chi2", np.nan),
          dof=check.get("dof", np.nan),
          p=check.get("p", np.nan),
        )
      )
  return pd.DataFrame(rows)


def extrapolation_table(a: KGAnalysis) -> pd.DataFrame:
  """Leave-the-largest-dim-out error of every curve fit (metric points), or why not."""
  rows = []
  for (family, method, curve, metric), fit in a.curve_fits.items():
    e = fit.extrapolation or {}
    rows.append(
      dict(
        family=family,
        method=method,
        curve=curve,
        metric=metric,
        heldout_params=e.get("heldout_size", np.nan),
        cells=e.get("cells", 0),
        mean_error=e.get("mean_error", np.nan),
        mean_abs_error=e.get("mean_abs_error", np.nan),
        note=fit.extrapolation_note,
      )
    )
  return pd.DataFrame(rows)


def bit_optimal_table(a: KGAnalysis) -> pd.DataFrame:
  frames = [t.assign(family=f, method=m) for (f, m, _), t in a.bit_optimal.items()]
  if not frames:
    return pd.DataFrame()
  out = pd.concat(frames, ignore_index=True)
  first = ["family", "method", "metric", "budget_bits", "candidates", "best_interp"]
  return out[first + [c for c in out.columns if c not in first]]


def nd_table(a: KGAnalysis) -> pd.DataFrame:
  rows = [
    dict(model=model, **{k: v for k, v in f.items() if k not in ("n_values", "d_values")})
    for (model, _), f in a.nd_fits.items()
  ]
  return pd.DataFrame(rows)


def summary(a: KGAnalysis) -> str:
  """A few lines for the terminal."""
  lines = [
    f"kg scaling: {len(a.cells)} cells, {len(a.families())} families, "
    f"{len(a.curve_fits)} curve fits, {len(a.nd_fits)} N-D fits, {len(a.skipped)} skipped, "
    f"{len(a.issues)} data issue(s)"
  ]
  for row in a.signal.itertuples():
    if row.metric in FIT_METRICS:
      lines.append(
        f"  {row.family} {row.metric}: {row.low:.4f}..{row.high:.4f}, {row.verdict} "
        f"(p sizes {row.p_sizes:.2g}, p k {row.p_k:.2g})"
      )
  for (family, method, metric), t in a.bit_optimal.items():
    best = t["best_interp"].dropna()
    if len(best):
      resolved = int(t["resolved_interp"].fillna(False).astype(bool).sum())
      lines.append(
        f"  bit-optimal {metric}, {family}, {method}: "
        + ", ".join(f"{k} {n}x" for k, n in best.value_counts().items())
        + f" ({resolved}/{len(best)} budgets resolved beyond {Z:g} standard errors)"
      )
  for (model, metric), f in a.nd_fits.items():
    lines.append(
      f"  N-D {metric}, {model}: {f['a']:.3g} N^{f['b']:.3f}(±{f['b_stderr']:.3f}) "
      f"D^{f['c']:.3f}(±{f['c_stderr']:.3f}), R^2 {f['r2']:.3f}, chi2/dof "
      f"{f['chi2']:.1f}/{f['dof']}"
    )
  return "\n".join(lines)


def provenance(a: KGAnalysis) -> dict[str, Any]:
  c = a.cells
  created = sorted(x for x in c["created"].astype(str) if x and x != "nan")
  setup_cols = [
    col
    for col in ("train_steps", "train_lr", "train_batch_size", "train_negatives", "train_loss")
    if col in c
  ]
  models = (
    c[c["k"] == 16]
    .sort_values(["model", "triples", "dim"])[
      ["model", "dim", "triples", "seed", "params", "n"]
      + setup_cols
      + [col for col in ("train_s",) if col in c]
    ]
    .to_dict(orient="records")
  )
  return {
    "results_dir": c.attrs.get("results_dir", ""),
    "cells": int(len(c)),
    "commits": {str(k): int(v) for k, v in c["commit"].value_counts().items()},
    "created": [created[0], created[-1]] if created else [],
    "graph": sorted(set(c["graph"].astype(str))),
    "eval_id": sorted(set(c["eval_id"].astype(str))),
    "num_entities": sorted(set(c["num_entities"].dropna().astype(int))),
    "test_triples": sorted(set(c["num_triples"].dropna().astype(int))),
    "unleaked_triples": sorted(set(c["unleaked_triples"].dropna().astype(int))),
    "bits": sorted(set(c["k"].astype(int))),
    "methods": a.methods(),
    "targets": sorted(set(c.loc[c["k"] != 16, "targets"].astype(str))),
    "families": a.families(),
    "models": models,
    "n_boot": a.n_boot,
    "level": a.level,
    "z": Z,
  }


def _json_default(x: Any) -> Any:
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, float) and not np.isfinite(x):
    return None
  if isinstance(x, (np.ndarray, list, tuple)):
    return list(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return str(x)


def write_tables(a: KGAnalysis, out_dir: str) -> dict[str, epath.Path]:
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tables = {
    "signal": a.signal,
    "params": params_table(a),
    "bit_optimal": bit_optimal_table(a),
    "extrapolation": extrapolation_table(a),
    "nd_fits": nd_table(a),
  }
  paths = {}
  for name, table in tables.items():
    if len(table) or name != "nd_fits":
      paths[name] = out / f"{name}.csv"
      paths[name].write_text(table.to_csv(index=False))
  paths["fits"] = out / "fits.json"
  paths["fits"].write_text(
    json.dumps(
      {
        "task": kg_cells.TASK,
        "provenance": provenance(a),
        "issues": a.issues,
        "skipped": a.skipped,
        **{
          name: t.astype(object).where(t.notna(), None).to_dict(orient="records")
          for name, t in tables.items()
        },
      },
      indent=1,
      default=_json_default,
    )
  )
  return paths

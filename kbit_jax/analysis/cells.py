"""The results store as cells: the column adapter, the compatibility checks and the
training families (the labels and the main method: labels.py).

    store = cells.load_store(results_dir)            # results.load + the adapter
    checked, issues = cells.check_cells(store)       # the compatibility checks
    main = labels.main_method(checked)               # what the figures and tables show

Vocabulary. A *cell* is one evaluated (model, quantization). A *checkpoint* (bootstrap
unit) is one trained model: preset x seed x training tokens. A *method* is a quantization
recipe: data type (+ double quantization), block size B, outlier share p and the
quantization method (`quant_method`: rtn, gptq, awq; the label names it unless it is rtn,
so stores without the axis keep their labels, e.g. 'int B64' and 'int B64 gptq'); the 16-bit
cells form their own method "16-bit" and join every method's figures and bit-optimal
comparisons as the k = 16 curve. A *curve* is one method at one k (with the float
exponent bits in its label when a method holds several for one k). A *family* is a
training setup: with one token count per preset the whole store is one family; otherwise
families split by token count (if every preset has the same token counts) or by tokens
per parameter (2 significant digits).

What makes a store incompatible (cells that cannot share one analysis): different
evaluation settings (`eval_id`), different quantization targets among quantized cells,
or one preset with different parameter counts. The largest consistent group is kept and
the rest are named in a warning; so are cells with missing or non-finite metrics (left
out of that metric's fits).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from kbit_jax.analysis import results
from kbit_jax.analysis.labels import (
  BASELINE_BITS,
  BASELINE_METHOD,
  RTN,
  family_order,
  method_label,
  tokens_label,
)

METRICS = ("nll", "acc")  # nll = ln(perplexity), nats per token
# Chance accuracy of each zero-shot task (lambada is greedy generation: 0); the mean
# accuracy's floor `lo` is the mean over the tasks a cell was scored on.
CHANCE = {"lambada": 0.0, "hellaswag": 0.25, "piqa": 0.5, "winogrande": 0.5}

# ----------------------------------------------------------------------------- adapter
# The one place that knows the results store's column names (results.load): store
# column -> the name used by the fits, plots and report. Metric columns are looked up
# with and without the record's "metrics/" group prefix.
STORE_COLUMNS = {
  "preset": "preset",
  "seed": "seed",
  "train_tokens": "tokens",
  "bits": "k",
  "dtype": "dtype",
  "exponent_bits": "exponent_bits",
  "blocksize": "blocksize",
  "outlier_share": "outlier_share",
  "targets": "targets",
  "double_quant": "double_quant",
  "eval_id": "eval_id",
  "params": "params",
  "non_embedding_params": "n",
  "total_bits": "total_bits",
  "bits_per_param": "bits_per_param",
  "git_commit": "commit",
  "name": "cell",
  "created": "created",
  "train_steps": "train_steps",
  "train_batch_size": "train_batch_size",
  "seq_len": "seq_len",
  "train_lr": "train_lr",
  "act_bits": "act_bits",
  "run": "run",
  "step": "step",
  "run_tokens": "run_tokens",
  "schedule": "schedule",
  "method": "quant_method",  # key field of calibrated cells only (grid.methods)
  "calib_id": "calib_id",
}
REQUIRED = ("preset", "bits", "params", "total_bits")
DEFAULTS = {
  "seed": 0,
  "tokens": np.nan,
  "dtype": "none",
  "exponent_bits": 0,
  "blocksize": np.nan,
  "outlier_share": 0.0,
  "targets": "",
  "double_quant": False,
  "eval_id": "",
  "commit": "unknown",
  "created": "",
  "act_bits": BASELINE_BITS,
  "run_tokens": np.nan,
  "schedule": "cosine",
  "quant_method": "rtn",
  "calib_id": "",
}
METRIC_PREFIXES = ("metrics/", "")
PPL_SPLITS = ("validation", "text_file", "test")  # preferred perplexity, in order
PROBE_METRICS = ("bits", "bits_unclipped", "acc", "macro_f1", "max_k")


class ScalingWarning(UserWarning):
  """Data left out of the analysis (the message names the cells and why)."""


def _column(df: pd.DataFrame, path: str) -> str | None:
  for prefix in METRIC_PREFIXES:
    if prefix + path in df.columns:
      return prefix + path
  return None


def _ppl_split(df: pd.DataFrame) -> str | None:
  splits = [s for s in PPL_SPLITS if _column(df, f"ppl/{s}/perplexity")]
  if splits:
    return splits[0]
  others = sorted(
    c.split("/")[-2] for c in df.columns if c.endswith("/perplexity") and "/ppl/" in "/" + c
  )
  return others[0] if others else None


def _task_names(df: pd.DataFrame) -> list[str]:
  names = set()
  for col in df.columns:
    parts = col.split("/")
    parts = parts[1:] if parts[0] == "metrics" else parts
    if len(parts) == 2 and parts[1] == "acc" and parts[0] not in ("mean", "ppl"):
      names.add(parts[0])
  return sorted(names)


def cells_from_store(df: pd.DataFrame) -> pd.DataFrame:
  """The column adapter: a `results.load` DataFrame -> the cells frame used here.

  Columns: STORE_COLUMNS' values, `nll` (ln perplexity of the preferred split), `ppl`,
  `acc` / `acc_stderr` (mean zero-shot), `acc/<task>`, `acc_norm/<task>`, `chance`."""
  missing = [c for c in REQUIRED if c not in df.columns]
  if missing:
    raise ValueError(
      f"the results have no column(s) {missing}; a results.load() frame "
      f"needs {list(REQUIRED)} (it has {sorted(df.columns)[:20]}...)"
    )
  out = pd.DataFrame(
    {ours: df[theirs] for theirs, ours in STORE_COLUMNS.items() if theirs in df.columns}
  )
  for name, value in DEFAULTS.items():
    if name not in out:
      out[name] = value
  split = _ppl_split(df)
  nll_col = _column(df, f"ppl/{split}/nll") if split else None
  ppl_col = _column(df, f"ppl/{split}/perplexity") if split else None
  out["nll"] = (
    pd.to_numeric(df[nll_col], errors="coerce")
    if nll_col
    else np.log(pd.to_numeric(df[ppl_col], errors="coerce"))
    if ppl_col
    else np.nan
  )
  out["ppl"] = np.exp(out["nll"])
  out.attrs["ppl_split"] = split or "none"
  _item_columns(df, out, split)
  for ours, path in (("acc", "mean/acc"), ("acc_stderr", "mean/acc_stderr")):
    col = _column(df, path)
    out[ours] = pd.to_numeric(df[col], errors="coerce") if col else np.nan
  tasks = _task_names(df)
  for task in tasks:
    for metric in ("acc", "acc_norm"):
      col = _column(df, f"{task}/{metric}")
      if col:
        out[f"{metric}/{task}"] = pd.to_numeric(df[col], errors="coerce")
  out["chance"] = float(np.mean([CHANCE.get(t, 0.0) for t in tasks])) if tasks else 0.0
  out.attrs["tasks"] = tasks
  for col in df.columns:  # k-bit probes (probes.py): probe/k<k>/<metric>, probe/summary/*
    parts = col.removeprefix("metrics/").split("/")
    if parts[0] == "probe" and len(parts) == 3 and parts[2] in PROBE_METRICS:
      out[f"probe_{parts[2]}/{parts[1]}"] = pd.to_numeric(df[col], errors="coerce")
  return _normalise(out)


def _item_columns(df: pd.DataFrame, out: pd.DataFrame, split: str | None) -> None:
  """Per-item scores (noise.py): `items/<task>` as they are; the preferred split's
  per-row losses as `rows_nll` / `rows_tokens`, and from them `nll_stderr`."""
  for col in df.columns:
    if col.startswith("items/") and not col.startswith("items/ppl/"):
      out[col] = df[col]
  sums, tokens = f"items/ppl/{split}/nll_sum", f"items/ppl/{split}/tokens"
  if split and sums in df and tokens in df:
    out["rows_nll"], out["rows_tokens"] = df[sums], df[tokens]
    out["nll_stderr"] = [
      nll_stderr(s, t) if isinstance(s, list) and isinstance(t, list) else np.nan
      for s, t in zip(df[sums], df[tokens])
    ]
  else:
    out["nll_stderr"] = np.nan


def nll_stderr(row_sums: Any, row_tokens: Any) -> float:
  """Standard error of the token-mean nll from its rows (the ratio estimator's
  linearisation: rows, not tokens, are the independent draws)."""
  sums, tokens = np.asarray(row_sums, float), np.asarray(row_tokens, float)
  if len(sums) < 2:
    return float("nan")
  mean = sums.sum() / tokens.sum()
  resid = sums - mean * tokens
  r = len(sums)
  return float(np.sqrt(r / (r - 1) * np.sum(resid**2)) / tokens.sum())


def _normalise(cells: pd.DataFrame) -> pd.DataFrame:
  cells = cells.copy()
  cells["k"] = cells["k"].astype(int)
  cells["act_bits"] = cells["act_bits"].fillna(BASELINE_BITS).astype(int)
  cells["seed"] = cells["seed"].fillna(0).astype(int)
  cells["outlier_share"] = cells["outlier_share"].fillna(0.0).astype(float)
  cells["exponent_bits"] = cells["exponent_bits"].fillna(0).astype(int)
  cells["quant_method"] = cells["quant_method"].fillna(RTN).astype(str)
  cells["calib_id"] = cells["calib_id"].fillna("").astype(str)
  for col in ("params", "total_bits", "n", "tokens", "bits_per_param", "run_tokens"):
    if col in cells:
      cells[col] = pd.to_numeric(cells[col], errors="coerce")
  if "n" not in cells:
    cells["n"] = cells["params"]
  base = cells["k"] == BASELINE_BITS
  cells["method"] = [
    BASELINE_METHOD if b else method_label(d, bs, p, dq, qm)
    for b, d, bs, p, dq, qm in zip(
      base,
      cells["dtype"],
      cells["blocksize"],
      cells["outlier_share"],
      cells["double_quant"],
      cells["quant_method"],
    )
  ]
  if "cell" not in cells:
    cells["cell"] = [
      f"{p}-seed{s} k{k} {m}"
      for p, s, k, m in zip(cells["preset"], cells["seed"], cells["k"], cells["method"])
    ]
  cells["cell"] = cells["cell"].fillna("?")
  tokens = cells["tokens"].fillna(-1).astype(np.int64)
  cells["unit"] = [f"{p}-seed{s}-D{t}" for p, s, t in zip(cells["preset"], cells["seed"], tokens)]
  # A checkpoint along a longer run (grid.checkpoints) is not the finished run at its D.
  along = cells["run_tokens"].notna() & (cells["run_tokens"] != cells["tokens"])
  cells.loc[along, "unit"] += "-of" + cells.loc[along, "run_tokens"].astype(np.int64).astype(str)
  # The training run (bootstrap unit of laws along training): records name it (grid),
  # else every model is its own run.
  run = cells["run"] if "run" in cells else pd.Series(np.nan, index=cells.index)
  cells["run"] = run.where(run.notna(), cells["unit"]).astype(str)
  exps = cells.groupby(["method", "k"])["exponent_bits"].transform("nunique")
  cells["curve"] = [
    f"k{k}" + (f" e{e}" if n > 1 else "")
    for k, e, n in zip(cells["k"], cells["exponent_bits"], exps)
  ]
  return cells.reset_index(drop=True)


# ----------------------------------------------------------------------------- checks


def _warn(issues: list[str], message: str) -> None:
  warnings.warn(message, ScalingWarning, stacklevel=3)
  issues.append(message)


def _name_cells(cells: pd.DataFrame, limit: int = 8) -> str:
  names = list(cells["cell"])
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def keep_largest(
  cells: pd.DataFrame, column: str, what: str, issues: list[str], mask: pd.Series | None = None
) -> pd.DataFrame:
  """Keeps the most common value of `column` (among `mask` rows); warns naming the rest."""
  scope = cells if mask is None else cells[mask]
  counts = scope[column].astype(str).value_counts()
  if len(counts) <= 1:
    return cells
  keep = counts.index[0]
  drop = scope[scope[column].astype(str) != keep]
  _warn(
    issues,
    f"incompatible grids: cells differ in {what} ("
    + ", ".join(f"{v!r}: {n} cells" for v, n in counts.items())
    + f"); analysing the {counts.iloc[0]} cells with {column}={keep!r} and leaving out "
    f"{len(drop)}: {_name_cells(drop)}",
  )
  return cells.drop(index=drop.index)


def check_cells(
  cells: pd.DataFrame, issues: list[str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
  """Drops what cannot be analysed (warning for each) and assigns training families."""
  issues = [] if issues is None else issues
  attrs = dict(cells.attrs)
  act = cells[cells["act_bits"] != BASELINE_BITS]
  if len(act):
    issues.append(
      f"{len(act)} cell(s) with activation bits < 16 are left out of the fits "
      "(weights-only, as in the study) and shown in the weight x activation "
      "bits tables (extra_axes.py)"
    )
    cells = cells.drop(index=act.index)
  bad_bits = cells[~(cells["total_bits"] > 0)]
  if len(bad_bits):
    _warn(
      issues,
      f"{len(bad_bits)} cell(s) without a positive total_bits left out: {_name_cells(bad_bits)}",
    )
    cells = cells.drop(index=bad_bits.index)
  cells = keep_largest(cells, "eval_id", "evaluation settings (eval_id)", issues)
  cells = keep_largest(
    cells, "targets", "quantization targets", issues, mask=cells["k"] != BASELINE_BITS
  )
  counts = cells.groupby("preset")["params"].nunique()
  for preset in counts[counts > 1].index:
    cells = keep_largest(
      cells,
      "params",
      f"the parameter count of preset {preset}",
      issues,
      mask=cells["preset"] == preset,
    )
  for metric in METRICS:
    bad = cells[~np.isfinite(cells[metric].to_numpy(float))]
    if 0 < len(bad) < len(cells):
      _warn(
        issues,
        f"{len(bad)} cell(s) with a missing or non-finite {metric} left out of "
        f"the {metric} fits: {_name_cells(bad)}",
      )
    elif len(bad) == len(cells) and len(cells):
      _warn(issues, f"no cell has a finite {metric}: no {metric} fits or figures")
  cells = cells.copy()
  cells["family"] = assign_families(cells, issues)
  checked = cells.reset_index(drop=True)
  checked.attrs = attrs  # the store's, whatever pandas carries through the steps above
  return checked, issues


def assign_families(cells: pd.DataFrame, issues: list[str]) -> pd.Series:
  """Training-setup label per cell (see the module docstring)."""
  if cells.empty:
    return pd.Series([], dtype=object)
  per_preset = cells.groupby("preset")["tokens"].apply(lambda s: tuple(sorted(set(s.fillna(-1)))))
  if per_preset.map(len).max() == 1:
    distinct = cells["tokens"].dropna().unique()
    label = tokens_label(distinct[0]) if len(distinct) == 1 else "one run per size"
    return pd.Series(label, index=cells.index)
  if per_preset.nunique() == 1:
    labels = cells["tokens"].map(tokens_label)
  else:
    ratio = cells["tokens"] / cells["params"]
    labels = ratio.map(lambda r: f"D/N={float(f'{r:.2g}'):g}" if np.isfinite(r) else "D=?")
  note = "; ".join(
    f"{p}: {', '.join(tokens_label(t) for t in ts)}" for p, ts in per_preset.items() if len(ts) > 1
  )
  issues.append(
    f"training tokens differ within presets ({note}): fitting each training "
    f"family separately ({', '.join(sorted(labels.unique(), key=family_order))}); the precision "
    "laws pool them with one E per family"
  )
  return labels


def load_store(results_dir: str) -> pd.DataFrame:
  """Every record of `results_dir` through the adapter, unchecked; its attrs name the
  store (results_dir, ppl_split, tasks). A store without records is a ValueError."""
  df = results.load(results_dir)
  if df.empty:
    raise ValueError(f"results directory {results_dir} holds no records")
  cells = cells_from_store(df)
  cells.attrs["results_dir"] = str(results_dir)
  return cells


def load_cells(results_dir: str) -> tuple[pd.DataFrame, list[str]]:
  """load_store(results_dir) through the checks."""
  return check_cells(load_store(results_dir))

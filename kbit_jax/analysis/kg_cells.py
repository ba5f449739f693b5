"""Knowledge-graph records of the results store as cells: which stores hold them, the
column adapter, the compatibility checks, and the noise test every KG fit is gated on.

    kind = kg_cells.store_kind(records)           # "kg" or "lm"; a mixed store raises
    cells, issues = kg_cells.check_cells(kg_cells.cells_from_store(results.frame(records)))

A KG record (kbit_jax/kg/experiment.py, written by `kbit kg`) has key `task` = TASK; a
language-model record has no `task`. The two are never analysed together: their metrics
(MRR against nll / accuracy), sizes (table parameters against non-embedding parameters)
and data axes (training triples against tokens) do not share one fit, so `store_kind`
refuses a store holding both and names how many of each it found.

Vocabulary, as in cells.py: a *cell* is one evaluated (trained model, quantization); a
*unit* (bootstrap unit) one trained model, model x dim x training triples x seed; a
*method* a quantization recipe (data type, block size; "16-bit" for the float tables);
a *curve* one method at one k. A *family* is one (model, training triples): its curves
run over the embedding dimensions, the size axis, as an LM family's run over presets.

Columns of the cells frame: model, dim, triples (D, the training triples), seed, k,
dtype, exponent_bits, blocksize, double_quant, targets, graph, eval_id, train_steps,
params (every table parameter: what a point's size is), n (N = dim x entities, the entity
table), total_bits, bits_per_param, unit, family, method, curve, cell (the record's
name), and per metric of METRICS its value, `<metric>_stderr` and `chance/<metric>`
(its value under uniformly random ranks over the E entities: MRR H_E / E, Hits@10 10 / E);
num_triples and unleaked_triples (the test triples each metric averages over).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from kbit_jax.analysis.cells import ScalingWarning, keep_largest
from kbit_jax.analysis.labels import BASELINE_BITS, BASELINE_METHOD, method_label

TASK = "kg_link_prediction"  # key `task` of every KG record (kg/experiment.py imports it)
# Metrics read from a record's `metrics` group; "unleaked/": the test triples whose
# reversed twin is not a training triple (WN18RR-style symmetric leakage left out).
METRICS = ("mrr", "hits@10", "unleaked/mrr", "unleaked/hits@10")
FIT_METRICS = ("mrr", "unleaked/mrr")  # fitted and ranked; Hits@10 is shown, not fitted
METRIC_LABEL = {
  "mrr": "MRR (filtered, all test triples)",
  "hits@10": "Hits@10 (filtered, all test triples)",
  "unleaked/mrr": "MRR, unleaked test triples",
  "unleaked/hits@10": "Hits@10, unleaked test triples",
}
# Noise tests. A set of measurements *moves* when a chi-square test rejects "all equal
# within their standard errors" (chi2 = sum ((y - weighted mean) / se)^2, dof = n - 1) at
# level ALPHA, Bonferroni-corrected over the sets tested together (the curves of a
# family, its trained models, ...): flat metrics are not fitted, whatever the number of
# sets. A bit-optimal winner is *resolved* at a budget when it beats every other k there
# by more than Z standard errors of the difference (the two errors in quadrature). Cells
# of one trained model share their test triples (positively correlated), so both tests
# overstate the error of a paired difference: they err towards calling a real effect
# noise, never the reverse.
ALPHA = 0.01
Z = 2.0
REQUIRED = ("task", "model", "dim", "train_triples", "bits", "params", "total_bits", "mrr")
KEY_COLUMNS = {
  "model": "model",
  "dim": "dim",
  "train_triples": "triples",
  "seed": "seed",
  "bits": "k",
  "dtype": "dtype",
  "exponent_bits": "exponent_bits",
  "blocksize": "blocksize",
  "double_quant": "double_quant",
  "targets": "targets",
  "graph": "graph",
  "eval_id": "eval_id",
  "train_steps": "train_steps",
  "norm": "norm",
  "gamma": "gamma",
  "params": "params",
  "entity_params": "n",
  "num_entities": "num_entities",
  "total_bits": "total_bits",
  "bits_per_param": "bits_per_param",
  "train_lr": "train_lr",
  "train_batch_size": "train_batch_size",
  "train_negatives": "train_negatives",
  "train_loss": "train_loss",
  "name": "cell",
  "git_commit": "commit",
  "created": "created",
  "time/train_s": "train_s",
  "time/eval_s": "eval_s",
}
DEFAULTS = {
  "seed": 0,
  "dtype": "none",
  "exponent_bits": 0,
  "blocksize": np.nan,
  "double_quant": False,
  "targets": "",
  "graph": "",
  "eval_id": "",
  "train_steps": np.nan,
  "commit": "unknown",
  "created": "",
}


def _warn(issues: list[str], message: str) -> None:
  warnings.warn(message, ScalingWarning, stacklevel=3)
  issues.append(message)


def is_kg_record(record: dict[str, Any]) -> bool:
  return isinstance(record.get("key"), dict) and record["key"].get("task") == TASK


def store_kind(records: Sequence[dict[str, Any]]) -> str:
  """ "kg" when every record is a knowledge-graph cell, "lm" when none is (an empty store
  too); a store holding both raises ValueError naming the counts and one cell of each."""
  kg = [r for r in records if is_kg_record(r)]
  if not kg:
    return "lm"
  if len(kg) == len(records):
    return "kg"
  lm = [r for r in records if not is_kg_record(r)]
  raise ValueError(
    f"the store mixes {len(kg)} knowledge-graph cells (key task={TASK!r}, e.g. "
    f"{kg[0].get('name', kg[0].get('id'))!r}) and {len(lm)} language-model cells (e.g. "
    f"{lm[0].get('name', lm[0].get('id'))!r}); their metrics (MRR vs perplexity / accuracy), "
    "sizes (table vs non-embedding parameters) and data axes (triples vs tokens) share no "
    "fit: write them to separate results directories (--workdir) and analyse each"
  )


def chance(metric: str, num_entities: np.ndarray) -> np.ndarray:
  """The metric under uniformly random ranks over E entities: MRR = H_E / E (the mean of
  1/rank, rank uniform on 1..E), Hits@k = min(k, E) / E."""
  e = np.asarray(num_entities, float)
  if metric.rsplit("/", 1)[-1] == "mrr":
    harmonic = np.array([np.sum(1.0 / np.arange(1, int(x) + 1)) if x > 0 else np.nan for x in e])
    return harmonic / e
  k = int(metric.rsplit("@", 1)[1])
  return np.minimum(k, e) / e


def cells_from_store(df: pd.DataFrame) -> pd.DataFrame:
  """The column adapter: a `results.frame` of KG records -> the cells frame (above)."""
  missing = [c for c in REQUIRED if c not in df.columns]
  if missing:
    raise ValueError(
      f"the knowledge-graph records have no column(s) {missing}; a KG record "
      f"(kbit_jax/kg/experiment.py) needs {list(REQUIRED)}"
    )
  not_kg = df[df["task"] != TASK]
  if len(not_kg):
    raise ValueError(f"{len(not_kg)} record(s) are not task={TASK!r}: {list(not_kg['id'])[:4]}")
  out = pd.DataFrame({ours: df[theirs] for theirs, ours in KEY_COLUMNS.items() if theirs in df})
  for name, value in DEFAULTS.items():
    if name not in out:
      out[name] = value
  if "n" not in out:
    out["n"] = out["params"]
  if "num_entities" not in out:
    out["num_entities"] = np.nan
  for metric in METRICS:
    for suffix in ("", "_stderr"):
      col = metric + suffix
      out[col] = pd.to_numeric(df[col], errors="coerce") if col in df else np.nan
    out[f"chance/{metric}"] = chance(metric, out["num_entities"].to_numpy(float))
  out["num_triples"] = df["num_triples"] if "num_triples" in df else np.nan
  out["unleaked_triples"] = df["unleaked/num_triples"] if "unleaked/num_triples" in df else np.nan
  return _normalise(out)


def family_label(model: str, triples: int) -> str:
  return f"{model}, {int(triples):,} triples"


def _normalise(cells: pd.DataFrame) -> pd.DataFrame:
  cells = cells.copy()
  for col in ("k", "dim", "triples", "seed", "exponent_bits"):
    cells[col] = cells[col].fillna(0).astype(int)
  for col in ("params", "n", "total_bits", "bits_per_param"):
    cells[col] = pd.to_numeric(cells[col], errors="coerce")
  cells["outlier_share"] = 0.0  # for labels.main_method (KG tables have no outliers)
  cells["act_bits"] = BASELINE_BITS
  base = cells["k"] == BASELINE_BITS
  cells["method"] = [
    BASELINE_METHOD if b else method_label(d, bs, 0.0, dq)
    for b, d, bs, dq in zip(base, cells["dtype"], cells["blocksize"], cells["double_quant"])
  ]
  cells["preset"] = [f"{m}-d{d}" for m, d in zip(cells["model"], cells["dim"])]
  cells["unit"] = [
    f"{m}-d{d}-T{t}-seed{s}"
    for m, d, t, s in zip(cells["model"], cells["dim"], cells["triples"], cells["seed"])
  ]
  cells["family"] = [family_label(m, t) for m, t in zip(cells["model"], cells["triples"])]
  exps = cells.groupby(["method", "k"])["exponent_bits"].transform("nunique")
  cells["curve"] = [
    f"k{k}" + (f" e{e}" if n > 1 else "")
    for k, e, n in zip(cells["k"], cells["exponent_bits"], exps)
  ]
  if "cell" not in cells:
    cells["cell"] = [f"{u} k{k} {m}" for u, k, m in zip(cells["unit"], cells["k"], cells["method"])]
  cells["cell"] = cells["cell"].fillna("?")
  return cells.reset_index(drop=True)


def _setup(cells: pd.DataFrame) -> pd.Series:
  """What a trained model's quality depends on besides (dim, triples, seed)."""
  cols = [
    c
    for c in ("train_steps", "train_lr", "train_batch_size", "train_negatives", "norm", "gamma")
    if c in cells
  ]
  rows = zip(*(cells[c].tolist() for c in cols)) if cols else ([] for _ in cells.index)
  return pd.Series([" ".join(map(str, r)) for r in rows], index=cells.index, dtype=object)


def check_cells(
  cells: pd.DataFrame, issues: list[str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
  """Drops what cannot share one analysis, warning for each (cells.ScalingWarning): cells
  of another graph or evaluation (eval_id), quantized cells of other tables, and per
  model the cells of another training setup (steps, lr, batch, negatives, norm/gamma);
  cells without a positive total_bits; cells without a finite metric are kept but named
  (left out of that metric's fits)."""
  issues = [] if issues is None else issues
  attrs = dict(cells.attrs)
  bad_bits = cells[~(cells["total_bits"] > 0)]
  if len(bad_bits):
    _warn(
      issues,
      f"{len(bad_bits)} cell(s) without a positive total_bits left out: "
      + ", ".join(bad_bits["cell"].astype(str)[:8]),
    )
    cells = cells.drop(index=bad_bits.index)
  cells = keep_largest(cells, "graph", "graph", issues)
  cells = keep_largest(cells, "eval_id", "evaluation settings (eval_id)", issues)
  cells = keep_largest(
    cells, "targets", "quantized tables", issues, mask=cells["k"] != BASELINE_BITS
  )
  cells = cells.assign(setup=_setup(cells))
  for model in sorted(set(cells["model"])):
    cells = keep_largest(
      cells,
      "setup",
      f"the training setup of {model} (steps lr batch negatives norm gamma)",
      issues,
      mask=cells["model"] == model,
    )
  for metric in METRICS:
    bad = cells[~np.isfinite(cells[metric].to_numpy(float))]
    if 0 < len(bad) < len(cells):
      _warn(
        issues,
        f"{len(bad)} cell(s) without a finite {metric} left out of its fits and figures: "
        + ", ".join(bad["cell"].astype(str)[:8]),
      )
  checked = cells.drop(columns="setup").reset_index(drop=True)
  checked.attrs = attrs
  return checked, issues


# ----------------------------------------------------------------------------- noise


def size_means(cells: pd.DataFrame, metric: str) -> pd.DataFrame:
  """Per point size (params): total bits, the metric and its standard error, each the
  mean over the cells of that size (seeds), the error that of the mean (sqrt(sum se^2)/n);
  sorted by total bits; cells without a finite metric left out."""
  c = cells[np.isfinite(cells[metric].to_numpy(float))]
  se = c[f"{metric}_stderr"].to_numpy(float)
  frame = pd.DataFrame(
    {
      "params": c["params"].to_numpy(),
      "total_bits": c["total_bits"].to_numpy(float),
      "value": c[metric].to_numpy(float),
      "var": np.where(np.isfinite(se), se, 0.0) ** 2,
    }
  )
  g = frame.groupby("params")
  out = pd.DataFrame(
    {
      "total_bits": g["total_bits"].mean(),
      "value": g["value"].mean(),
      "stderr": np.sqrt(g["var"].sum()) / g["var"].size(),
    }
  )
  return out.sort_values("total_bits").reset_index()


def homogeneity_p(values: Sequence[float], stderrs: Sequence[float]) -> float:
  """p of the chi-square test that `values` are one quantity measured with `stderrs`
  (NaN for fewer than two usable measurements; errors floored at 1e-12)."""
  y, se = np.asarray(values, float), np.asarray(stderrs, float)
  ok = np.isfinite(y) & np.isfinite(se)
  y, se = y[ok], np.maximum(se[ok], 1e-12)
  if len(y) < 2:
    return float("nan")
  w = 1.0 / se**2
  mean = float(np.sum(w * y) / np.sum(w))
  chi2 = float(np.sum(((y - mean) / se) ** 2))
  return float(stats.chi2.sf(chi2, len(y) - 1))


def moves(p: float, tests: int = 1, alpha: float = ALPHA) -> bool:
  """Whether a homogeneity p, Bonferroni-corrected over `tests`, rejects at `alpha`."""
  return bool(np.isfinite(p) and p * max(tests, 1) < alpha)

"""Every fit a set of cells allows: per-curve fits, bit-optimal k, precision laws.

    analysis = analyse.analyse(cells, issues, n_boot=200)   # cells from cells.load_cells

Per family x curve: `power` (nll) and `sigmoid` (mean zero-shot accuracy) fits against
total model bits (forms, fitting); per family x method: the bit-optimal k per budget
(bitoptimal); per method, jointly over k and families: the precision-aware `neff` and
`ptq` laws; per method, along training (>= 2 training budgets): the two QiD laws (qid.py);
with several quantization methods (rtn, gptq, awq), their bit-optimal k on common budgets
and bootstrap draws (`method_optimal`). Every fit reports its leave-largest-size-out
extrapolation error; fits the data cannot identify are listed in `Analysis.skipped` with
the reason. A metric without signal in a family (noise.py: its spread across k within
its noise at most sizes) is neither fitted nor ranked there;
`Analysis.flat` holds the one-line note.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

from kbit_jax.analysis import bitoptimal, fitting, forms, noise, qid
from kbit_jax.analysis.cells import METRICS
from kbit_jax.analysis.fitting import FitError, FitResult
from kbit_jax.analysis.labels import (
  BASELINE_BITS,
  BASELINE_METHOD,
  RTN,
  base_label,
  by_count,
  curve_k,
  family_order,
  quant_methods,
)


@dataclasses.dataclass
class Analysis:
  cells: pd.DataFrame
  issues: list[str]
  curve_fits: dict[tuple[str, str, str, str], FitResult]  # (family, method, curve, metric)
  bit_optimal: dict[tuple[str, str, str], pd.DataFrame]  # (family, method, metric)
  joint_fits: dict[tuple[str, str], FitResult]  # (method, form)
  skipped: list[str]  # fits not made, and why
  level: float
  n_boot: int
  signal: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # noise.signal_table
  flat: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)  # (family, metric)
  qid_rows: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)  # qid.qid_rows
  qid_fits: dict[tuple[str, str], qid.QidFit] = dataclasses.field(default_factory=dict)
  # (family, method label without its quantization method, metric) -> the best k per
  # budget under each quantization method (bitoptimal.compare_methods); only with >= 2.
  method_optimal: dict[tuple[str, str, str], pd.DataFrame] = dataclasses.field(default_factory=dict)

  def curves(self, family: str, method: str) -> dict[str, pd.DataFrame]:
    """label -> cells of that curve, the 16-bit baseline included, sorted by k."""
    fam = self.cells[self.cells["family"] == family]
    rows = fam[(fam["method"] == method) | (fam["k"] == BASELINE_BITS)]
    groups = dict(tuple(rows.groupby("curve")))
    return {c: groups[c] for c in sorted(groups, key=lambda c: (curve_k(c), c))}

  def methods(self) -> list[str]:
    """Quantization methods by number of cells (most first, then by name)."""
    return by_count(self.cells.loc[self.cells["k"] != BASELINE_BITS, "method"])

  def families(self) -> list[str]:
    """Training families by number of cells (most first), then by budget (smallest D
    first: 'D=328k' before 'D=1.31M')."""
    counts = self.cells["family"].value_counts()
    return sorted(counts.index, key=lambda f: (-counts[f], family_order(f)))

  def main_family(self) -> str:
    """The family the figures and the main tables show: the one with the most cells, of
    several such the largest budget (along one run, its end: a finished model)."""
    counts = self.cells["family"].value_counts()
    return max(counts.index, key=lambda f: (counts[f], family_order(f)))

  def curve_fit(self, family: str, method: str, curve: str, metric: str) -> FitResult | None:
    m = BASELINE_METHOD if curve_k(curve) == BASELINE_BITS else method
    return self.curve_fits.get((family, m, curve, metric))


def _finite(cells: pd.DataFrame, metric: str) -> pd.DataFrame:
  return cells[np.isfinite(cells[metric].to_numpy(float))]


def _curve_fit(cells: pd.DataFrame, metric: str, what: str, draws, level: float) -> FitResult:
  c = _finite(cells, metric)
  data = forms.curve_data(
    np.log(c["total_bits"].to_numpy(float)),
    c[metric].to_numpy(),
    c["params"].to_numpy(),
    c["unit"].to_numpy(),
    lo=float(c["chance"].mean()) if len(c) else 0.0,
  )
  return fitting.fit_form(forms.CURVE_FORMS[metric], data, what, draws, level)


def _compare_quant_methods(a: Analysis, n_boot: int, seed: int, num_budgets: int) -> None:
  """a.method_optimal: per family and base method (data type, block size, outliers) held
  by >= 2 quantization methods, their bit-optimal k on common budgets and draws."""
  if len(quant_methods(a.cells)) < 2:
    return
  for family in a.families():
    fam = a.cells[a.cells["family"] == family]
    draws = fitting.bootstrap_draws(fam["unit"].to_numpy(), n_boot, seed)
    by_base: dict[str, dict[str, str]] = {}
    for method in a.methods():
      rows = fam[fam["method"] == method]
      if len(rows):
        by_base.setdefault(base_label(fam, method), {})[rows["quant_method"].iloc[0]] = method
    for base, labels in by_base.items():
      if len(labels) < 2:
        continue
      order = sorted(labels, key=lambda m: (m != RTN, m))
      for metric in METRICS:
        if (family, metric) in a.flat:  # no signal: not ranked (noise.flat_metrics)
          continue
        curves = {
          qm: {
            c: cells
            for c, cells in a.curves(family, labels[qm]).items()
            if len(_finite(cells, metric))
          }
          for qm in order
        }
        curves = {qm: {c: _finite(v, metric) for c, v in cs.items()} for qm, cs in curves.items()}
        if any(len(cs) < 2 for cs in curves.values()):
          a.skipped.append(
            f"bit-optimal k per method, {metric}, {family}, {base}: a method with "
            "fewer than 2 bit widths with data"
          )
          continue
        everything = pd.concat([c for cs in curves.values() for c in cs.values()])
        budgets = bitoptimal.budgets_for(everything, num_budgets)
        a.method_optimal[(family, base, metric)] = bitoptimal.compare_methods(
          curves, metric, budgets, draws
        )


def analyse(
  cells: pd.DataFrame,
  issues: Sequence[str] = (),
  n_boot: int = 200,
  level: float = 0.95,
  seed: int = 0,
  num_budgets: int = 12,
) -> Analysis:
  """Every fit the cells allow; fits they do not allow are listed in `skipped`."""
  a = Analysis(cells, list(issues), {}, {}, {}, [], level, n_boot)
  a.signal = noise.signal_table(cells)
  a.flat = noise.flat_metrics(a.signal)
  a.skipped += list(a.flat.values())
  for family in a.families():
    fam = cells[cells["family"] == family]
    draws = fitting.bootstrap_draws(fam["unit"].to_numpy(), n_boot, seed)
    metrics = [m for m in METRICS if (family, m) not in a.flat]
    items = {m: noise.item_replicates(fam, m, n_boot, seed + 2) for m in metrics}
    for method in [BASELINE_METHOD] + [m for m in a.methods() if m in set(fam["method"])]:
      for curve, c in a.curves(family, method).items():
        if method != BASELINE_METHOD and curve_k(curve) == BASELINE_BITS:
          continue
        for metric in metrics:
          what = f"{metric} {forms.CURVE_FORMS[metric].name} fit, {family}, {method} {curve}"
          try:
            a.curve_fits[(family, method, curve, metric)] = _curve_fit(
              c, metric, what, draws, level
            )
          except FitError as e:
            a.skipped.append(str(e))
      if method == BASELINE_METHOD:
        continue
      for metric in metrics:
        curves = {label: _finite(c, metric) for label, c in a.curves(family, method).items()}
        curves = {label: c for label, c in curves.items() if len(c)}
        if len(curves) < 2:
          a.skipped.append(
            f"bit-optimal {metric}, {family}, {method}: {len(curves)} curve(s) "
            "with data; needs >= 2 bit widths"
          )
          continue
        fits = {
          label: f
          for label in curves
          if (f := a.curve_fit(family, method, label, metric)) is not None
        }
        a.bit_optimal[(family, method, metric)] = bitoptimal.bit_optimal(
          curves, fits, metric, draws, num_budgets, items[metric]
        )
  _compare_quant_methods(a, n_boot, seed, num_budgets)
  for method in a.methods():
    rows = _finite(cells[(cells["method"] == method) | (cells["k"] == BASELINE_BITS)], "nll")
    rows = rows[rows["family"].isin(set(cells.loc[cells["method"] == method, "family"]))]
    if rows["tokens"].isna().any():
      a.skipped.append(f"precision laws, {method}: training tokens unknown for some cells")
      continue
    data = forms.joint_data(
      rows["n"].to_numpy(),
      rows["tokens"].to_numpy(),
      rows["k"].to_numpy(),
      rows["family"].tolist(),
      rows["nll"].to_numpy(),
      rows["unit"].to_numpy(),
    )
    draws = fitting.bootstrap_draws(rows["unit"].to_numpy(), n_boot, seed + 1)
    for name, form in forms.JOINT_FORMS.items():
      try:
        a.joint_fits[(method, name)] = fitting.fit_form(
          form, data, f"{name} precision law, {method}", draws, level
        )
      except FitError as e:
        a.skipped.append(str(e))
  if cells["tokens"].nunique() >= 2:
    a.qid_rows = qid.qid_rows(cells)
    a.qid_fits, skipped = qid.fit_laws(a.qid_rows, n_boot, level, seed + 3)
    a.skipped += skipped
  return a

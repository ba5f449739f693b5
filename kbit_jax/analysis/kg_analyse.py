"""Every fit a knowledge-graph store allows, each gated on its metric moving beyond noise.

    analysis = kg_analyse.analyse(cells, issues, n_boot=200)   # cells: kg_cells.check_cells

Per family (model x training triples) x curve (method x k) x metric of FIT_METRICS (MRR
over all test triples and over the unleaked ones): the `bounded` form, the sigmoid in
log total bits of forms.SIGMOID with its floor fixed at the metric's chance value,

    metric = lo + (hi - lo) * sigmoid(s (ln bits - ln m_bits)),   lo = H_E / E for MRR

(E entities; 4.7e-4 for our graph, i.e. ~0). Why this form: MRR is a mean of 1 / rank,
bounded in (0, 1], with a floor (random ranks) and a ceiling (hi <= 1, what the model
class reaches at that k); a power law in bits is unbounded and would extrapolate past
1. It is the form the LM analysis fits to accuracy, a quantity of the same kind, so the
figures and bit-optimal comparisons read the same. Robust least squares, bootstrap over
trained models and the leave-largest-size-out error are fitting.py's; each fit adds
chi2 / dof of its residuals against the cells' standard errors (dof = cells - 3), so a
curve the form misses (e.g. a model that gets worse with size) says so.

Per family x method x metric: the bit-optimal k per total-bits budget by the study's
interpolation and by the fits (bitoptimal.py), plus whether the winner is *resolved*:
its interpolated value beats every other k reaching the budget by more than Z standard
errors (kg_cells.Z, errors interpolated like the values).

Per model x metric: `Performance = a N^b D^c` on the 16-bit cells (extra_axes.nd_fit's
log-linear least squares), N = dim x entities (the entity table), D = training triples,
with the parameters' standard errors and chi2 / dof against measurement noise.

Noise is not a law (kg_cells' tests, level ALPHA, Bonferroni over the sets tested): a
curve whose metric is one value within its standard errors across its sizes is not
fitted, a family whose metric moves neither across sizes nor across k gets no
bit-optimal ranking, and an N-D fit needs its 16-bit cells to move; each is listed in
`signal` and `skipped` with the numbers, and the report says "no signal".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from kbit_jax.analysis import bitoptimal, extra_axes, fitting, forms
from kbit_jax.analysis.fitting import FitError, FitResult
from kbit_jax.analysis.kg_cells import (
  ALPHA,
  FIT_METRICS,
  METRICS,
  Z,
  homogeneity_p,
  moves,
  size_means,
)
from kbit_jax.analysis.labels import BASELINE_BITS, BASELINE_METHOD, by_count, curve_k

# The bounded form per fitted metric: forms.SIGMOID (hi, s, m_bits; lo fixed), residuals
# in metric units, named after the metric it fits.
BOUNDED = {m: dataclasses.replace(forms.SIGMOID, name="bounded", metric=m) for m in FIT_METRICS}


@dataclasses.dataclass
class KGAnalysis:
  cells: pd.DataFrame
  issues: list[str]
  signal: pd.DataFrame  # family x metric: range, z across sizes and k, verdict
  curve_fits: dict[tuple[str, str, str, str], FitResult]  # (family, method, curve, metric)
  fit_checks: dict[tuple[str, str, str, str], dict[str, float]]  # chi2, dof, p
  bit_optimal: dict[tuple[str, str, str], pd.DataFrame]  # (family, method, metric)
  nd_fits: dict[tuple[str, str], dict[str, Any]]  # (model, metric)
  skipped: list[str]
  level: float
  n_boot: int

  def families(self) -> list[str]:
    """Families by model, then training triples."""
    fam = self.cells.drop_duplicates("family").sort_values(["model", "triples"])
    return list(fam["family"])

  def methods(self) -> list[str]:
    return by_count(self.cells.loc[self.cells["k"] != BASELINE_BITS, "method"])

  def curves(self, family: str, method: str) -> dict[str, pd.DataFrame]:
    """label -> cells of that curve, the 16-bit curve included, sorted by k."""
    fam = self.cells[self.cells["family"] == family]
    rows = fam[(fam["method"] == method) | (fam["k"] == BASELINE_BITS)]
    groups = dict(tuple(rows.groupby("curve")))
    return {c: groups[c] for c in sorted(groups, key=lambda c: (curve_k(c), c))}

  def curve_fit(self, family: str, method: str, curve: str, metric: str) -> FitResult | None:
    m = BASELINE_METHOD if curve_k(curve) == BASELINE_BITS else method
    return self.curve_fits.get((family, m, curve, metric))

  def verdict(self, family: str, metric: str) -> str:
    row = self.signal[(self.signal["family"] == family) & (self.signal["metric"] == metric)]
    return row["verdict"].iloc[0] if len(row) else "no data"


# ----------------------------------------------------------------------------- signal

NO_SIGNAL = "no signal"


def curve_tests(family_cells: pd.DataFrame, metric: str) -> dict[tuple[str, str], float]:
  """(method, curve) -> homogeneity p of that curve's metric across its sizes (means
  over seeds), for the curves of one family with >= 2 sizes."""
  out = {}
  for key, c in family_cells.groupby(["method", "curve"]):
    points = size_means(c, metric)
    if len(points) >= 2:
      out[key] = homogeneity_p(points["value"], points["stderr"])
  return out


def unit_tests(family_cells: pd.DataFrame, metric: str) -> dict[str, float]:
  """unit -> homogeneity p of one trained model's metric across its k (and methods)."""
  out = {}
  for unit, u in family_cells.groupby("unit"):
    ok = u[np.isfinite(u[metric].to_numpy(float))]
    if len(ok) >= 2:
      out[unit] = homogeneity_p(ok[metric], ok[f"{metric}_stderr"])
  return out


def _adjusted(ps: dict) -> float:
  """The smallest p, Bonferroni-corrected over the tests (capped at 1; NaN for none)."""
  finite = [p for p in ps.values() if np.isfinite(p)]
  return min(1.0, min(finite) * len(finite)) if finite else float("nan")


def signal_table(cells: pd.DataFrame) -> pd.DataFrame:
  """Per family x metric: its range, the Bonferroni-corrected homogeneity p across sizes
  (over its curves) and across k (over its trained models), and the verdict."""
  rows = []
  order = cells.drop_duplicates("family").sort_values(["model", "triples"])["family"]
  for family in order:
    fam = cells[cells["family"] == family]
    for metric in METRICS:
      ok = fam[np.isfinite(fam[metric].to_numpy(float))]
      if ok.empty:
        continue
      by_curve, by_unit = curve_tests(ok, metric), unit_tests(ok, metric)
      p_sizes, p_k = _adjusted(by_curve), _adjusted(by_unit)
      sizes, ks = moves(p_sizes), moves(p_k)
      verdict = (
        "moves across sizes and k"
        if sizes and ks
        else "moves across sizes, flat across k"
        if sizes
        else "moves across k, flat across sizes"
        if ks
        else NO_SIGNAL
      )
      rows.append(
        dict(
          family=family,
          metric=metric,
          cells=len(ok),
          low=float(ok[metric].min()),
          high=float(ok[metric].max()),
          median_stderr=float(ok[f"{metric}_stderr"].median()),
          p_sizes=p_sizes,
          curves=len(by_curve),
          p_k=p_k,
          models=len(by_unit),
          verdict=verdict,
        )
      )
  return pd.DataFrame(rows)


def _no_signal_text(cells: pd.DataFrame, metric: str, p: float, tests: int, what: str) -> str:
  v, se = cells[metric], cells[f"{metric}_stderr"]
  return (
    f"{metric} {v.min():.4f}..{v.max():.4f} (standard errors {se.min():.4f}..{se.max():.4f}) "
    f"is one value within noise (chi-square p = {p:.2g}, x {tests} {what} = "
    f"{min(1.0, p * tests):.2g}; signal needs < {ALPHA:g})"
  )


# ----------------------------------------------------------------------------- fits


def _range(cells: pd.DataFrame, metric: str) -> str:
  v = cells[metric]
  return f"{metric} {v.min():.4f}..{v.max():.4f}, median standard error " + (
    f"{cells[f'{metric}_stderr'].median():.4f}"
  )


def fit_check(fit: FitResult, stderr: np.ndarray) -> dict[str, float]:
  """chi2 of the fit's residuals against the cells' standard errors, dof = cells - 3,
  and the chance p of a chi2 at least that large if the form were right."""
  resid = fit.predict(fit.data.x) - fit.data.y
  se = np.asarray(stderr, float)
  chi2 = float(np.sum((resid / np.maximum(se, 1e-12)) ** 2))
  dof = len(resid) - len(fit.theta)
  return dict(chi2=chi2, dof=dof, p=float(stats.chi2.sf(chi2, dof)) if dof > 0 else np.nan)


def _curve_fit(c: pd.DataFrame, metric: str, what: str, draws, level) -> FitResult:
  c = c[np.isfinite(c[metric].to_numpy(float))]
  data = forms.curve_data(
    np.log(c["total_bits"].to_numpy(float)),
    c[metric].to_numpy(),
    c["params"].to_numpy(),
    c["unit"].to_numpy(),
    lo=float(c[f"chance/{metric}"].mean()),
  )
  return fitting.fit_form(BOUNDED[metric], data, what, draws, level)


# ----------------------------------------------------------------------------- bit-optimal


def resolution(curves: dict[str, pd.DataFrame], metric: str, table: pd.DataFrame, z: float = Z):
  """Per budget of `table` (bitoptimal.bit_optimal's): whether the interpolated winner
  beats every other k reaching the budget by > z standard errors, the smallest margin
  in standard errors, and the k within noise of the winner."""
  query = np.log(table["budget_bits"].to_numpy(float))
  values, errors = {}, {}
  for label, c in curves.items():
    p = size_means(c, metric)
    lb = np.log(p["total_bits"].to_numpy(float))
    values[label] = bitoptimal.interpolate(lb, p["value"].to_numpy(), query)
    errors[label] = bitoptimal.interpolate(lb, p["stderr"].to_numpy(), query)
  resolved, margin, ties = [], [], []
  for j, winner in enumerate(table["best_interp"]):
    if not isinstance(winner, str):
      resolved.append(None), margin.append(np.nan), ties.append("")
      continue
    zs = {
      label: (values[winner][j] - values[label][j]) / np.hypot(errors[winner][j], errors[label][j])
      for label in curves
      if label != winner and np.isfinite(values[label][j])
    }
    within = [label for label, v in zs.items() if not v > z]
    resolved.append(not within)
    margin.append(min(zs.values()) if zs else np.nan)
    ties.append(",".join(within))
  out = table.copy()
  out["resolved_interp"], out["margin_z"], out["within_noise"] = resolved, margin, ties
  return out


# ----------------------------------------------------------------------------- N x D


def nd_fit(cells: pd.DataFrame, metric: str) -> dict[str, Any] | None:
  """extra_axes.nd_fit (ln metric = ln a + b ln N + c ln D on the 16-bit cells) with the
  standard errors of ln a, b, c (least squares, residual variance) and chi2 / dof of
  the residuals against the measurement errors (se / metric in ln units)."""
  fit = extra_axes.nd_fit(cells.assign(tokens=cells["triples"]), metric)
  if fit is None:
    return None
  base = cells[(cells["k"] == BASELINE_BITS) & np.isfinite(cells[metric].to_numpy(float))]
  base = base[base[metric] > 0]
  x = np.stack(
    [
      np.ones(len(base)),
      np.log(base["n"].to_numpy(float)),
      np.log(base["triples"].to_numpy(float)),
    ],
    axis=1,
  )
  y = np.log(base[metric].to_numpy(float))
  resid = y - x @ np.array([np.log(fit["a"]), fit["b"], fit["c"]])
  dof = len(y) - 3
  cov = np.linalg.pinv(x.T @ x) * float(resid @ resid) / dof if dof > 0 else np.full((3, 3), np.nan)
  se_log = base[f"{metric}_stderr"].to_numpy(float) / base[metric].to_numpy(float)
  chi2 = float(np.sum((resid / np.maximum(se_log, 1e-12)) ** 2))
  return dict(
    fit,
    b_stderr=float(np.sqrt(cov[1, 1])),
    c_stderr=float(np.sqrt(cov[2, 2])),
    chi2=chi2,
    dof=dof,
    p=float(stats.chi2.sf(chi2, dof)) if dof > 0 else np.nan,
    n_values=sorted(set(base["n"].astype(int))),
    d_values=sorted(set(base["triples"].astype(int))),
  )


# ----------------------------------------------------------------------------- analyse


def analyse(
  cells: pd.DataFrame,
  issues: Sequence[str] = (),
  n_boot: int = 200,
  level: float = 0.95,
  seed: int = 0,
  num_budgets: int = 12,
) -> KGAnalysis:
  """Every fit the cells allow and whose metric moves beyond noise (module docstring)."""
  a = KGAnalysis(cells, list(issues), signal_table(cells), {}, {}, {}, {}, [], level, n_boot)
  for family in a.families():
    fam = cells[cells["family"] == family]
    draws = fitting.bootstrap_draws(fam["unit"].to_numpy(), n_boot, seed)
    tests = {metric: curve_tests(fam, metric) for metric in FIT_METRICS}
    for method in [BASELINE_METHOD] + [m for m in a.methods() if m in set(fam["method"])]:
      for metric in FIT_METRICS:
        for curve, c in a.curves(family, method).items():
          if method != BASELINE_METHOD and curve_k(curve) == BASELINE_BITS:
            continue
          what = f"{metric} bounded fit, {family}, {method} {curve}"
          p = tests[metric].get((c["method"].iloc[0], curve), float("nan"))
          if np.isfinite(p) and not moves(p, len(tests[metric])):
            text = _no_signal_text(c, metric, p, len(tests[metric]), "curves")
            a.skipped.append(f"{what}: {NO_SIGNAL} across sizes: {text}")
            continue
          try:
            fit = _curve_fit(c, metric, what, draws, level)
          except FitError as e:
            a.skipped.append(str(e))
            continue
          a.curve_fits[(family, method, curve, metric)] = fit
          ok = c[np.isfinite(c[metric].to_numpy(float))]
          a.fit_checks[(family, method, curve, metric)] = fit_check(
            fit, ok[f"{metric}_stderr"].to_numpy(float)
          )
      if method == BASELINE_METHOD:
        continue
      for metric in FIT_METRICS:
        what = f"bit-optimal {metric}, {family}, {method}"
        if a.verdict(family, metric) == NO_SIGNAL:
          a.skipped.append(
            f"{what}: {NO_SIGNAL} across sizes or k (signal table: {_range(fam, metric)})"
          )
          continue
        curves = {
          label: c[np.isfinite(c[metric].to_numpy(float))]
          for label, c in a.curves(family, method).items()
        }
        curves = {label: c for label, c in curves.items() if len(c)}
        if len(curves) < 2:
          a.skipped.append(f"{what}: {len(curves)} curve(s) with data; needs >= 2 bit widths")
          continue
        fits = {
          label: f
          for label in curves
          if (f := a.curve_fit(family, method, label, metric)) is not None
        }
        table = bitoptimal.bit_optimal(curves, fits, metric, draws, num_budgets)
        a.bit_optimal[(family, method, metric)] = resolution(curves, metric, table)
  model_names = sorted(set(cells["model"]))
  for model in model_names:
    mc = cells[cells["model"] == model]
    base = mc[mc["k"] == BASELINE_BITS]
    for metric in FIT_METRICS:
      what = f"N-D fit {metric}, {model}"
      ok = base[np.isfinite(base[metric].to_numpy(float))]
      p = homogeneity_p(ok[metric], ok[f"{metric}_stderr"])
      if np.isfinite(p) and not moves(p, len(model_names)):
        text = _no_signal_text(ok, metric, p, len(model_names), "models")
        a.skipped.append(f"{what}: {NO_SIGNAL} across N and D: {text}")
        continue
      fit = nd_fit(mc, metric)
      if fit is None:
        a.skipped.append(
          f"{what}: needs 16-bit cells at >= 2 dims and >= 2 training-set sizes, >= 4 in "
          f"all (has {ok['n'].nunique()} N x {ok['triples'].nunique()} D, {len(ok)} cells)"
        )
        continue
      a.nd_fits[(model, metric)] = fit
  return a

"""Fitting a form (forms.py): robust least squares, bootstrap intervals, hold-out error.

Every fit is scipy's `least_squares` run twice: a plain fit whose residuals set the
robust scale (f_scale = 1.5 sigma, sigma = the residuals' MAD / 0.6745, a normal's
standard deviation: scipy.stats.median_abs_deviation(scale="normal")), then
`loss='soft_l1'` from that solution.
Bootstrap: resample checkpoints (preset x seed x family) with replacement, refit, take
percentile intervals; replicates with too few distinct sizes are skipped and counted.
Identification: a parameter whose interval changes sign, or spans more than a factor of
IDENTIFIED_SPAN, is not identified by the data (`not_identified`): the report names it so
instead of quoting it as a measured value.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import optimize, stats

from kbit_jax.analysis.forms import JOINT_FORMS, QUANTIZED_MAX_BITS, FitData, Form

ROBUST_LOSS = "soft_l1"
IDENTIFIED_SPAN = 10.0  # an interval wider than this factor does not measure its parameter


def not_identified(interval: tuple[float, float] | None) -> str:
  """Why a bootstrap interval does not identify its parameter ('' if it does): it
  changes sign, or its ends are more than IDENTIFIED_SPAN apart as a ratio (an end at 0:
  an infinite ratio). No interval (too few replicates): not identified either."""
  if interval is None or not np.all(np.isfinite(interval)):
    return "no bootstrap interval"
  lo, hi = sorted(interval)
  if lo < 0 < hi:
    return "its interval changes sign"
  small, large = sorted((abs(lo), abs(hi)))
  if large > IDENTIFIED_SPAN * small:
    return f"its interval spans more than a factor of {IDENTIFIED_SPAN:g}"
  return ""


class FitError(ValueError):
  """A fit that cannot be made from the data it was given (the message says why)."""


def _residual_fn(form: Form, x: np.ndarray, y: np.ndarray, ctx: dict):
  if form.log_residuals:
    log_y = np.log(y)
    return lambda th: np.log(np.maximum(form.predict(th, x, ctx), 1e-300)) - log_y
  return lambda th: form.predict(th, x, ctx) - y


def robust_fit(
  form: Form,
  x: np.ndarray,
  y: np.ndarray,
  ctx: dict,
  f_scale: float | None = None,
  theta0: np.ndarray | None = None,
  bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, float]:
  """(theta, f_scale). Without f_scale, a plain pass first sets the robust scale from its
  residuals; with f_scale, theta0 and bounds (bootstrap replicates), one robust pass."""
  if theta0 is None or bounds is None:
    theta0, low, high = form.start(x, y, ctx)
  else:
    low, high = bounds
  theta = np.clip(theta0, low, high)
  fun = _residual_fn(form, x, y, ctx)
  if f_scale is None:
    plain = optimize.least_squares(fun, theta, bounds=(low, high), method="trf")
    sigma = stats.median_abs_deviation(plain.fun, scale="normal")  # a robust std
    f_scale, theta = max(1.5 * sigma, form.scale_floor), plain.x
  fit = optimize.least_squares(
    fun, theta, bounds=(low, high), method="trf", loss=ROBUST_LOSS, f_scale=f_scale
  )
  return fit.x, f_scale


def check_identifiable(form: Form, data: FitData, what: str) -> None:
  """Raises FitError naming what is missing for `form` to be identifiable."""
  sizes = np.unique(data.sizes)
  if len(sizes) < form.min_sizes:
    raise FitError(
      f"{what}: {len(sizes)} distinct model size(s) "
      f"({', '.join(f'{s:,}' for s in sizes) or 'none'}); the {form.name} form "
      f"({', '.join(form.param_names)}) needs >= {form.min_sizes}"
    )
  if form.name in JOINT_FORMS:
    quantized = data.x[:, 2] <= QUANTIZED_MAX_BITS
    ks = np.unique(data.x[quantized, 2])
    if len(ks) < 2:
      raise FitError(
        f"{what}: quantized cells at {len(ks)} bit width(s) {ks.astype(int).tolist()}"
        f"; the {form.name} law needs >= 2 quantized k to separate gamma from C"
      )
    if form.name == "ptq" and len(np.unique(data.sizes[quantized])) < 2:
      raise FitError(
        f"{what}: quantized cells at one model size; the ptq law needs >= 2 to fit gamma_N"
      )


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class FitResult:
  """A fitted form: point estimate, bootstrap replicates, intervals, held-out error."""

  form: Form
  theta: np.ndarray
  params: dict[str, float]
  ci: dict[str, tuple[float, float]]
  boot_theta: np.ndarray  # (n_boot, len(theta)); NaN rows = skipped replicates
  data: FitData
  f_scale: float
  level: float
  extrapolation: dict | None = None
  extrapolation_note: str = ""
  at_bound: list[str] = dataclasses.field(default_factory=list)  # parameters on a bound

  @property
  def name(self) -> str:
    return self.form.name

  @property
  def metric(self) -> str:
    return self.form.metric

  @property
  def n_cells(self) -> int:
    return len(self.data.y)

  @property
  def n_sizes(self) -> int:
    return len(np.unique(self.data.sizes))

  @property
  def unidentified(self) -> dict[str, str]:
    """{parameter: why} for the parameters the bootstrap does not identify, and those
    the fit left on their search bound (the data ask for more than the bound allows)."""
    out = {p: not_identified(self.ci.get(p)) for p in self.params}
    out.update({p: "on its search bound" for p in self.at_bound if p in self.params})
    return {p: why for p, why in out.items() if why}

  @property
  def n_boot_ok(self) -> int:
    return int(np.sum(~np.isnan(self.boot_theta[:, 0]))) if len(self.boot_theta) else 0

  def predict(self, x: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
    return self.form.predict(self.theta if theta is None else theta, x, self.data.ctx)

  def predict_band(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, low, high) predictions; the band is the percentile band of replicates."""
    point = self.predict(x)
    ok = self.boot_theta[~np.isnan(self.boot_theta[:, 0])]
    if len(ok) < 2:
      return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
    reps = np.stack([self.predict(x, th) for th in ok])
    tail = 50 * (1 - self.level)
    return point, np.percentile(reps, tail, axis=0), np.percentile(reps, 100 - tail, axis=0)


def bootstrap_draws(units: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
  """n_boot resamples (with replacement) of the distinct units, as arrays of unit ids.
  Shared by every curve of one method so that replicate r of each k sees the same
  checkpoints (the bit-optimal shares compare curves replicate by replicate)."""
  rng = np.random.default_rng(seed)
  distinct = np.unique(units)
  return [rng.choice(distinct, size=len(distinct), replace=True) for _ in range(n_boot)]


def fit_form(
  form: Form,
  data: FitData,
  what: str,
  draws: Sequence[np.ndarray] = (),
  level: float = 0.95,
  extrapolate: bool = True,
) -> FitResult:
  """Point fit, bootstrap over `draws` (see bootstrap_draws) and leave-largest-size-out
  extrapolation error. Raises FitError when the data cannot identify the form."""
  check_identifiable(form, data, what)
  if not np.all(np.isfinite(data.y)) or (form.log_residuals and np.any(data.y <= 0)):
    raise FitError(f"{what}: non-finite or non-positive {form.metric} values")
  theta, f_scale = robust_fit(form, data.x, data.y, data.ctx)
  # Replicates start from theta inside the full data's bounds (E below its smallest loss).
  _, low, high = form.start(data.x, data.y, data.ctx)
  rows_of = {u: np.flatnonzero(data.units == u) for u in np.unique(data.units)}
  boot = np.full((len(draws), len(theta)), np.nan)
  for r, draw in enumerate(draws):
    rep = data.take(
      np.concatenate([rows_of[u] for u in draw if u in rows_of] or [np.zeros(0, int)])
    )
    try:
      check_identifiable(form, rep, what)
    except FitError:
      continue
    boot[r], _ = robust_fit(form, rep.x, rep.y, rep.ctx, f_scale, theta, (low, high))
  result = FitResult(form, theta, form.report(theta, data.ctx), {}, boot, data, f_scale, level)
  span = high - low
  on_bound = (theta - low < 1e-6 * span) | (high - theta < 1e-6 * span)
  result.at_bound = [label for label, b in zip(form.labels(data.ctx), on_bound) if b]
  ok = boot[~np.isnan(boot[:, 0])]
  if len(ok) >= 2:
    reported = np.array([list(form.report(th, data.ctx).values()) for th in ok])
    tail = 50 * (1 - level)
    lows, highs = np.percentile(reported, [tail, 100 - tail], axis=0)
    result.ci = {name: (float(a), float(b)) for name, a, b in zip(result.params, lows, highs)}
  if extrapolate:
    result.extrapolation, result.extrapolation_note = holdout_error(form, data, what)
  return result


def holdout_error(form: Form, data: FitData, what: str) -> tuple[dict | None, str]:
  """Refit without the largest size and predict it. For nll the relative error is that
  of perplexity, e^(L_hat - L) - 1; for acc the error is in accuracy points."""
  largest = np.max(data.sizes)
  train = data.subset(data.sizes != largest)
  try:
    check_identifiable(form, train, what + " without its largest size")
    theta, _ = robust_fit(form, train.x, train.y, train.ctx)
  except FitError as e:
    return None, str(e)
  held = data.subset(data.sizes == largest)
  pred = form.predict(theta, held.x, held.ctx)
  err = pred - held.y
  out = {
    "heldout_size": int(largest),
    "cells": int(len(held.y)),
    "mean_error": float(np.mean(err)),
    "mean_abs_error": float(np.mean(np.abs(err))),
  }
  if form.metric == "nll":
    rel = np.expm1(err)
    out["ppl_rel_error"] = float(np.mean(np.abs(rel)))
  return out, ""

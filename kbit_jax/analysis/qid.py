"""Quantization-induced degradation along training, and two laws for it.

    rows = qid.qid_rows(cells)                 # cells: cells.check_cells (weights-only)
    fits = qid.fit_laws(rows, n_boot=200)      # {(method, law): QidFit}
    table = qid.threshold_table(fits, 0.05)    # D at which QiD reaches 0.05 nats

QiD = nll(k-bit) - nll(16-bit) of one trained model (same preset, seed, checkpoint), in
nats; D = training tokens the model saw, N = non-embedding parameters. Two laws, fitted
per quantization method to the same rows:

  ouyang   QiD = c D^beta / (N^alpha k^gamma)                  Ouyang et al. 2024
  kumar    QiD = C D^gamma_D / N^gamma_N e^(-k / gamma_post)     Kumar et al. 2024, delta_PTQ

Both are linear after taking logs (ouyang in ln k, kumar in k), so each is fitted as a
fitting.Form on ln QiD (log residuals, the same robust least squares and bootstrap as
every fit here): rows with QiD <= 0 (a k whose damage is below the evaluation's noise)
cannot enter a log fit and are counted, not used. The bootstrap resamples training runs
(`run`: a size x seed's checkpoints share one unit, they are one trajectory). Held-out
check: refit without the largest D and predict its rows (mean |ln predicted - ln
measured|), so the report can say which law extrapolates along training better.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

from kbit_jax.analysis import fitting
from kbit_jax.analysis.fitting import FitError, FitResult
from kbit_jax.analysis.forms import FitData, Form
from kbit_jax.analysis.labels import BASELINE_BITS

# x columns: n = ln N - ln N0, d = ln D - ln D0, k, ln k.
# |exponent| bound: wide enough for either sign to come out, and for a steep k exponent
# (experiments/training_length: QiD falls ~700x from k = 3 to 8, gamma ~ 7; 4 was too
# tight); a fit left on it is reported as not identified (FitResult.unidentified).
BOUND = 12.0


def _ouyang_predict(th, x, ctx):
  c, beta, alpha, gamma = th
  return np.exp(c + beta * x[:, 1] - alpha * x[:, 0] - gamma * x[:, 3])


def _kumar_predict(th, x, ctx):
  c, gamma_d, gamma_n, inv_post = th
  return np.exp(c + gamma_d * x[:, 1] - gamma_n * x[:, 0] - inv_post * x[:, 2])


def _lstsq_start(columns):
  """Start at the plain least-squares solution of ln QiD on the form's log-linear columns."""

  def start(x, y, ctx):
    design = np.stack([np.ones(len(y))] + [sign * x[:, j] for j, sign in columns], axis=1)
    theta, *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
    low = np.array([-50.0] + [-BOUND] * len(columns))
    high = np.array([50.0] + [BOUND] * len(columns))
    return np.clip(theta, low + 1e-9, high - 1e-9), low, high

  return start


def _ouyang_report(th, ctx):
  c, beta, alpha, gamma = th
  return {
    "c": float(np.exp(c - beta * ctx["lnD0"] + alpha * ctx["lnN0"])),
    "beta": float(beta),
    "alpha": float(alpha),
    "gamma": float(gamma),
  }


def _kumar_report(th, ctx):
  c, gamma_d, gamma_n, inv_post = th
  return {
    "C": float(np.exp(c - gamma_d * ctx["lnD0"] + gamma_n * ctx["lnN0"])),
    "gamma_D": float(gamma_d),
    "gamma_N": float(gamma_n),
    "1/gamma_post": float(inv_post),
  }


OUYANG = Form(
  "ouyang",
  ("c", "beta", "alpha", "gamma"),
  _ouyang_predict,
  _lstsq_start([(1, 1), (0, -1), (3, -1)]),
  _ouyang_report,
  metric="qid",
  min_sizes=2,
)
KUMAR = Form(
  "kumar",
  ("C", "gamma_D", "gamma_N", "1/gamma_post"),
  _kumar_predict,
  _lstsq_start([(1, 1), (0, -1), (2, -1)]),
  _kumar_report,
  metric="qid",
  min_sizes=2,
)
LAWS = {"ouyang": OUYANG, "kumar": KUMAR}
# The exponent on D of each law: QiD grows with training tokens where it is > 0.
D_EXPONENT = {"ouyang": "beta", "kumar": "gamma_D"}


def qid_rows(cells: pd.DataFrame) -> pd.DataFrame:
  """One row per quantized weights-only cell with a 16-bit cell of the same model (unit):
  method, preset, n, run, unit, tokens, d_over_n, k, qid."""
  cells = cells[np.isfinite(cells["nll"].to_numpy(float))]
  base = cells[cells["k"] == BASELINE_BITS].groupby("unit")["nll"].mean()
  q = cells[(cells["k"] != BASELINE_BITS) & cells["unit"].isin(base.index)]
  return pd.DataFrame(
    {
      "method": q["method"],
      "preset": q["preset"],
      "n": q["n"].astype(float),
      "run": q["run"],
      "unit": q["unit"],
      "tokens": q["tokens"].astype(float),
      "d_over_n": q["tokens"] / q["n"],
      "k": q["k"].astype(int),
      "qid": q["nll"].to_numpy() - base.loc[q["unit"]].to_numpy(),
    }
  ).reset_index(drop=True)


def law_data(rows: pd.DataFrame) -> FitData:
  """The laws' covariates of `rows` with QiD > 0 (bootstrap unit: the training run)."""
  ln_n, ln_d = np.log(rows["n"].to_numpy(float)), np.log(rows["tokens"].to_numpy(float))
  ln_n0, ln_d0 = float(np.mean(ln_n)), float(np.mean(ln_d))
  k = rows["k"].to_numpy(float)
  x = np.stack([ln_n - ln_n0, ln_d - ln_d0, k, np.log(k)], axis=1)
  ctx = {"lnN0": ln_n0, "lnD0": ln_d0}
  return FitData(x, rows["qid"].to_numpy(float), rows["n"].to_numpy(), rows["run"].to_numpy(), ctx)


@dataclasses.dataclass
class QidFit:
  """One law fitted to one method's QiD rows, with its held-out-largest-D error."""

  method: str
  law: str
  fit: FitResult
  rows: pd.DataFrame  # the rows fitted (QiD > 0)
  dropped: int  # rows with QiD <= 0, not fitted
  heldout: dict | None  # {"tokens", "rows", "mean_abs_log_error", "mean_rel_error"}
  heldout_note: str = ""


def _check(rows: pd.DataFrame, what: str) -> None:
  for column, name in (("tokens", "training budgets D"), ("k", "bit widths k")):
    values = sorted(rows[column].unique())
    if len(values) < 2:
      raise FitError(f"{what}: QiD > 0 at {len(values)} {name} {values}; the law needs >= 2")


def holdout_largest_d(form: Form, rows: pd.DataFrame, what: str) -> tuple[dict | None, str]:
  """Refit without the largest D, predict those rows; errors in ln QiD and relative."""
  largest = rows["tokens"].max()
  train, held = rows[rows["tokens"] < largest], rows[rows["tokens"] == largest]
  try:
    _check(train, what + " without its largest D")
    data = law_data(train)
    fitting.check_identifiable(form, data, what + " without its largest D")
    theta, _ = fitting.robust_fit(form, data.x, data.y, data.ctx)
  except FitError as e:
    return None, str(e)
  held_data = law_data(held)
  # the held-out rows in the training fit's coordinates (its centring constants)
  x = held_data.x.copy()
  x[:, 0] += held_data.ctx["lnN0"] - data.ctx["lnN0"]
  x[:, 1] += held_data.ctx["lnD0"] - data.ctx["lnD0"]
  pred = form.predict(theta, x, data.ctx)
  log_err = np.log(pred) - np.log(held_data.y)
  return {
    "tokens": float(largest),
    "rows": int(len(held)),
    "mean_log_error": float(np.mean(log_err)),
    "mean_abs_log_error": float(np.mean(np.abs(log_err))),
    "mean_rel_error": float(np.mean(np.abs(pred / held_data.y - 1))),
  }, ""


def fit_laws(
  rows: pd.DataFrame,
  n_boot: int = 200,
  level: float = 0.95,
  seed: int = 0,
  methods: Sequence[str] | None = None,
) -> tuple[dict[tuple[str, str], QidFit], list[str]]:
  """({(method, law): QidFit}, skipped): both laws per method of `rows` (qid_rows)."""
  fits, skipped = {}, []
  for method in methods if methods is not None else sorted(rows["method"].unique()):
    m = rows[rows["method"] == method]
    positive = m[m["qid"] > 0]
    draws = fitting.bootstrap_draws(positive["run"].to_numpy(), n_boot, seed)
    for name, form in LAWS.items():
      what = f"QiD {name} law, {method}"
      try:
        _check(positive, what)
        fit = fitting.fit_form(form, law_data(positive), what, draws, level, extrapolate=False)
      except FitError as e:
        skipped.append(str(e))
        continue
      heldout, note = holdout_largest_d(form, positive, what)
      fits[(method, name)] = QidFit(
        method, name, fit, positive, len(m) - len(positive), heldout, note
      )
  return fits, skipped


def better_law(fits: dict[tuple[str, str], QidFit], method: str) -> str | None:
  """The law with the smaller held-out-largest-D error for `method`, or None."""
  errors = {
    law: f.heldout["mean_abs_log_error"]
    for (m, law), f in fits.items()
    if m == method and f.heldout is not None
  }
  return min(errors, key=errors.get) if len(errors) == 2 else None


def _threshold_tokens(law: str, p: dict[str, float], n: float, k: int, threshold: float) -> float:
  """D at which the law's QiD reaches `threshold` at (N, k); inf where QiD does not grow
  with D (its exponent on D <= 0)."""
  if law == "ouyang":
    exponent = p["beta"]
    log_rest = np.log(threshold / p["c"]) + p["alpha"] * np.log(n) + p["gamma"] * np.log(k)
  else:
    exponent = p["gamma_D"]
    log_rest = np.log(threshold / p["C"]) + p["gamma_N"] * np.log(n) + p["1/gamma_post"] * k
  if not exponent > 0:
    return float("inf")
  return float(np.exp(np.clip(log_rest / exponent, -700, 700)))


def threshold_table(
  fits: dict[tuple[str, str], QidFit], threshold: float = 0.05, level: float = 0.95
) -> pd.DataFrame:
  """Per (method, law, preset, k): the D (and D/N) at which QiD reaches `threshold`
  nats, with the percentile interval over the law's bootstrap replicates."""
  rows = []
  tail = 50 * (1 - level)
  for (method, law), f in fits.items():
    sizes = f.rows.groupby("preset")["n"].first().sort_values()
    reps = [f.fit.form.report(th, f.fit.data.ctx) for th in f.fit.boot_theta if not np.isnan(th[0])]
    for preset, n in sizes.items():
      for k in sorted(f.rows["k"].unique()):
        d = _threshold_tokens(law, f.fit.params, n, k, threshold)
        boot = [_threshold_tokens(law, p, n, k, threshold) for p in reps]
        lo, hi = np.percentile(boot, [tail, 100 - tail]) if len(boot) >= 2 else (np.nan, np.nan)
        rows.append(
          dict(
            method=method,
            law=law,
            preset=preset,
            n=n,
            k=k,
            threshold=threshold,
            tokens=d,
            d_over_n=d / n,
            lo=lo,
            hi=hi,
          )
        )
  return pd.DataFrame(rows)

"""The fit forms of the k-bit scaling analysis and the data they are fitted to.

Per curve (one data type x block size x outlier share x k x training family), against
x = ln(total model bits) - x0 (x0 = the curve's mean, for conditioning):

  power     L   = a * bits^-alpha + E                    3 params, >= 3 sizes
            fitted to L = nll (nats/token; perplexity = e^L), residuals ln L_hat - ln L
  sigmoid   acc = lo + (hi - lo) * sigmoid(s (ln bits - m))   3 params, >= 3 sizes
            lo = the task set's chance accuracy, fixed (the curve never goes below it);
            residuals acc_hat - acc (accuracy points)

Jointly over every k of one quantization method (Kumar et al. 2024 in a post-training
form; N = non-embedding parameters, D = training tokens, f = training family):

  neff      L = A * (N (1 - e^(-k/gamma)))^-alpha + E_f
            quantization as a loss of effective parameters; k = 16 keeps 1 - e^(-16/gamma)
  ptq       L = A * N^-alpha + E_f
                + [k < 16] C * (D/D0)^gamma_D / (N/N0)^gamma_N * e^(-k/gamma_post)
            Kumar's delta_PTQ added to a float model's law. B * D^-beta is folded into one E
            per family (identifiable only with >= 3 token counts), and gamma_D is fitted only
            when the cells hold >= 2 token counts (else fixed at 0 and absorbed into C).

How a form is fitted (robust least squares, bootstrap, hold-out) is fitting.py.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

QUANTIZED_MAX_BITS = 8  # k above this is the unquantized baseline (k = 16)


@dataclasses.dataclass(frozen=True)
class Form:
  """A fit form: theta -> prediction, residuals, a data-driven start and bounds.

  `x` is a 2-D array of the form's covariates (rows = cells); `lo` is a fixed constant
  (chance accuracy for `sigmoid`, unused otherwise)."""

  name: str
  param_names: tuple[str, ...]  # the reported parameters (joint forms: + one E per family)
  predict: Callable[[np.ndarray, np.ndarray, dict], np.ndarray]
  start: Callable[[np.ndarray, np.ndarray, dict], tuple[np.ndarray, np.ndarray, np.ndarray]]
  report: Callable[[np.ndarray, dict], dict[str, float]]  # theta -> reported parameters
  metric: str = "nll"  # which metric it fits: nll | acc
  min_sizes: int = 3
  log_residuals: bool = True  # residuals in ln(metric) (nll) or metric units (acc)
  scale_floor: float = 1e-4  # smallest robust scale, in residual units
  theta_labels: Callable[[dict], list[str]] | None = None  # None: theta is param_names

  def labels(self, ctx: dict) -> list[str]:
    """What each theta entry is."""
    return list(self.param_names) if self.theta_labels is None else self.theta_labels(ctx)


# ----------------------------------------------------------------------------- forms


def _power_predict(th, x, ctx):
  c, alpha, e = th
  return np.exp(c - alpha * x[:, 0]) + np.exp(e)


def _power_start(x, y, ctx):
  """Grid over E in [0, min L): the E whose ln(L - E) is most linear in x starts."""
  y_min, best = float(np.min(y)), None
  for share in (0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.98):
    e_val = share * y_min
    slope, icpt = np.polyfit(x[:, 0], np.log(y - e_val), 1)
    alpha = float(np.clip(-slope, 0.0, 4.0))
    pred = np.exp(icpt - alpha * x[:, 0]) + e_val
    sse = float(np.sum((np.log(pred) - np.log(y)) ** 2))
    if best is None or sse < best[0]:
      best = (sse, np.array([icpt, alpha, np.log(max(e_val, 1e-6 * y_min))]))
  low = np.array([-50.0, 0.0, np.log(y_min) - 15.0])
  high = np.array([50.0, 4.0, np.log(y_min) + 1e-9])
  return best[1], low, high


def _power_report(th, ctx):
  c, alpha, e = th
  return {"a": float(np.exp(c + alpha * ctx["x0"])), "alpha": float(alpha), "E": float(np.exp(e))}


def _sigmoid_predict(th, x, ctx):
  hi, s, m = th
  lo = ctx["lo"]
  return lo + (hi - lo) / (1.0 + np.exp(-s * (x[:, 0] - m)))


def _sigmoid_start(x, y, ctx):
  lo, xs = ctx["lo"], x[:, 0]
  hi0 = float(np.clip(np.max(y) + 0.5 * max(np.max(y) - lo, 0.02), lo + 0.02, 1.0))
  p = np.clip((y - lo) / (hi0 - lo), 0.02, 0.98)
  slope, icpt = np.polyfit(xs, np.log(p / (1 - p)), 1) if np.ptp(xs) > 0 else (0.0, 0.0)
  s0 = max(float(slope), 0.05)
  low = np.array([lo + 1e-3, 0.0, xs.min() - 10.0])
  high = np.array([1.0, 30.0, xs.max() + 10.0])
  return np.array([hi0, s0, -icpt / s0]), low, high


def _sigmoid_report(th, ctx):
  hi, s, m = th
  return {
    "lo": float(ctx["lo"]),
    "hi": float(hi),
    "s": float(s),
    "m_bits": float(np.exp(m + ctx["x0"])),
  }


POWER = Form("power", ("a", "alpha", "E"), _power_predict, _power_start, _power_report)
SIGMOID = Form(
  "sigmoid",
  ("hi", "s", "m_bits"),
  _sigmoid_predict,
  _sigmoid_start,
  _sigmoid_report,
  metric="acc",
  log_residuals=False,
  scale_floor=1e-3,
)
CURVE_FORMS = {"nll": POWER, "acc": SIGMOID}


# Joint (precision-aware) forms. x columns: n = ln N - ln N0, d = ln D - ln D0, k, family.
def _families(x):
  return x[:, 3].astype(int)


def _neff_predict(th, x, ctx):
  nf = ctx["num_families"]
  c, alpha, lgamma, e = th[0], th[1], th[2], th[3 : 3 + nf]
  keep = -np.expm1(-x[:, 2] / np.exp(lgamma))  # 1 - e^(-k/gamma)
  return np.exp(c - alpha * (x[:, 0] + np.log(keep))) + np.exp(e[_families(x)])


def _joint_e_start(x, y, ctx):
  nf = ctx["num_families"]
  y_min = np.array([np.min(y[_families(x) == f]) for f in range(nf)])
  return np.log(0.8 * y_min), np.log(y_min) - 15.0, np.log(y_min) + 1e-9


def _baseline_start(x, y, ctx):
  """(c, alpha) from the float cells: ln(L - 0.8 min L) linear in n."""
  base = x[:, 2] > QUANTIZED_MAX_BITS
  xb, yb = (x[base], y[base]) if base.sum() >= 2 and np.ptp(x[base, 0]) > 0 else (x, y)
  e_b = 0.8 * np.min(yb)
  if np.ptp(xb[:, 0]) > 0:
    slope, icpt = np.polyfit(xb[:, 0], np.log(yb - e_b), 1)
  else:
    slope, icpt = -0.3, float(np.log(np.mean(yb) - e_b))
  return float(icpt), float(np.clip(-slope, 0.01, 3.0))


def _neff_start(x, y, ctx):
  c, alpha = _baseline_start(x, y, ctx)
  e0, e_low, e_high = _joint_e_start(x, y, ctx)
  start = np.concatenate([[c, alpha, np.log(1.0)], e0])
  low = np.concatenate([[-50.0, 0.0, np.log(0.05)], e_low])
  high = np.concatenate([[50.0, 4.0, np.log(16.0)], e_high])
  return start, low, high


def _neff_report(th, ctx):
  nf = ctx["num_families"]
  out = {
    "A": float(np.exp(th[0] + th[1] * ctx["lnN0"])),
    "alpha": float(th[1]),
    "gamma": float(np.exp(th[2])),
  }
  out.update({f"E[{name}]": float(np.exp(v)) for name, v in zip(ctx["families"], th[3 : 3 + nf])})
  return out


def _ptq_split(th, ctx):
  """(c, alpha, c_C, gamma_N, gamma_D, ln gamma_post, E_f...) from theta; gamma_D is a
  parameter only when the cells hold >= 2 token counts."""
  c, alpha, c_c, gamma_n, lgamma_post = th[:5]
  gamma_d, rest = (th[5], th[6:]) if ctx["fit_gamma_d"] else (0.0, th[5:])
  return c, alpha, c_c, gamma_n, gamma_d, lgamma_post, rest


def _ptq_predict(th, x, ctx):
  c, alpha, c_c, gamma_n, gamma_d, lgamma_post, e = _ptq_split(th, ctx)
  quantized = x[:, 2] <= QUANTIZED_MAX_BITS
  penalty = np.exp(c_c - gamma_n * x[:, 0] + gamma_d * x[:, 1] - x[:, 2] / np.exp(lgamma_post))
  return np.exp(c - alpha * x[:, 0]) + np.exp(e[_families(x)]) + quantized * penalty


def _ptq_start(x, y, ctx):
  """The penalty starts at 5% of the mean loss at the smallest quantized k (gamma_post 1)."""
  c, alpha = _baseline_start(x, y, ctx)
  e0, e_low, e_high = _joint_e_start(x, y, ctx)
  k_min = np.min(x[x[:, 2] <= QUANTIZED_MAX_BITS, 2], initial=QUANTIZED_MAX_BITS)
  start = [c, alpha, np.log(0.05 * np.mean(y)) + k_min, 0.5, 0.0]
  low, high = [-50.0, 0.0, -50.0, -2.0, np.log(0.05)], [50.0, 4.0, 50.0, 4.0, np.log(16.0)]
  if ctx["fit_gamma_d"]:
    start, low, high = start + [0.0], low + [-4.0], high + [4.0]
  return (np.concatenate([start, e0]), np.concatenate([low, e_low]), np.concatenate([high, e_high]))


def _ptq_report(th, ctx):
  c, alpha, c_c, gamma_n, gamma_d, lgamma_post, e = _ptq_split(th, ctx)
  out = {
    "A": float(np.exp(c + alpha * ctx["lnN0"])),
    "alpha": float(alpha),
    "C": float(np.exp(c_c + gamma_n * ctx["lnN0"] - gamma_d * ctx["lnD0"])),
    "gamma_N": float(gamma_n),
    "gamma_post": float(np.exp(lgamma_post)),
  }
  if ctx["fit_gamma_d"]:
    out["gamma_D"] = float(gamma_d)
  out.update({f"E[{name}]": float(np.exp(v)) for name, v in zip(ctx["families"], e)})
  return out


def _family_labels(ctx):
  return [f"E[{name}]" for name in ctx["families"]]


def _neff_labels(ctx):
  return ["A", "alpha", "gamma"] + _family_labels(ctx)


def _ptq_labels(ctx):
  return (
    ["A", "alpha", "C", "gamma_N", "gamma_post"]
    + ["gamma_D"] * ctx["fit_gamma_d"]
    + _family_labels(ctx)
  )


NEFF = Form(
  "neff",
  ("A", "alpha", "gamma", "E"),
  _neff_predict,
  _neff_start,
  _neff_report,
  theta_labels=_neff_labels,
)
PTQ = Form(
  "ptq",
  ("A", "alpha", "E", "C", "gamma_N", "gamma_post"),
  _ptq_predict,
  _ptq_start,
  _ptq_report,
  theta_labels=_ptq_labels,
)
JOINT_FORMS = {"neff": NEFF, "ptq": PTQ}


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class FitData:
  """What a form is fitted to: covariates `x`, metric `y`, the size (params) of each cell
  (to count distinct sizes), its bootstrap unit (checkpoint) and the form's constants."""

  x: np.ndarray
  y: np.ndarray
  sizes: np.ndarray
  units: np.ndarray
  ctx: dict

  def subset(self, mask: np.ndarray) -> "FitData":
    return FitData(self.x[mask], self.y[mask], self.sizes[mask], self.units[mask], self.ctx)

  def take(self, index: np.ndarray) -> "FitData":
    return FitData(self.x[index], self.y[index], self.sizes[index], self.units[index], self.ctx)


def curve_data(
  log_bits: np.ndarray, y: np.ndarray, sizes: np.ndarray, units: np.ndarray, lo: float = 0.0
) -> FitData:
  """Per-curve covariates: x = ln(bits) - mean ln(bits)."""
  log_bits = np.asarray(log_bits, float)
  x0 = float(np.mean(log_bits)) if len(log_bits) else 0.0
  return FitData(
    (log_bits - x0)[:, None],
    np.asarray(y, float),
    np.asarray(sizes),
    np.asarray(units),
    {"x0": x0, "lo": lo},
  )


def joint_data(
  n: np.ndarray,
  d: np.ndarray,
  k: np.ndarray,
  family: Sequence[str],
  y: np.ndarray,
  units: np.ndarray,
) -> FitData:
  """Precision-law covariates from N (non-embedding params), D (tokens), k, family."""
  ln_n, ln_d = np.log(np.asarray(n, float)), np.log(np.asarray(d, float))
  names = sorted(set(family))
  fam = np.array([names.index(f) for f in family], float)
  ln_n0, ln_d0 = float(np.mean(ln_n)), float(np.mean(ln_d))
  x = np.stack([ln_n - ln_n0, ln_d - ln_d0, np.asarray(k, float), fam], axis=1)
  ctx = {
    "lnN0": ln_n0,
    "lnD0": ln_d0,
    "families": names,
    "num_families": len(names),
    "fit_gamma_d": len(set(np.round(ln_d, 6))) >= 2,
  }
  return FitData(x, np.asarray(y, float), np.asarray(n), np.asarray(units), ctx)

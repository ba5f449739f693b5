"""Bit-level scaling: for each total-bits budget, which k gives the best model.

The study compares curves at equal total model bits by linear interpolation between
measured points in log bits; a budget outside a curve's measured range has no value for
that k. The fitted curves (fitting.py) give a second answer, which may extrapolate up
to a factor FIT_REACH beyond each curve's measured bits.
Confidence: the share of bootstrap replicates (checkpoints resampled with replacement;
the same draws for every k, see fitting.bootstrap_draws) in which the winning k of
the point estimate wins again, among the replicates in which that k has a value at the
budget (and >= 2 curves do). With per-item scores in the records, each interpolation
replicate also resamples the evaluation's items (noise.item_replicates: the same items
for every cell of the replicate), so the share counts both sources of noise; the fitted
curves' replicates resample checkpoints only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kbit_jax.analysis import fitting

HIGHER_IS_BETTER = {"acc": True, "nll": False}
# Knowledge-graph link prediction (kg_cells.METRICS): ranks' MRR and Hits@10, all higher
# is better, over all test triples and over the unleaked ones.
HIGHER_IS_BETTER.update({m: True for m in ("mrr", "hits@10", "unleaked/mrr", "unleaked/hits@10")})
# A fitted curve answers for budgets up to this far (in ln bits) outside its measured
# range: a factor of 2 either side, so that no k wins a budget only by extrapolation.
FIT_REACH = float(np.log(2.0))


def curve_points(
  cells: pd.DataFrame, metric: str, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(ln total bits, metric) per model size, sorted by bits: the (weighted) mean over the
  cells of that size (training seeds, or a bootstrap replicate's repeated draws)."""
  w = np.ones(len(cells)) if weights is None else np.asarray(weights, float)
  frame = pd.DataFrame(
    {
      "size": cells["params"].to_numpy(),
      "w": w,
      "lb": np.log(cells["total_bits"].to_numpy(float)) * w,
      "y": cells[metric].to_numpy(float) * w,
    }
  )
  frame = frame[frame["w"] > 0].groupby("size")[["w", "lb", "y"]].sum()
  lb, y = (frame["lb"] / frame["w"]).to_numpy(), (frame["y"] / frame["w"]).to_numpy()
  order = np.argsort(lb)
  return lb[order], y[order]


def interpolate(lb: np.ndarray, y: np.ndarray, query: np.ndarray) -> np.ndarray:
  """Linear in ln bits inside [min, max] of the measured points, NaN outside."""
  out = np.full(len(query), np.nan)
  if len(lb) == 0:
    return out
  inside = (query >= lb[0] - 1e-9) & (query <= lb[-1] + 1e-9)
  out[inside] = np.interp(query[inside], lb, y)
  return out


def winners(values: Mapping[str, np.ndarray], higher_is_better: bool) -> np.ndarray:
  """Per budget, the label of the best curve; None where fewer than 2 curves have a value."""
  labels = list(values)
  table = np.stack([values[label] for label in labels])  # (curves, budgets)
  signed = np.where(np.isnan(table), -np.inf, table if higher_is_better else -table)
  best = np.argmax(signed, axis=0)
  count = np.sum(~np.isnan(table), axis=0)
  return np.array([labels[b] if c >= 2 else None for b, c in zip(best, count)], dtype=object)


def _share(
  point: np.ndarray, replicates: list[tuple[np.ndarray, dict[str, np.ndarray]]]
) -> tuple[np.ndarray, np.ndarray]:
  """(share of replicates agreeing with `point`, replicates counted) per budget. A
  replicate counts at a budget where the point winner has a value in it (a resample
  without the sizes around a budget says nothing about which k is best there)."""
  if not replicates:
    return np.full(len(point), np.nan), np.zeros(len(point), int)
  agree = np.zeros(len(point))
  counted = np.zeros(len(point), int)
  for labels, values in replicates:
    for j, winner in enumerate(point):
      if winner is None or labels[j] is None or np.isnan(values[winner][j]):
        continue
      counted[j] += 1
      agree[j] += labels[j] == winner
  return np.where(counted > 0, agree / np.maximum(counted, 1), np.nan), counted


def budgets_for(cells: pd.DataFrame, num: int) -> np.ndarray:
  """`num` log-spaced total-bits budgets spanning the measured cells."""
  lb = np.log(cells["total_bits"].to_numpy(float))
  return np.exp(np.linspace(lb.min(), lb.max(), num))


def by_interpolation(
  curves: Mapping[str, pd.DataFrame],
  metric: str,
  budgets: np.ndarray,
  draws: Sequence[np.ndarray] = (),
  item_values: Sequence[pd.Series] | None = None,
) -> pd.DataFrame:
  """Best curve per budget from interpolated measurements, with bootstrap shares.
  `curves`: label -> that curve's cells (with a `unit` column, the checkpoint);
  `item_values`: per replicate, every cell's metric on resampled items (or None)."""
  higher = HIGHER_IS_BETTER[metric]
  query = np.log(budgets)
  values = {label: interpolate(*curve_points(c, metric), query) for label, c in curves.items()}
  point = winners(values, higher)
  replicates = []
  for r, draw in enumerate(draws):
    counts = pd.Series(draw).value_counts()

    def resampled(c: pd.DataFrame, r: int = r) -> pd.DataFrame:
      return c if item_values is None else c.assign(**{metric: item_values[r].loc[c.index]})

    rep = {
      label: interpolate(
        *curve_points(resampled(c), metric, c["unit"].map(counts).fillna(0)), query
      )
      for label, c in curves.items()
    }
    replicates.append((winners(rep, higher), rep))
  share, n = _share(point, replicates)
  out = pd.DataFrame(
    {
      "budget_bits": budgets,
      "best": point,
      "share": share,
      "replicates": n,
      "candidates": np.sum([~np.isnan(v) for v in values.values()], axis=0),
    }
  )
  for label, v in values.items():
    out[f"value[{label}]"] = v
  return out


def by_fit(fits: Mapping[str, fitting.FitResult], metric: str, budgets: np.ndarray) -> pd.DataFrame:
  """Best curve per budget from the fitted curves (each within FIT_REACH of its measured
  bits), with the share of aligned bootstrap replicates agreeing."""
  higher = HIGHER_IS_BETTER[metric]
  query = np.log(budgets)

  def predict(fit: fitting.FitResult, theta: np.ndarray) -> np.ndarray:
    x = query - fit.data.ctx["x0"]
    reach = (x >= fit.data.x[:, 0].min() - FIT_REACH) & (x <= fit.data.x[:, 0].max() + FIT_REACH)
    if np.isnan(theta[0]):
      return np.full(len(query), np.nan)
    return np.where(reach, fit.predict(x[:, None], theta), np.nan)

  values = {label: predict(f, f.theta) for label, f in fits.items()}
  point = winners(values, higher)
  num_boot = min((len(f.boot_theta) for f in fits.values()), default=0)
  replicates = []
  for r in range(num_boot):
    rep = {label: predict(f, f.boot_theta[r]) for label, f in fits.items()}
    replicates.append((winners(rep, higher), rep))
  share, n = _share(point, replicates)
  out = pd.DataFrame({"budget_bits": budgets, "best": point, "share": share, "replicates": n})
  for label, v in values.items():
    out[f"value[{label}]"] = v
  return out


def bit_optimal(
  curves: Mapping[str, pd.DataFrame],
  fits: Mapping[str, fitting.FitResult],
  metric: str,
  draws: Sequence[np.ndarray],
  num_budgets: int = 12,
  item_values: Sequence[pd.Series] | None = None,
) -> pd.DataFrame:
  """One row per budget: the best k by interpolation and by fit, each with its share."""
  all_cells = pd.concat(list(curves.values()))
  budgets = budgets_for(all_cells, num_budgets)
  interp = by_interpolation(curves, metric, budgets, draws, item_values)
  out = interp[["budget_bits", "candidates"]].copy()
  out["best_interp"], out["share_interp"] = interp["best"], interp["share"]
  if fits:
    fitted = by_fit(fits, metric, budgets)
    out["best_fit"], out["share_fit"] = fitted["best"], fitted["share"]
  else:
    out["best_fit"], out["share_fit"] = None, np.nan
  out.insert(0, "metric", metric)
  return out


def compare_methods(
  curves_by_method: Mapping[str, Mapping[str, pd.DataFrame]],
  metric: str,
  budgets: np.ndarray,
  draws: Sequence[np.ndarray] = (),
  reference: str | None = None,
) -> pd.DataFrame:
  """The best k per budget under each quantization method, on common budgets and the
  same bootstrap draws (by interpolation, as `by_interpolation`).

  `curves_by_method`: method (e.g. rtn, gptq, awq) -> {curve label -> its cells}. Columns
  per method m: `best[m]`, `share[m]` (replicates in which m's winner wins again) and,
  for m != `reference` (default: the first method), `same[m]`: the share of replicates,
  among those in which both have a winner, in which m's best k equals the reference's
  (paired: one draw resamples the checkpoints of both). Where `best` differs but
  `same[m]` is large, the move is within the bootstrap's noise."""
  methods = list(curves_by_method)
  reference = reference or methods[0]
  higher = HIGHER_IS_BETTER[metric]
  query = np.log(budgets)
  out = pd.DataFrame({"budget_bits": budgets})
  for m in methods:
    t = by_interpolation(curves_by_method[m], metric, budgets, draws)
    out[f"best[{m}]"], out[f"share[{m}]"] = t["best"], t["share"]

  def winners_of(m, weights):
    values = {
      label: interpolate(*curve_points(c, metric, None if weights is None else weights(c)), query)
      for label, c in curves_by_method[m].items()
    }
    return winners(values, higher)

  same = {m: np.zeros(len(budgets)) for m in methods if m != reference}
  counted = {m: np.zeros(len(budgets), int) for m in same}
  for draw in draws:
    counts = pd.Series(draw).value_counts()

    def weights(c, counts=counts):
      return c["unit"].map(counts).fillna(0)

    ref = winners_of(reference, weights)
    for m in same:
      got = winners_of(m, weights)
      both = np.array([r is not None and g is not None for r, g in zip(ref, got)])
      counted[m] += both
      same[m] += both & (ref == got)
  for m in same:
    out[f"same[{m}]"] = np.where(counted[m] > 0, same[m] / np.maximum(counted[m], 1), np.nan)
  out.insert(0, "metric", metric)
  return out

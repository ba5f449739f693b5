"""Noise is not a law: which metrics move beyond their standard error, and resampling the
evaluation's items.

    table = noise.signal_table(cells)                  # per family x size x metric
    flat = noise.flat_metrics(table)                   # {(family, metric): one-line note}
    reps = noise.item_replicates(cells, "acc", 200)    # per-replicate metric values

Signal rule. Per training family, model size and metric (the main method's cells and the
16-bit ones, mean over seeds): the spread across k (max - min) against its standard error (x
2, or x 3 for a paired one: UNPAIRED_FACTOR, PAIRED_FACTOR). With one seed and per-item
scores the two cells that make the spread scored the same items (the same task items, the
same perplexity rows), so the standard error is that of their paired difference
(`_paired_stderr`); otherwise the cells' mean stderr (`acc_stderr` as the tasks report it;
for nll, `nll_stderr` from the per-row losses), which ignores the pairing and is
conservative. A metric has signal in a family when at least half of its sizes do; one
without signal is neither fitted nor ranked (analyse.py), and the report says so in one
line. A metric without a stderr (stores written before per-item scores were kept) is treated
as having signal, as before.

Item resampling. A record keeps per-item scores (`items/<task>`: one 0/1 character per
item; `items/ppl/<split>`: the nll sum and token count of each perplexity row). Every cell
of one evaluation scored the same items, so a replicate draws item indices once (per task,
and rows) and applies them to every cell: the paired differences between k stay paired.
bitoptimal.py combines these with the resampled checkpoints, so a win share counts the
noise of the items as well as of the models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kbit_jax.analysis.labels import BASELINE_BITS, family_order, main_method

STDERR = {"acc": "acc_stderr", "nll": "nll_stderr"}
ITEM_PREFIX = "items/"
MIN_SIGNAL_SHARE = 0.5  # of a family's sizes: a metric with signal at fewer is flat
# The spread must exceed this many standard errors: 2 of a cell's own (unpaired) stderr;
# 3 of the paired difference's, since the spread is the largest of the differences
# between ~6 k (the studentized range of 6 values at 95% is 4.03 sigma of one value =
# 2.85 sigma of a difference), so pure noise seldom passes.
UNPAIRED_FACTOR, PAIRED_FACTOR = 2.0, 3.0


def signal_table(cells: pd.DataFrame) -> pd.DataFrame:
  """Rows (family, preset, n, metric): spread across k, stderr, spread / stderr, signal
  (True, False, or None where the stderr is unknown)."""
  main = main_method(cells)
  if main is None:
    return pd.DataFrame()
  rows = []
  use = cells[(cells["method"] == main.label) | (cells["k"] == BASELINE_BITS)]
  for (family, n, preset), g in use.groupby(["family", "n", "preset"]):
    for metric, err in STDERR.items():
      ok = g[np.isfinite(g[metric].to_numpy(float))]
      by_k = ok.groupby("k")[metric].mean()
      if len(by_k) < 2:
        continue
      spread = float(by_k.max() - by_k.min())
      stderr = float(ok[err].mean()) if err in ok and ok[err].notna().any() else float("nan")
      paired = _paired_stderr(ok, metric, by_k.idxmax(), by_k.idxmin())
      stderr = paired if paired is not None else stderr
      factor = PAIRED_FACTOR if paired is not None else UNPAIRED_FACTOR
      rows.append(
        dict(
          family=family,
          preset=preset,
          n=n,
          metric=metric,
          spread=spread,
          stderr=stderr,
          ratio=spread / stderr if stderr > 0 else float("nan"),
          paired=paired is not None,
          signal=None if not np.isfinite(stderr) else bool(spread > factor * stderr),
        )
      )
  table = pd.DataFrame(rows)
  if table.empty:
    return table
  order = table["family"].map(family_order).tolist()
  rank = sorted(range(len(table)), key=lambda i: (order[i], table["n"].iloc[i]))
  return table.iloc[rank].reset_index(drop=True)


def _paired_stderr(g: pd.DataFrame, metric: str, k_hi, k_lo) -> float | None:
  """The standard error of the difference between the cells at k_hi and k_lo (the two
  that make the spread) from their per-item scores, which are paired (the same items,
  the same rows); None unless each k has one cell (one seed) with per-item scores."""
  a, b = g[g["k"] == k_hi], g[g["k"] == k_lo]
  if len(a) != 1 or len(b) != 1:
    return None
  pair = pd.concat([a, b])
  if metric == "nll":
    rows = _rows(pair)
    if rows is None:
      return None
    (sums, counts), n = rows, rows[0].shape[1]
    if n < 2:
      return None
    # nll = sum_i s_i / sum_i t_i over the same rows: its difference is sum_i d_i / T
    return float(np.std(sums[0] - sums[1], ddof=1) * np.sqrt(n) / counts[0].sum())
  scores = [_scores(pair[c]) for c in task_columns(pair)]
  if not scores or any(s is None or s.shape[1] < 2 for s in scores):
    return None
  # mean acc = the mean over tasks of each task's acc: its difference's variance is the
  # sum of the tasks' (per-item paired differences' sem^2) / tasks^2
  sems = [np.std(s[0] - s[1], ddof=1) / np.sqrt(s.shape[1]) for s in scores]
  return float(np.sqrt(np.sum(np.square(sems))) / len(scores))


def flat_metrics(table: pd.DataFrame) -> dict[tuple[str, str], str]:
  """{(family, metric): the one-line note} for the metrics without signal."""
  out = {}
  if table.empty:
    return out
  for (family, metric), g in table.groupby(["family", "metric"]):
    known = g[g["signal"].notna()]
    if known.empty:
      continue
    moving = int(known["signal"].astype(bool).sum())
    if moving < MIN_SIGNAL_SHARE * len(known):
      out[(family, metric)] = (
        f"{metric}, {family}: no signal, not fitted or ranked: its spread across k exceeds "
        f"its noise (2 stderr, 3 of a paired difference) at {moving} of {len(known)} sizes "
        f"(median spread "
        f"{known['spread'].median():.3g}, stderr {known['stderr'].median():.3g})"
      )
  return out


# ----------------------------------------------------------------------------- items


def task_columns(cells: pd.DataFrame) -> list[str]:
  return sorted(
    c for c in cells.columns if c.startswith(ITEM_PREFIX) and not c.startswith("items/ppl/")
  )


def _scores(column: pd.Series) -> np.ndarray | None:
  """(cells, items) 0/1 array of one task, None unless every cell has the same count."""
  if column.isna().any():
    return None
  lengths = column.str.len()
  if lengths.nunique() != 1:
    return None
  return np.array([np.frombuffer(s.encode(), np.uint8) - ord("0") for s in column], float)


def _rows(cells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
  """(nll sums, token counts), each (cells, rows), or None without per-row losses."""
  if "rows_nll" not in cells or cells["rows_nll"].isna().any():
    return None
  sums = [np.asarray(v, float) for v in cells["rows_nll"]]
  counts = [np.asarray(v, float) for v in cells["rows_tokens"]]
  if len({len(s) for s in sums}) != 1:
    return None
  return np.stack(sums), np.stack(counts)


def item_replicates(
  cells: pd.DataFrame, metric: str, n_boot: int, seed: int = 0
) -> list[pd.Series] | None:
  """n_boot resamples of `metric` for every cell (indexed like `cells`), the items drawn
  with replacement once per replicate for all cells; None without per-item scores."""
  rng = np.random.default_rng(seed)
  if metric == "acc":
    scores = [_scores(cells[c]) for c in task_columns(cells)]
    if not scores or any(s is None for s in scores):
      return None
    out = []
    for _ in range(n_boot):
      per_task = [s[:, rng.integers(0, s.shape[1], s.shape[1])].mean(axis=1) for s in scores]
      out.append(pd.Series(np.mean(per_task, axis=0), index=cells.index))
    return out
  rows = _rows(cells)
  if rows is None:
    return None
  sums, counts = rows
  out = []
  for _ in range(n_boot):
    idx = rng.integers(0, sums.shape[1], sums.shape[1])
    out.append(pd.Series(sums[:, idx].sum(axis=1) / counts[:, idx].sum(axis=1), index=cells.index))
  return out

"""Log-likelihood requests packed into rows, each shared prefix run once (model/packing.py).

    batches = shared_prefix.pack(rows, batch_size, step, cap)   # rows: scoring._request_row's
    ll, greedy = shared_prefix.reduce(batches, nll_and_hits, len(rows))

Multiple-choice tasks score one context with several continuations: hellaswag's four
endings, piqa's two solutions, winogrande's two sentences that agree up to the blank. Row
by row, the context runs once per choice; here it runs once per item. Requests are sorted
by their input tokens, so requests that share a prefix are neighbours, and grouped
greedily: a request joins the group before it while the tokens saved grow (n members
sharing P tokens save (n - 1) * P) and it shares at least an eighth of the tokens it
adds (`OWN_PER_SHARED`). A group is laid out as its shared prefix, then each member's
own tokens (one branch each); groups are packed first-fit-decreasing into rows as long
as the longest group rounded up to `step` (at most cap), so padding is only what no
group fits into, and the rows split evenly into batches of one shape (one compile per
call: a 12-layer model's costs ~3 s on CPU). Only a batch's scored positions (its
requests' continuations, gathered from all rows into C columns, C a multiple of
SCORED_STEP) reach the head; the sums per request are taken on the host.

What each request sees is exactly what it sees alone: its own tokens at its own
positions, left-truncated as `scoring._request_row` truncates; the log-likelihoods equal
the row-by-row scorer's up to float32 rounding (tests/test_shared_prefix.py).

Shape suffixes: B batch (rows), L row length, C scored positions of a whole batch.
"""

from __future__ import annotations

import bisect
import os
from typing import NamedTuple, Sequence

import numpy as np

Row = tuple[list[int], list[int], int]  # (inputs, targets, continuation length)

SCORED_STEP = 256  # the scored positions of a batch are padded to a multiple of this
# A request joins a group only if it shares at least 1/OWN_PER_SHARED of what it adds:
# else requests that share a first word chain into groups as long as the scoring length
# (sharing 1 token each), whose long rows cost more attention than they save.
OWN_PER_SHARED = 8


class Group(NamedTuple):
  """Requests sharing their first `shared` input tokens."""

  members: list[int]  # request indices
  shared: int

  def length(self, rows: Sequence[Row]) -> int:
    return self.shared + sum(len(rows[i][0]) - self.shared for i in self.members)


def group_requests(rows: Sequence[Row], cap: int) -> list[Group]:
  """Requests grouped by shared input prefixes (see the module docstring), no group
  longer than `cap`; a request that shares nothing is a group of one, all "shared"."""
  order = sorted(range(len(rows)), key=lambda i: rows[i][0])
  groups: list[Group] = []
  for i in order:
    if groups:
      last = groups[-1]
      common = len(os.path.commonprefix([rows[last.members[-1]][0], rows[i][0]]))
      joined = Group(last.members + [i], min(last.shared, common))
      saves_more = len(last.members) * joined.shared > (len(last.members) - 1) * last.shared
      own = len(rows[i][0]) - joined.shared
      if saves_more and own <= OWN_PER_SHARED * joined.shared and joined.length(rows) <= cap:
        groups[-1] = joined
        continue
    groups.append(Group([i], len(rows[i][0])))
  return groups


class PackedBatch(NamedTuple):
  """One call of the packed scorer: the model's inputs and where each request's
  continuation lies."""

  inputs_BxL: np.ndarray
  positions_BxL: np.ndarray  # each token's position in its own request
  groups_BxL: np.ndarray  # -1: padding
  branches_BxL: np.ndarray  # 0: a group's shared prefix; 1, 2, ...: a member's own tokens
  scored_1xC: np.ndarray  # indices b * L + l of the outputs that predict continuation tokens
  targets_1xC: np.ndarray
  owner_1xC: np.ndarray  # the request of each scored position; -1: padding
  tokens: int  # input tokens of the requests (as scored row by row)


def _layout(group: Group, rows: Sequence[Row], g: int):
  """(tokens, positions, groups, branches, scored, targets, owners) of one group with
  group id `g`; scored are indices from the group's first token."""
  first = rows[group.members[0]][0]
  tokens, positions = list(first[: group.shared]), list(range(group.shared))
  branches = [0] * group.shared
  scored, targets, owners = [], [], []
  for branch, i in enumerate(group.members, start=1):
    inputs, row_targets, cont_len = rows[i]
    own_start = len(tokens)  # where this member's own tokens begin in the row
    tokens += inputs[group.shared :]
    positions += range(group.shared, len(inputs))
    branches += [branch] * (len(inputs) - group.shared)
    for j in range(len(inputs) - cont_len, len(inputs)):
      scored.append(j if j < group.shared else own_start + j - group.shared)
      targets.append(row_targets[j])
      owners.append(i)
  return tokens, positions, [g] * len(tokens), branches, scored, targets, owners


def pack(rows: Sequence[Row], batch_size: int, step: int, cap: int) -> list[PackedBatch]:
  """Rows of requests -> packed batches of one shape (see the module docstring), so one
  compile per call: every row is as long as the longest group, rounded up to `step`
  (at most cap); each row starts with the longest group left and takes the longest that
  still fits, until none does; the rows are split evenly into the fewest batches of at
  most `batch_size` rows, and every batch has as many scored columns as the fullest."""
  groups = group_requests(rows, cap)
  pool = sorted((g.length(rows), k) for k, g in enumerate(groups))  # ascending
  pool_lengths = [n for n, _ in pool]
  pool_groups = [k for _, k in pool]

  def take_longest(at_most: int) -> int | None:
    index = bisect.bisect_right(pool_lengths, at_most) - 1
    if index < 0:
      return None
    del pool_lengths[index]
    return pool_groups.pop(index)

  if not groups:
    return []
  step = max(step, 1)
  length = min(cap, -(-pool_lengths[-1] // step) * step)
  bins: list[list[int]] = []  # the groups of each row
  while pool_groups:
    row, room = [], length
    while (k := take_longest(room)) is not None:
      row.append(k)
      room -= groups[k].length(rows)
    bins.append(row)
  per_batch = -(-len(bins) // -(-len(bins) // batch_size))  # even split, fewest batches
  laid = [
    _lay_out_rows(groups, bins[i : i + per_batch], rows, length)
    for i in range(0, len(bins), per_batch)
  ]
  width = max(len(scored) for *_, scored, _, _, _ in laid)
  width = -(-width // SCORED_STEP) * SCORED_STEP
  return [_batch(*parts, per_batch, length, width) for parts in laid]


def _lay_out_rows(groups, bins, rows, length):
  """(inputs, positions, group ids, branches) rows of `bins` (the group indices of each
  row; a group's id is its index), and the flat scored indices, targets, owners, tokens."""
  arrays = [[] for _ in range(4)]
  scored, targets, owners, tokens = [], [], [], 0
  for b, row_groups in enumerate(bins):
    row = [[] for _ in range(4)]
    for k in row_groups:
      tok, pos, grp, br, sc, tg, ow = _layout(groups[k], rows, k)
      scored += [b * length + len(row[0]) + j for j in sc]  # into the rows taken as one
      targets += tg
      owners += ow
      for part, values in zip(row, (tok, pos, grp, br)):
        part += values
      tokens += sum(len(rows[i][0]) for i in groups[k].members)
    for whole, part in zip(arrays, row):
      whole.append(part)
  return (*arrays, scored, targets, owners, tokens)


def _batch(
  inputs, positions, group_ids, branches, scored, targets, owners, tokens, batch_rows, length, width
) -> PackedBatch:
  """Padded to batch_rows x length (padding: a group of its own, -1) and width scored."""

  def padded(parts, fill):
    out = np.full((batch_rows, length), fill, np.int32)
    for b, part in enumerate(parts):
      out[b, : len(part)] = part
    return out

  pad = width - len(scored)
  return PackedBatch(
    padded(inputs, 0),
    padded(positions, 0),
    padded(group_ids, -1),
    padded(branches, -1),
    np.asarray([scored + [0] * pad], np.int32),
    np.asarray([targets + [0] * pad], np.int32),
    np.asarray([owners + [-1] * pad], np.int32),
    tokens,
  )


def reduce(
  batches: Sequence[PackedBatch], outputs: Sequence[tuple[np.ndarray, np.ndarray]], n: int
) -> list[tuple[float, bool]]:
  """(summed log-prob, all greedy) per request from each batch's (nll_1xC, hit_1xC)."""
  ll, greedy = np.zeros(n, np.float64), np.ones(n, bool)
  for batch, (nll_1xC, hit_1xC) in zip(batches, outputs):
    real = batch.owner_1xC >= 0
    owners = batch.owner_1xC[real]
    np.add.at(ll, owners, -np.asarray(nll_1xC, np.float64)[real])
    np.logical_and.at(greedy, owners, np.asarray(hit_1xC)[real])
  return [(float(a), bool(b)) for a, b in zip(ll, greedy)]

"""Packed rows for scoring: several requests, and requests sharing a prefix, in one row.

A row of the Transformer normally holds one sequence (causal attention, positions 0..L-1).
`Packing` lets one row hold many: every token names its `group` (an independent sequence
family: attention never crosses groups), its `branch` inside the group (0: the prefix the
group's requests share; 1, 2, ...: each request's own tokens after it) and its position in
its own request. A token attends to the earlier tokens of its group that are on its own
branch or on the shared prefix, so each request sees exactly the tokens it would see
alone, at the positions it would have alone:

    row:      [ The cat sat | on a mat | in a hat | <pad> ]
    group:      0   0   0     0  0  0    0  0  0    -1
    branch:     0   0   0     1  1  1    2  2  2    -1
    position:   0   1   2     3  4  5    3  4  5     0

Scoring a hellaswag item so runs its context once for its four endings, as a KV cache
would, in one forward pass and with no cache (evals/shared_prefix.py builds the rows).
Padding is its own group (-1), so no real token reads it. The model's outputs at a
request's positions equal those of the request scored alone up to float rounding (the
masked scores are exact zeros after the softmax; sums run over other lengths).

Shape suffixes: B batch, L length (query), M length (key).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Packing(NamedTuple):
  """Per token of a packed row: the position it has in its own request, its group and its
  branch (see the module docstring). int32, B x L each."""

  positions_BxL: jax.Array
  groups_BxL: jax.Array
  branches_BxL: jax.Array

  def mask_Bx1xLxM(self) -> jax.Array:
    """May query l read key m: m <= l, the same group, and m's branch is l's or 0."""
    L = self.groups_BxL.shape[1]
    causal_LxM = jnp.tril(jnp.ones((L, L), dtype=bool))
    same_group_BxLxM = self.groups_BxL[:, :, None] == self.groups_BxL[:, None, :]
    key_branch_BxLxM = self.branches_BxL[:, None, :]
    visible_BxLxM = (key_branch_BxLxM == 0) | (key_branch_BxLxM == self.branches_BxL[:, :, None])
    return (causal_LxM[None] & same_group_BxLxM & visible_BxLxM)[:, None]


def positions(packing: Packing | None, length: int) -> jax.Array:
  """Each token's position: positions_BxL when packed, else 0..length-1 for every row
  (shape 1 x L)."""
  return jnp.arange(length)[None] if packing is None else packing.positions_BxL

"""Packed rows with shared prefixes (evals/shared_prefix.py, model/packing.py): the layout
is exact, every request sees only its own tokens at its own positions, and the packed
scorer's log-likelihoods equal the row-by-row scorer's for every position encoding."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kbit_jax.evals import scoring, shared_prefix
from kbit_jax.model import presets, transformer


def _rows(requests, cap):
  return [scoring._request_row(c, x, cap) for c, x in requests]


def test_a_choice_items_context_is_laid_out_once():
  """Three continuations of context [1, 2, 3]: the context once (branch 0), then each
  continuation's own input tokens on a branch of its own, at positions 3.. again. The
  request whose inputs are the context alone ([6]) has no own tokens: its one scored
  position is the context's last, which the others score too."""
  requests = [([1, 2, 3], [4, 5]), ([1, 2, 3], [6]), ([1, 2, 3], [7, 8]), ([9], [9, 9])]
  (batch,) = shared_prefix.pack(_rows(requests, 16), batch_size=4, step=8, cap=16)
  # groups sorted by inputs: [1,2,3] (request 1), [1,2,3,4] (0), [1,2,3,7] (2); then [9,9] (3)
  np.testing.assert_array_equal(batch.inputs_BxL, [[1, 2, 3, 4, 7, 9, 9, 0]])
  np.testing.assert_array_equal(batch.positions_BxL, [[0, 1, 2, 3, 3, 0, 1, 0]])
  np.testing.assert_array_equal(batch.groups_BxL, [[0, 0, 0, 0, 0, 1, 1, -1]])
  np.testing.assert_array_equal(batch.branches_BxL, [[0, 0, 0, 2, 3, 0, 0, -1]])
  C = shared_prefix.SCORED_STEP
  want_scored = [2, 2, 3, 2, 4, 5, 6]  # request 1; 0 (two tokens); 2 (two); 3 (two)
  np.testing.assert_array_equal(batch.scored_1xC, [want_scored + [0] * (C - 7)])
  np.testing.assert_array_equal(batch.targets_1xC, [[6, 4, 5, 7, 8, 9, 9] + [0] * (C - 7)])
  np.testing.assert_array_equal(batch.owner_1xC, [[1, 0, 0, 2, 2, 3, 3] + [-1] * (C - 7)])
  assert batch.tokens == 4 + 3 + 4 + 2  # the inputs as scored row by row


def test_grouping_keeps_only_prefixes_that_save_tokens():
  """Sorted by inputs, a request joins the group before it while the tokens saved grow:
  the two winogrande-like sentences share their 4 first tokens; [1, 9] would save one
  token but cost the group 3 per member (its prefix would drop from 4 to 1)."""
  requests = [([1, 2, 3, 4, 5], [6]), ([1, 2, 3, 4, 7], [6]), ([1, 9], [3])]
  groups = shared_prefix.group_requests(_rows(requests, 16), cap=16)
  assert groups == [shared_prefix.Group([0, 1], 4), shared_prefix.Group([2], 2)]
  # under cap 5 the two no longer fit one group (4 shared + 1 + 1 own tokens = 6)
  groups = shared_prefix.group_requests(_rows(requests, 16), cap=5)
  assert groups == [
    shared_prefix.Group([0], 5),
    shared_prefix.Group([1], 5),
    shared_prefix.Group([2], 2),
  ]


def _visible(batch, b, q):
  """Row indices that position q of row b attends to (model/packing.py's rule)."""
  g, br = batch.groups_BxL[b], batch.branches_BxL[b]
  return [m for m in range(q + 1) if g[m] == g[q] and (br[m] == 0 or br[m] == br[q])]


choice_items = st.lists(
  st.tuples(
    st.lists(st.integers(1, 5), min_size=1, max_size=12),  # a context
    st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=6), min_size=1, max_size=4),
  ),
  min_size=1,
  max_size=12,
)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
  items=choice_items,
  cap=st.integers(6, 24),
  batch_size=st.integers(1, 5),
  step=st.sampled_from([1, 4, 8]),
)
def test_every_request_sees_exactly_its_own_inputs(items, cap, batch_size, step):
  """For any requests, truncation, batch size and step: each request is scored exactly at
  its continuation, and each scored position sees its request's inputs up to there (the
  tokens, in order, at positions 0..j) and nothing else; rows fit their batch length."""
  requests = [(ctx, cont) for ctx, conts in items for cont in conts if len(cont) <= cap]
  hypothesis.assume(requests)
  rows = _rows(requests, cap)
  batches = shared_prefix.pack(rows, batch_size, step, cap)
  seen = {i: [] for i in range(len(rows))}
  for batch in batches:
    B, L = batch.inputs_BxL.shape
    assert B <= batch_size and L <= cap and (L % step == 0 or L == cap)
    for flat, target, owner in zip(batch.scored_1xC[0], batch.targets_1xC[0], batch.owner_1xC[0]):
      if owner < 0:
        continue
      b, q = divmod(int(flat), L)
      j = int(batch.positions_BxL[b, q])
      inputs, targets, _ = rows[owner]
      visible = _visible(batch, b, q)
      assert batch.inputs_BxL[b, visible].tolist() == inputs[: j + 1]
      assert batch.positions_BxL[b, visible].tolist() == list(range(j + 1))
      assert target == targets[j]
      seen[int(owner)].append(j)
  for i, (inputs, _, cont_len) in enumerate(rows):
    assert seen[i] == list(range(len(inputs) - cont_len, len(inputs))), i
  assert sum(b.tokens for b in batches) == sum(len(r[0]) for r in rows)


def _net(positions: str, scan_layers: bool = False, attention: str = "einsum", **kw):
  p = presets.Preset(2, 32, 4, 64, vocab_size=64, max_len=48, positions=positions, **kw)
  net = transformer.Transformer(p, scan_layers=scan_layers, attention=attention)
  params = nn.unbox(net.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  params = jax.tree.map(lambda x: x * 3.0, params)  # sharper logits than init's
  return net, params


def _choice_requests(seed: int):
  """hellaswag-like (one context, four endings), winogrande-like (two contexts agreeing
  up to the blank, one continuation), lambada-like singles, and one request longer than
  the scoring length (left-truncated)."""
  rng = np.random.default_rng(seed)
  tokens = lambda n: rng.integers(1, 64, size=n).tolist()  # noqa: E731
  requests = []
  for _ in range(3):
    ctx = tokens(int(rng.integers(3, 14)))
    requests += [(ctx, tokens(int(rng.integers(1, 7)))) for _ in range(4)]
    start, rest = tokens(int(rng.integers(2, 9))), tokens(int(rng.integers(2, 6)))
    requests += [(start + tokens(2), rest), (start + tokens(1), rest)]
    requests.append((tokens(int(rng.integers(5, 20))), tokens(1)))
  requests.append((tokens(45), tokens(4)))  # 49 > cap 40: truncated
  return requests


@pytest.mark.parametrize(
  "positions,kw",
  [
    ("learned", {}),
    ("learned", {"scan_layers": True}),
    ("rotary", {"preset": {"rotary_pct": 0.5, "parallel_residual": True}}),
    ("rotary", {"preset": {"kv_heads": 2, "norm": "rmsnorm"}, "attention": "xla"}),
    ("alibi", {}),
  ],
)
def test_packed_scoring_equals_row_by_row(positions, kw):
  """Tiny random models (x3 weights) of each position encoding, scanned or not, GQA with
  jax's XLA attention: the packed scorer's log-likelihoods equal the row-by-row scorer's
  to 2e-5 nats (float32 sums over other lengths) and the greedy flags are identical."""
  net, params = _net(
    positions,
    scan_layers=kw.get("scan_layers", False),
    attention=kw.get("attention", "einsum"),
    **kw.get("preset", {}),
  )
  requests = _choice_requests(seed=len(positions))
  rows = scoring.loglikelihoods(params, net, requests, batch_size=4, max_len=40, bucket_step=8)
  packed = scoring.loglikelihoods(
    params, net, requests, batch_size=4, max_len=40, bucket_step=8, share_prefixes=True
  )
  np.testing.assert_allclose([ll for ll, _ in packed], [ll for ll, _ in rows], rtol=0, atol=2e-5)
  assert [g for _, g in packed] == [g for _, g in rows]
  assert len({ll for ll, _ in rows}) > len(requests) // 2  # the requests really differ


def test_packing_saves_the_shared_tokens():
  """Four endings of one 30-token context: row by row 4 x 30 + endings, packed 30 + endings."""
  ctx = list(range(1, 31))
  requests = [(ctx, [40 + i, 50 + i]) for i in range(4)]
  (batch,) = shared_prefix.pack(_rows(requests, 64), batch_size=8, step=8, cap=64)
  assert batch.tokens == 4 * 31
  assert int((batch.groups_BxL >= 0).sum()) == 30 + 4 * 1
  assert batch.inputs_BxL.shape == (1, 40)


def test_learned_positions_with_an_offset_are_packed():
  """A packed row's tokens use the preset's position table with its offset (OPT: 2)."""
  p = dataclasses.replace(presets.Preset(1, 16, 2, 32, vocab_size=32, max_len=16), pos_offset=2)
  net = transformer.Transformer(p)
  params = nn.unbox(net.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  requests = [([1, 2, 3, 4], [5]), ([1, 2, 3, 4], [6]), ([7, 8], [9])]
  rows = scoring.loglikelihoods(params, net, requests, batch_size=2)
  packed = scoring.loglikelihoods(params, net, requests, batch_size=2, share_prefixes=True)
  np.testing.assert_allclose([ll for ll, _ in packed], [ll for ll, _ in rows], rtol=0, atol=1e-5)

"""Batched log-likelihood scoring of (context, continuation) requests, as lm-eval does it.

    requests = scoring.encode_requests(tokenizer, [(context, continuation), ...])
    results = scoring.loglikelihoods(params, net, requests, batch_size)  # [(ll, greedy)]

Zero-shot tasks (tasks.py) and k-bit probes (probes.py) reduce to log-likelihood requests
(context tokens, continuation tokens), scored as lm-eval's `_loglikelihood_tokens` does:
context + continuation, left-truncated to the last max_len + 1 tokens, the model run on all
but the last token; the result is the summed log-probability of the continuation and
whether greedy decoding reproduces it.

Compiles are bounded: rows are padded into fixed shapes (batch_size x bucket, buckets are
powers of two from 16 up to max_len) and the parameters are arguments of the jitted
function, never constants in it, so every quantized variant of a model (same shapes and
net) reuses the same executables: at most one per bucket (the continuation width C is
one per bucket for a set of requests). The last batch of a shape is padded with rows of
weight 0.

Shape suffixes: B batch, L length, C continuation (the positions scored), V vocab.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kbit_jax.evals import shared_prefix
from kbit_jax.model import transformer
from kbit_jax.train import data

MIN_BUCKET = 16


LOG_EVERY = 50  # batches between progress lines


Request = tuple[Sequence[int], Sequence[int]]  # (context tokens, continuation tokens)


def scoring_length(net: transformer.Transformer, max_len: int = 0) -> int:
  """The longest sequence scored: `max_len`, or the model's when 0."""
  cap = max_len or net.p.max_len
  if net.p.positions == "learned" and cap > net.p.max_len:
    raise ValueError(
      f"eval.max_len={max_len} exceeds the model's learned positions (max_len={net.p.max_len})"
    )
  return cap


def bucket_lengths(cap: int) -> tuple[int, ...]:
  """Padded row lengths: powers of two from MIN_BUCKET, and `cap` itself."""
  out, length = [], MIN_BUCKET
  while length < cap:
    out.append(length)
    length *= 2
  return tuple(out) + (cap,)


BOS_MODES = ("tokenizer", "none")  # eval.bos


def prepends_bos(tokenizer: data.Tokenizer, bos: str = "tokenizer") -> bool:
  """Whether scoring puts BOS before each context: `bos="tokenizer"` (the default)
  follows the tokenizer's own setting (`tokenizer.add_bos`: True for the hub's OPT
  tokenizers, False for GPT-2, Pythia, BLOOM and the embedded SentencePiece), as
  lm-evaluation-harness does since its PR #3347; `"none"`: never, as harness <= 0.4.9
  scored causal models (the k-bit study's era)."""
  if bos not in BOS_MODES:
    raise ValueError(f"eval.bos={bos!r} is unknown; allowed: {list(BOS_MODES)}")
  return bos == "tokenizer" and bool(getattr(tokenizer, "add_bos", False))


def encode_requests(
  tokenizer: data.Tokenizer, pairs: Sequence[tuple[str, str]], add_bos: bool | None = None
) -> list[Request]:
  """(context, continuation) strings -> token ids, as lm-eval's `_encode_pair`.

  Trailing spaces of the context move to the continuation; the continuation's ids are
  those of context + continuation after the context's own ids; an empty context becomes
  [eos] (the document boundary the models are trained on). `add_bos` (None: the
  tokenizer's own setting, `prepends_bos`): every context starts with BOS, as the
  harness's encoding of context and context + continuation does (so the continuation's
  ids are the same), and an empty context is [bos].
  """
  if add_bos is None:
    add_bos = prepends_bos(tokenizer)
  prefix = [tokenizer.bos_id] if add_bos else []
  contexts, wholes = [], []
  for context, continuation in pairs:
    spaces = len(context) - len(context.rstrip())
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    contexts.append(context)
    wholes.append(context + continuation)
  requests = []
  for context, whole, ctx_ids, whole_ids in zip(
    contexts, wholes, tokenizer.encode_batch(contexts), tokenizer.encode_batch(wholes)
  ):
    cont_ids = whole_ids[len(ctx_ids) :]
    if not cont_ids:
      raise ValueError(f"the continuation of {whole!r} after {context!r} encodes to no tokens")
    if not context:
      ctx_ids = prefix or [tokenizer.eos_id]
    else:
      ctx_ids = prefix + list(ctx_ids)
    requests.append((ctx_ids, cont_ids))
  return requests


def _score_rows(
  params: Any,
  inputs_BxL: jax.Array,
  positions_BxC: jax.Array,
  targets_BxC: jax.Array,
  mask_BxC: jax.Array,
  *,
  net: transformer.Transformer,
):
  """Per row: summed log-prob of the masked targets, and whether each is the argmax.

  Only the continuation's positions (`positions_BxC`, C >= the longest continuation)
  reach the head: the logits of the context are never used. "Is the argmax" is tested as
  target logit >= max logit: it differs from lm-eval's `argmax == target` only on exact
  ties, and XLA:CPU's argmax over V made scoring ~3x slower. No B x C x V log-prob array
  is formed (transformer.next_token_nll).
  """
  logits_BxCxV = net.apply({"params": params}, inputs_BxL, positions_BxC)
  nll_BxC, hit_BxC = _nll_and_hits(logits_BxCxV, targets_BxC)
  ll_B = jnp.sum(jnp.where(mask_BxC, -nll_BxC, 0.0), axis=-1)
  return ll_B, jnp.all(hit_BxC | ~mask_BxC, axis=-1)


def _nll_and_hits(logits_BxCxV: jax.Array, targets_BxC: jax.Array):
  """Each target's NLL, and whether it is the argmax (as target logit >= max logit)."""
  nll_BxC = transformer.next_token_nll(logits_BxCxV, targets_BxC)
  target_logit_BxC = jnp.take_along_axis(logits_BxCxV, targets_BxC[..., None], axis=-1)[..., 0]
  return nll_BxC, target_logit_BxC >= jnp.max(logits_BxCxV, axis=-1)


score_rows = jax.jit(_score_rows, static_argnames="net")


def _score_packed(
  params: Any,
  inputs_BxL: jax.Array,
  packing: transformer.Packing,
  scored_BxC: jax.Array,
  targets_BxC: jax.Array,
  *,
  net: transformer.Transformer,
):
  """nll_BxC and is-the-argmax of each scored position of packed rows (shared_prefix.py);
  the host sums them per request."""
  return _nll_and_hits(net.apply({"params": params}, inputs_BxL, scored_BxC, packing), targets_BxC)


score_packed = jax.jit(_score_packed, static_argnames="net")


def _request_row(
  context: Sequence[int], continuation: Sequence[int], cap: int
) -> tuple[list[int], list[int], int]:
  """(inputs, targets, continuation length) of one request, left-truncated to `cap`."""
  if not context or not continuation:
    raise ValueError(
      f"a request needs >= 1 context and >= 1 continuation token; got "
      f"{len(context)} and {len(continuation)}"
    )
  if len(continuation) > cap:
    raise ValueError(
      f"a continuation of {len(continuation)} tokens does not fit the "
      f"scoring length {cap} (eval.max_len or the model's max_len)"
    )
  whole = (list(context) + list(continuation))[-(cap + 1) :]
  return whole[:-1], whole[1:], len(continuation)


def _batches(
  order: list[int], bucket_of: list[int], batch_size: int
) -> list[tuple[list[int], int]]:
  """Consecutive runs of one bucket, cut into batches of at most batch_size rows."""
  batches, start = [], 0
  while start < len(order):
    end = start
    while end < len(order) and end - start < batch_size and bucket_of[end] == bucket_of[start]:
      end += 1
    batches.append((order[start:end], bucket_of[start]))
    start = end
  return batches


class ScoringBatch(NamedTuple):
  """One call of `score_rows`: which requests fill its rows, and the padded arrays."""

  requests: list[int]  # request indices of the first len(requests) rows
  inputs_BxL: np.ndarray
  positions_BxC: np.ndarray  # the input positions whose outputs predict the continuation
  targets_BxC: np.ndarray  # the continuation's tokens
  mask_BxC: np.ndarray  # True at a row's continuation tokens (padding: False)
  tokens: int  # unpadded input tokens


def _step_batches(
  order: list[int], lengths: list[int], batch_size: int, step: int, cap: int
) -> list[tuple[list[int], int]]:
  """Consecutive batch_size rows (longest first), each batch as long as its longest row
  rounded up to a multiple of `step` (at most cap): less padding than powers of two, and
  no part-filled batch but the last, for at most cap / step compiles."""
  out = []
  for start in range(0, len(order), batch_size):
    chunk = order[start : start + batch_size]
    out.append((chunk, min(cap, -(-lengths[chunk[0]] // step) * step)))
  return out


def continuation_width(longest: int, length: int) -> int:
  """C of a batch `length` long: the longest continuation of the whole request set,
  rounded up to a power of two, at most `length`: one C per batch length, so compiles
  stay one per length."""
  return min(length, 1 << (longest - 1).bit_length())


def pack_requests(
  requests: Sequence[Request], cap: int, batch_size: int, bucket_step: int = 0
) -> list[ScoringBatch]:
  """Requests -> fixed-shape batches: longest first (an out-of-memory shows at once, as
  in lm-eval), each batch one bucket long, padded rows all-zero with an empty mask.
  `bucket_step` > 0 (the harness bridge): batch lengths are multiples of it instead.
  Each row's continuation is gathered into C columns (`continuation_width`)."""
  buckets = bucket_lengths(cap)
  rows = [_request_row(c, x, cap) for c, x in requests]
  order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]), reverse=True)
  if bucket_step > 0:
    batches = _step_batches(order, [len(r[0]) for r in rows], batch_size, bucket_step, cap)
  else:
    bucket_of = [buckets[int(np.searchsorted(buckets, len(rows[i][0])))] for i in order]
    batches = _batches(order, bucket_of, batch_size)
  out, longest = [], max((r[2] for r in rows), default=1)
  for chunk, length in batches:
    width = continuation_width(longest, length)
    inputs_BxL = np.zeros((batch_size, length), np.int32)
    positions_BxC = np.zeros((batch_size, width), np.int32)
    targets_BxC = np.zeros((batch_size, width), np.int32)
    mask_BxC = np.zeros((batch_size, width), bool)
    for b, i in enumerate(chunk):
      inputs, targets, cont_len = rows[i]
      inputs_BxL[b, : len(inputs)] = inputs
      start = len(targets) - cont_len
      positions_BxC[b, :cont_len] = np.arange(start, len(targets))
      targets_BxC[b, :cont_len] = targets[start:]
      mask_BxC[b, :cont_len] = True
    out.append(
      ScoringBatch(
        chunk, inputs_BxL, positions_BxC, targets_BxC, mask_BxC, sum(len(rows[i][0]) for i in chunk)
      )
    )
  return out


def loglikelihoods(
  params: Any,
  net: transformer.Transformer,
  requests: Sequence[Request],
  batch_size: int,
  max_len: int = 0,
  bucket_step: int = 0,
  share_prefixes: bool = False,
) -> list[tuple[float, bool]]:
  """(sum of continuation log-probs in nats, is_greedy) per request, in request order.

  `max_len` (0: the model's) caps each request's length, its context left-truncated;
  `bucket_step` > 0 packs batches as `pack_requests` says. `share_prefixes`: rows of
  several requests, each shared prefix run once (shared_prefix.py; batch lengths are
  multiples of `bucket_step`, or of MIN_BUCKET when it is 0).
  One compile per batch shape used; outputs are fetched once, at the end, so the host
  never waits on the device except for a progress line every LOG_EVERY batches.
  """
  cap = scoring_length(net, max_len)
  if share_prefixes:
    rows = [_request_row(c, x, cap) for c, x in requests]
    batches = shared_prefix.pack(rows, batch_size, bucket_step or MIN_BUCKET, cap)
    outputs = _run(
      batches,
      lambda b: score_packed(
        params,
        b.inputs_BxL,
        transformer.Packing(b.positions_BxL, b.groups_BxL, b.branches_BxL),
        b.scored_1xC,
        b.targets_1xC,
        net=net,
      ),
    )
    return shared_prefix.reduce(batches, outputs, len(requests))
  batches = pack_requests(requests, cap, batch_size, bucket_step)
  outputs = _run(
    batches,
    lambda b: score_rows(params, b.inputs_BxL, b.positions_BxC, b.targets_BxC, b.mask_BxC, net=net),
  )
  results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
  for batch, (ll_B, greedy_B) in zip(batches, outputs):
    for b, i in enumerate(batch.requests):
      results[i] = (float(ll_B[b]), bool(greedy_B[b]))
  return results


def _run(batches: Sequence[Any], score: Any) -> list[Any]:
  """score(batch) for every batch, dispatched without waiting; fetched once at the end."""
  pending, t0, tokens = [], time.perf_counter(), 0
  for n, batch in enumerate(batches, start=1):
    pending.append(score(batch))
    tokens += batch.tokens
    if n % LOG_EVERY == 0 or n == len(batches):
      jax.block_until_ready(pending[-1])
      seconds = time.perf_counter() - t0
      logging.info(
        "log-likelihoods: batch %d/%d, %.0f tokens/s, ETA %.0f s",
        n,
        len(batches),
        tokens / seconds,
        seconds * (len(batches) / n - 1),
      )
  return jax.device_get(pending)

"""Batched greedy decoding for the harness's `generate_until`, in the scorer's shapes.

    outs = generate.greedy(params, net, prompts, max_new=32, batch_size=8, cap=2048,
                           eos_id=tok.eos_id, stopped=lambda new_ids: ...)

The net has no KV cache and no padding mask, so each step runs the whole row again:
prompts are right-padded into one fixed (batch_size x bucket) array per batch (the
scorer's power-of-two buckets, long enough for prompt + max_new), the causal mask keeps
padding from reaching earlier positions, and each row's next token is the argmax of the
logits at its own last position. The parameters are a jit argument, so every quantized
variant reuses one executable per bucket. A row stops at eos (not included), when
`stopped(its new tokens)` says so (stop strings: lm_eval's), after max_new tokens, or at
`cap`. Rows are taken longest prompt first, as lm_eval's Collator orders them.

Shape suffixes: B batch, L length, V vocab.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kbit_jax.evals import scoring
from kbit_jax.model import transformer


def _next_tokens(
  params: Any, tokens_BxL: jax.Array, last_B: jax.Array, *, net: transformer.Transformer
) -> jax.Array:
  """Greedy next token of each row: argmax of the logits at position last_B (the first
  index of the maximum, as torch.argmax)."""
  logits_BxLxV = net.apply({"params": params}, tokens_BxL)
  logits_BxV = jnp.take_along_axis(logits_BxLxV, last_B[:, None, None], axis=1)[:, 0]
  return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)


next_tokens = jax.jit(_next_tokens, static_argnames="net")


def _bucket(length: int, cap: int) -> int:
  buckets = scoring.bucket_lengths(cap)
  return buckets[min(int(np.searchsorted(buckets, length)), len(buckets) - 1)]


def greedy(
  params: Any,
  net: transformer.Transformer,
  prompts: Sequence[Sequence[int]],
  max_new: int,
  batch_size: int,
  cap: int,
  eos_id: int,
  stopped: Callable[[list[int]], bool] = lambda ids: False,
) -> list[list[int]]:
  """New tokens of each prompt, in prompt order. Prompts must be 1..cap - 1 tokens."""
  for p in prompts:
    if not 0 < len(p) < cap:
      raise ValueError(f"a prompt of {len(p)} tokens leaves no room to generate (cap {cap})")
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
  out: list[list[int]] = [[] for _ in prompts]
  for start in range(0, len(order), batch_size):
    chunk = order[start : start + batch_size]
    lengths_B = np.zeros(batch_size, np.int32)
    lengths_B[: len(chunk)] = [len(prompts[i]) for i in chunk]
    width = _bucket(min(cap, int(lengths_B.max()) + max_new), cap)
    tokens_BxL = np.zeros((batch_size, width), np.int32)
    for b, i in enumerate(chunk):
      tokens_BxL[b, : lengths_B[b]] = prompts[i]
    active = [True] * len(chunk)
    for _ in range(max_new):
      last_B = np.maximum(lengths_B - 1, 0)
      new_B = np.asarray(jax.device_get(next_tokens(params, tokens_BxL, last_B, net=net)))
      for b, i in enumerate(chunk):
        if not active[b]:
          continue
        token = int(new_B[b])
        if token == eos_id:
          active[b] = False
          continue
        out[i].append(token)
        tokens_BxL[b, lengths_B[b]] = token
        lengths_B[b] += 1
        if lengths_B[b] >= min(cap, width) or stopped(out[i]):
          active[b] = False
      if not any(active):
        break
  return out

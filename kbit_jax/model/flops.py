"""Model FLOPs per token and this machine's measured matmul peak (for MFU)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from kbit_jax.model.presets import Preset


def flops_per_token(
  p: Preset, seq_len: int, training: bool = True, causal_half: bool = False
) -> float:
  """Matmul FLOPs per token: 2 per multiply-add forward, x3 with the backward pass.

  Counts the weight matmuls (including the output head; query and out are D x H*K, key
  and value D x N*K under grouped-query attention, a gated MLP has three D x F kernels)
  and the two attention matmuls (QK^T and PV, H*K wide) over the full LxL square, as
  transformer.py's "einsum" attention computes them; `causal_half` counts only the lower
  triangle (what a causal flash kernel computes, the stricter MFU for attention="cudnn").
  Ignores norms/softmax, and the MLP's gating product.
  """
  d, mlp_kernels = p.d_model, 3 if p.mlp == "gated" else 2
  per_layer = 2 * d * p.q_dim + 2 * d * p.kv_dim + mlp_kernels * d * p.d_ff
  weights = p.num_layers * per_layer + d * p.vocab_size
  attention = p.num_layers * 2 * seq_len * p.q_dim / (2 if causal_half else 1)
  forward = 2 * (weights + attention)
  return 3 * forward if training else forward


def measure_matmul_peak(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
  """Best-of-`repeats` FLOP/s of an n x n x n matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best

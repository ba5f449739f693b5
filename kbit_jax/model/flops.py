"""Model FLOPs per token and the matmul peak MFU is measured against.

`peak_flops(dtype)`: for a 16-bit run on an accelerator in KNOWN_PEAKS, its published
dense bf16 peak per chip (a constant: MFU comparable between runs and machines);
otherwise the best of several matmul timings on this device (train/metrics.py raises it
if a run achieves more, so MFU stays <= 1).
"""

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


# Dense bf16 matmul FLOP/s per chip, by the start of jax's `device_kind` (vendor figures;
# the longest matching prefix wins).
KNOWN_PEAKS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,  # v5e
  "TPU v5": 459e12,  # v5p
  "TPU v6 lite": 918e12,  # v6e (Trillium)
  "NVIDIA A100": 312e12,
  "NVIDIA H100 PCIe": 756e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
}


def known_peak(device_kind: str) -> float | None:
  """The KNOWN_PEAKS entry whose name is the longest prefix of `device_kind`, or None."""
  names = [n for n in KNOWN_PEAKS if device_kind.startswith(n)]
  return KNOWN_PEAKS[max(names, key=len)] if names else None


def peak_flops(dtype: str = "float32", repeats: int = 8) -> float:
  """FLOP/s per device to measure MFU against (see the module docstring)."""
  device = jax.devices()[0]
  if dtype in ("bfloat16", "float16") and device.platform != "cpu":
    known = known_peak(device.device_kind)
    if known:
      return known
  return measure_matmul_peak(jnp.dtype(dtype), repeats=repeats)


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

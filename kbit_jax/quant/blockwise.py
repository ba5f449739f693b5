"""Blockwise absmax quantization with any codebook: quantize, dequantize, fake quant.

A tensor is flattened (row-major) and cut into blocks of B values (the last one padded
with zeros), or taken whole (B = 0), or cut per output channel (B = -1: one block per
column of an (in, out) kernel, i.e. per last-axis index). Each block is divided by its
absolute maximum and each value replaced by the index of the nearest code.

Choices, and why:
- Block constants are stored as float16, rounded *up* to the next float16 (so the block
  maximum normalises to at most 1 and nothing is clipped). float16 rather than bfloat16:
  its relative step is 2^-10 against bfloat16's 2^-7, well under the half gap of every
  codebook next to 1 (int8: 1/254 ~ 2^-8), so the block maximum keeps its +-1 code; the
  range (6e-8 .. 65504) covers any weight block (larger absmax saturates and clips). A
  block whose absmax is under float16's smallest normal (2^-14 ~ 6.1e-5) gets a subnormal
  constant, whose relative step is coarser (1/n at n x 2^-24): the error bound still
  holds, but its maximum may take a code short of +-1, so quantizing the dequantized block
  again can derive a smaller constant (found by tests/test_blockwise.py's hypothesis). The
  fake quant uses the rounded constant, i.e. exactly what would be stored.
- Normalisation and the nearest-code search run in float32: in bfloat16 the normalised
  value can land on the other side of a midpoint.
- Nearest code = searchsorted over the midpoints of the sorted codebook (ties go to the
  lower code). The codebook is an *array argument*, never a static value: padded with
  +inf to 256 entries (`codebooks.padded`) all (k, dtype) share one shape, so one
  compiled function serves every k and data type of a block layout, and data-dependent
  (quantile) codebooks, one per tensor (C,) or one per block (N, C), go through the same
  code. Codes are uint8 indices into that codebook; padding entries are never chosen.
- Double quantization (QLoRA, `double_quant=True`): the float32 block absmaxes minus
  their mean are quantized with the 8-bit dynamic map in blocks of 256 constants, each
  with a float32 absmax (plus one float32 mean per tensor): 8 + 32/256 bits per block.
- Centering (`centered=True`, the `int_centered` type): each block's mean over its real
  values is stored as a second (round-to-nearest) float16 constant and subtracted first.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from kbit_jax.quant import codebooks

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
PER_TENSOR = 0
PER_CHANNEL = -1
SCALE_DTYPE = jnp.float16
SCALE_BITS = 16
DQ_BLOCKSIZE = 256  # constants per second-level block (QLoRA)
DQ_CODE_BITS = 8
DQ_SCALE_BITS = 32
_SCALE_MAX = float(jnp.finfo(SCALE_DTYPE).max)


def check_blocksize(blocksize: int) -> None:
  if blocksize not in BLOCKSIZES + (PER_TENSOR, PER_CHANNEL):
    raise ValueError(
      f"quant.blocksize={blocksize!r} is not allowed; allowed: "
      f"{list(BLOCKSIZES)}, {PER_TENSOR} (per tensor) or {PER_CHANNEL} "
      "(per output channel)"
    )


def num_blocks(shape: Sequence[int], blocksize: int) -> int:
  """Number of absmax constants of a tensor of `shape`."""
  check_blocksize(blocksize)
  if blocksize == PER_TENSOR:
    return 1
  if blocksize == PER_CHANNEL:
    return int(shape[-1]) if len(shape) else 1
  return -(-math.prod(shape) // blocksize)


def to_blocks(w: jax.Array, blocksize: int) -> jax.Array:
  """Any shape -> (N, B) blocks (zero padded); dtype kept."""
  check_blocksize(blocksize)
  if blocksize == PER_TENSOR:
    return w.reshape(1, -1)
  if blocksize == PER_CHANNEL:
    return w.reshape(-1, w.shape[-1] if w.ndim else 1).T
  flat = w.reshape(-1)
  pad = -flat.size % blocksize
  return jnp.pad(flat, (0, pad)).reshape(-1, blocksize)


def from_blocks(x_NxB: jax.Array, shape: Sequence[int], blocksize: int) -> jax.Array:
  """Inverse of `to_blocks`: drops the padding and restores `shape`."""
  shape = tuple(shape)
  if blocksize == PER_CHANNEL:
    return x_NxB.T.reshape(shape)
  return x_NxB.reshape(-1)[: math.prod(shape)].reshape(shape)


def scale_to_16bit(absmax: jax.Array) -> jax.Array:
  """float32 absmax -> the float16 constant stored: the next float16 >= absmax.

  Saturates at float16's max (65504); values beyond then clip to the codebook's ends.
  """
  absmax = jnp.minimum(absmax.astype(jnp.float32), _SCALE_MAX)
  s = absmax.astype(SCALE_DTYPE)
  up = jnp.nextafter(s, jnp.asarray(jnp.inf, SCALE_DTYPE))
  return jnp.where(s.astype(jnp.float32) < absmax, up, s)


def midpoints(codebook_C: jax.Array) -> jax.Array:
  """Decision boundaries between neighbouring codes (last axis); +inf past the last real
  code of a `codebooks.padded` codebook."""
  codebook_C = jnp.asarray(codebook_C, jnp.float32)
  return (codebook_C[..., :-1] + codebook_C[..., 1:]) / 2


def nearest_code(x_NxB: jax.Array, codebook: jax.Array) -> jax.Array:
  """uint8 index of the nearest code for float32 values in [-1, 1].

  `codebook` is (C,) shared by all blocks or (N, C) one per block, sorted, optionally
  +inf padded. A value on a midpoint takes the lower code; where codes repeat (data
  codebooks) the first of the equal codes is chosen.
  """
  mid = midpoints(codebook)
  x_NxB = x_NxB.astype(jnp.float32)
  if mid.ndim == 1:
    idx = jnp.searchsorted(mid, x_NxB.reshape(-1)).reshape(x_NxB.shape)
  else:
    idx = jax.vmap(jnp.searchsorted)(mid, x_NxB)
  return idx.astype(jnp.uint8)


def lookup(codes_NxB: jax.Array, codebook: jax.Array) -> jax.Array:
  """Code values (float32) of uint8 indices; `codebook` (C,) or (N, C)."""
  codebook = jnp.asarray(codebook, jnp.float32)
  idx = codes_NxB.astype(jnp.int32)
  if codebook.ndim == 1:
    return codebook[idx]
  return jnp.take_along_axis(codebook, idx, axis=-1)


def _safe(scale_N: jax.Array) -> jax.Array:
  scale_N = scale_N.astype(jnp.float32)
  return jnp.where(scale_N > 0, scale_N, 1.0)


def double_quantize(absmax_N: jax.Array) -> jax.Array:
  """QLoRA double quantization of block constants; returns them dequantized (float32)."""
  absmax_N = absmax_N.astype(jnp.float32)
  offset = jnp.mean(absmax_N)
  c_MxD = to_blocks(absmax_N - offset, DQ_BLOCKSIZE)
  a_M = jnp.max(jnp.abs(c_MxD), axis=-1)
  dynamic8 = jnp.asarray(codebooks.codebook("dynamic", DQ_CODE_BITS))
  codes_MxD = nearest_code(c_MxD / _safe(a_M)[:, None], dynamic8)
  c_MxD = lookup(codes_MxD, dynamic8) * a_M[:, None]
  # A constant far below the others can come back <= 0; 0 dequantizes its block to 0.
  return jnp.maximum(from_blocks(c_MxD, absmax_N.shape, DQ_BLOCKSIZE) + offset, 0.0)


def _block_scales(x_NxB: jax.Array, double_quant: bool) -> jax.Array:
  absmax_N = jnp.max(jnp.abs(x_NxB), axis=-1)
  return double_quantize(absmax_N) if double_quant else scale_to_16bit(absmax_N)


def _quantize_blocks(x_NxB, codebook, double_quant):
  scales_N = _block_scales(x_NxB, double_quant)
  codes_NxB = nearest_code(x_NxB / _safe(scales_N)[:, None], codebook)
  return codes_NxB, scales_N


def quantize(
  w: jax.Array, codebook: jax.Array, blocksize: int, *, double_quant: bool = False
) -> tuple[jax.Array, jax.Array]:
  """w -> (codes: uint8, w's shape; scales: (num_blocks,) float16, or float32 if
  `double_quant`, then already double-quantized and dequantized)."""
  x_NxB = to_blocks(jnp.asarray(w).astype(jnp.float32), blocksize)
  codes_NxB, scales_N = _quantize_blocks(x_NxB, codebook, double_quant)
  return from_blocks(codes_NxB, w.shape, blocksize), scales_N


def dequantize(
  codes: jax.Array, scales_N: jax.Array, codebook: jax.Array, shape: Sequence[int], blocksize: int
) -> jax.Array:
  """(codes, scales) -> float32 tensor of `shape`."""
  codes_NxB = to_blocks(codes.reshape(tuple(shape)), blocksize)
  x_NxB = lookup(codes_NxB, codebook) * scales_N.astype(jnp.float32)[:, None]
  return from_blocks(x_NxB, shape, blocksize)


def fake_quant(
  w: jax.Array,
  codebook: jax.Array,
  blocksize: int,
  *,
  centered: bool = False,
  double_quant: bool = False,
) -> jax.Array:
  """dequantize(quantize(w)) in w's dtype; jittable with `codebook` traced."""
  x_NxB = to_blocks(jnp.asarray(w).astype(jnp.float32), blocksize)
  mean_N = jnp.zeros(x_NxB.shape[:1], jnp.float32)
  if centered:
    valid_NxB = to_blocks(jnp.ones(w.shape, bool), blocksize)
    mean_N = jnp.sum(x_NxB, axis=-1) / jnp.sum(valid_NxB, axis=-1)
    mean_N = mean_N.astype(SCALE_DTYPE).astype(jnp.float32)
    x_NxB = jnp.where(valid_NxB, x_NxB - mean_N[:, None], 0.0)
  codes_NxB, scales_N = _quantize_blocks(x_NxB, codebook, double_quant)
  y_NxB = lookup(codes_NxB, codebook) * scales_N.astype(jnp.float32)[:, None]
  return from_blocks(y_NxB + mean_N[:, None], w.shape, blocksize).astype(w.dtype)


def normalized(w: jax.Array, blocksize: int) -> jax.Array:
  """w divided blockwise by its stored (float16) absmax: float32 in [-1, 1], w's shape.

  What a quantile codebook is estimated from (`to_blocks` of it for one per block).
  """
  x_NxB = to_blocks(jnp.asarray(w).astype(jnp.float32), blocksize)
  x_NxB = x_NxB / _safe(_block_scales(x_NxB, False))[:, None]
  return from_blocks(x_NxB, w.shape, blocksize)

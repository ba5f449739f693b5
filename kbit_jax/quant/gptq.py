"""GPTQ (Frantar et al. 2022, arXiv 2210.17323) with the study's blockwise data types.

GPTQ quantizes a linear layer's weights one input feature at a time and spreads each
feature's rounding error over the features not yet quantized, using the inverse of the
layer's input Hessian H = 2/n sum_x x x^T (`calibration.py`), so that the output error
||(W - W_hat)^T X||^2 on calibration inputs X is small. It follows the reference
implementation (IST-DASLab/gptq, `gptq.py` `fasterquant`):
- dead inputs (H_ii == 0: never non-zero on calibration data) get H_ii = 1 and their
  weights zeroed;
- dampening H + lambda I, lambda = percdamp * mean(diag H), percdamp = 0.01 by default;
- U = the upper Cholesky factor of H^-1 (H^-1 = U^T U); the error of feature j is
  (w_j - q_j) / U_jj and feature l > j is updated by -err_j U_jl;
- features are processed in blocks of at most 128 (equal widths, e.g. 2 x 80 for K = 160)
  with lazy batch updates: the features after a block receive its errors in one matmul;
- optional act-order: features in order of descending H_ii.

The quantizer is RTN's (`reference.fake_quant_tensor(kernel=True)`) with its constants
held fixed: each value keeps the block absmax (float16 rounded up, or double-quantized),
the block mean (int_centered) and the codebook (estimated from the tensor for quantile)
that RTN computes from the original weights, and GPTQ only chooses the code of each
value. That is the reference's `static_groups=True`, for every block size. Why static
scales everywhere:
- when K % B != 0 a block of the study's layout runs across two output units (blocks cut
  the row-major flattening of the (out, in) weights), so it is not a contiguous group of
  input features and its absmax cannot be taken from the updated weights when GPTQ
  reaches it; per-tensor and per-channel scales (B = 0, -1) are static in the reference
  too, and double quantization and the quantile codebook need every block at once;
- act-order permutes the features, and only static constants keep the stored layout;
- one rule for every shape, so a method comparison across block sizes is not confounded
  by some layers getting dynamic scales and others not.
The cost: updated weights beyond their block's original absmax are clipped to the
codebook's end codes. Stored, the result is exactly RTN's layout (uint8 codes into the
same codebook, the same constants), so `bits.py` accounting is unchanged; with H a
positive multiple of I (no error feedback) it equals RTN bit for bit: RTN as grid.py runs
it, jitted. (Eager `reference.fake_quant_tensor` can differ from the jitted one by a
float32 ulp for int_centered and quantile: under jit XLA fuses code * scale + mean.)

Outlier rows (`outliers.py`, input features kept in 16 bits) are features whose
quantizer is the identity: they take no error and absorb the error of earlier features.

`quantize_kernel` is jitted per (kernel shape, block layout) with the codebook, the
Hessian, percdamp and act-order as array arguments: one compile serves every k and data
type of a layout and shape; quantile's codebook is estimated beforehand by a small
function compiled per k (`data_codebook`).
Everything is float32, the lazy-batch matmul at HIGHEST precision (TPU and GPU would
otherwise use bfloat16 / TF32 passes; the reference turns TF32 off).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from kbit_jax.quant import blockwise, codebooks, outliers, reference
from kbit_jax.quant.spec import QuantSpec

PERCDAMP = 0.01  # the reference's default dampening, a share of mean(diag H)
BLOCK_COLUMNS = 128  # the reference's lazy-batch block of input features
_HIGHEST = jax.lax.Precision.HIGHEST


def check_percdamp(percdamp: float) -> None:
  if not isinstance(percdamp, (int, float)) or isinstance(percdamp, bool) or not percdamp > 0:
    raise ValueError(
      f"gptq percdamp={percdamp!r} is not allowed; allowed: a number > 0 "
      f"(share of mean(diag H) added to the diagonal; reference: {PERCDAMP})"
    )


def _safe(scale: jax.Array) -> jax.Array:
  return jnp.where(scale > 0, scale, 1.0)


def _blocked(w_KxN: jax.Array, keep_K: jax.Array, blocksize: int) -> tuple[jax.Array, jax.Array]:
  """(x, keep) in the layout fake_quant_tensor(kernel=True) cuts into blocks: (N, K), or
  (K, N) per output channel; kept rows zeroed as outliers.split_rows does."""
  w_KxN = outliers.split_rows(jnp.asarray(w_KxN, jnp.float32), keep_K)
  keep_KxN = jnp.broadcast_to(keep_K[:, None], w_KxN.shape)
  if blocksize == blockwise.PER_CHANNEL:
    return w_KxN, keep_KxN
  return w_KxN.T, keep_KxN.T


@functools.partial(jax.jit, static_argnums=1)
def data_codebook(w_KxN: jax.Array, spec: QuantSpec, keep_K: jax.Array) -> jax.Array:
  """The padded quantile codebook RTN estimates from w (kept rows left out)."""
  x, keep = _blocked(w_KxN, keep_K, spec.blocksize)
  values = jnp.where(keep, jnp.nan, blockwise.normalized(x, spec.blocksize))
  return codebooks.padded(codebooks.quantile_codebook(values.reshape(-1), spec.bits))


@functools.partial(jax.jit, static_argnums=2)
def _live_data_codebook(w_KxN: jax.Array, h_KxK: jax.Array, spec: QuantSpec, keep_K: jax.Array):
  """data_codebook of w with its dead inputs zeroed: one compile per (shape, k)."""
  return data_codebook(dead_zeroed(w_KxN, h_KxK), spec, keep_K)


def static_constants(
  w_KxN: jax.Array, spec: QuantSpec, keep_K: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """RTN's block constants of every value, in GPTQ's (out, in) orientation.

  Returns (scale_NxK, mean_NxK): what `reference.fake_quant_tensor(w, spec, keep_K,
  kernel=True)` divides by and subtracts; the same steps as `blockwise.fake_quant`, kept
  as per-value arrays so that GPTQ can round updated weights with them.
  """
  x, _ = _blocked(w_KxN, keep_K, spec.blocksize)
  x_NxB = blockwise.to_blocks(x, spec.blocksize)
  mean_N = jnp.zeros(x_NxB.shape[:1], jnp.float32)
  if spec.centered:
    valid_NxB = blockwise.to_blocks(jnp.ones(x.shape, bool), spec.blocksize)
    mean_N = jnp.sum(x_NxB, axis=-1) / jnp.sum(valid_NxB, axis=-1)
    mean_N = mean_N.astype(blockwise.SCALE_DTYPE).astype(jnp.float32)
    x_NxB = jnp.where(valid_NxB, x_NxB - mean_N[:, None], 0.0)
  absmax_N = jnp.max(jnp.abs(x_NxB), axis=-1)
  scale_N = (
    blockwise.double_quantize(absmax_N) if spec.double_quant else blockwise.scale_to_16bit(absmax_N)
  ).astype(jnp.float32)

  def per_value(v_N):
    return blockwise.from_blocks(
      jnp.broadcast_to(v_N[:, None], x_NxB.shape), x.shape, spec.blocksize
    )

  scale, mean = per_value(scale_N), per_value(mean_N)
  if spec.blocksize == blockwise.PER_CHANNEL:
    return scale.T, mean.T
  return scale, mean


def _quantize_column(w_N, scale_N, mean_N, codebook_C):
  """The value nearest to each weight on its block's fixed grid (as blockwise.fake_quant)."""
  codes_N = blockwise.nearest_code((w_N - mean_N) / _safe(scale_N), codebook_C)
  return blockwise.lookup(codes_N, codebook_C) * scale_N + mean_N


def inverse_cholesky(h_KxK: jax.Array, percdamp: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(U, ok): the upper Cholesky factor of (H + lambda I)^-1, lambda = percdamp *
  mean(diag H); ok is False where a factorisation failed (H not positive definite)."""
  eye = jnp.eye(h_KxK.shape[0], dtype=jnp.float32)
  h_KxK = h_KxK + percdamp * jnp.mean(jnp.diagonal(h_KxK)) * eye
  lower_KxK = jnp.linalg.cholesky(h_KxK)
  hinv_KxK = jax.scipy.linalg.cho_solve((lower_KxK, True), eye)
  u_KxK = jnp.linalg.cholesky(hinv_KxK).T
  ok = jnp.all(jnp.isfinite(u_KxK)) & jnp.all(jnp.diagonal(u_KxK) > 0)
  return u_KxK, ok


def _error_feedback(w_NxK, scale_NxK, mean_NxK, keep_K, u_KxK, codebook_C, block_columns):
  """GPTQ's loop over features with lazy batch updates; returns the quantized weights."""
  n, k = w_NxK.shape
  # Equal blocks of at most block_columns features: padding stays under one per block.
  blocks = -(-k // block_columns)
  width = -(-k // blocks)
  pad = blocks * width - k
  # Padding features are kept (identity quantizer: zero error) and uncoupled (U = I there).
  w_NxK = jnp.pad(w_NxK, ((0, 0), (0, pad)))
  scale_NxK = jnp.pad(scale_NxK, ((0, 0), (0, pad)), constant_values=1.0)
  mean_NxK = jnp.pad(mean_NxK, ((0, 0), (0, pad)))
  keep_K = jnp.pad(keep_K, (0, pad), constant_values=True)
  u_KxK = jax.scipy.linalg.block_diag(u_KxK, jnp.eye(pad, dtype=jnp.float32))
  columns = k + pad

  def cut(a, i, axis=1):
    return jax.lax.dynamic_slice_in_dim(a, i, width, axis)

  def block_step(b, carry):
    w_NxK, q_NxK = carry
    i1 = b * width
    s1, m1, keep1 = cut(scale_NxK, i1), cut(mean_NxK, i1), cut(keep_K, i1, 0)
    u1 = cut(cut(u_KxK, i1, 0), i1)

    def column_step(i, c):
      w1, q1, err1 = c
      w_N = w1[:, i]
      q_N = jnp.where(keep1[i], w_N, _quantize_column(w_N, s1[:, i], m1[:, i], codebook_C))
      err_N = (w_N - q_N) / u1[i, i]
      # u1 is upper triangular: only features i.. of the block change.
      w1 = w1 - err_N[:, None] * u1[i][None, :]
      return w1, q1.at[:, i].set(q_N), err1.at[:, i].set(err_N)

    zeros = jnp.zeros((n, width), jnp.float32)
    _, q1, err1 = jax.lax.fori_loop(0, width, column_step, (cut(w_NxK, i1), zeros, zeros))
    u_rows_WxK = cut(u_KxK, i1, 0)
    later_K = jnp.arange(columns) >= i1 + width
    update = jnp.where(later_K, jnp.matmul(err1, u_rows_WxK, precision=_HIGHEST), 0.0)
    return w_NxK - update, jax.lax.dynamic_update_slice_in_dim(q_NxK, q1, i1, axis=1)

  _, q_NxK = jax.lax.fori_loop(0, blocks, block_step, (w_NxK, jnp.zeros_like(w_NxK)))
  return q_NxK[:, :k]


def dead_zeroed(w_KxN: jax.Array, h_KxK: jax.Array) -> jax.Array:
  """w (float32) with the rows of dead inputs (H_ii == 0: never non-zero on the
  calibration data) zeroed, as the reference."""
  dead_K = jnp.diagonal(h_KxK) == 0
  return jnp.where(dead_K[:, None], 0.0, jnp.asarray(w_KxN, jnp.float32))


@functools.partial(jax.jit, static_argnames=("spec", "block_columns"))
def _gptq(w_KxN, h_KxK, codebook_C, keep_K, percdamp, act_order, *, spec, block_columns):
  h_KxK = jnp.asarray(h_KxK, jnp.float32)
  w_KxN_f32 = dead_zeroed(w_KxN, h_KxK)
  h_KxK = jnp.where(jnp.diag(jnp.diagonal(h_KxK) == 0), 1.0, h_KxK)
  scale_NxK, mean_NxK = static_constants(w_KxN_f32, spec, keep_K)
  w_NxK = w_KxN_f32.T
  # act_order is traced (the identity permutation when off): one compile serves both.
  perm_K = jnp.where(
    act_order, jnp.argsort(-jnp.diagonal(h_KxK), stable=True), jnp.arange(h_KxK.shape[0])
  )
  h_KxK = h_KxK[perm_K][:, perm_K]
  w_NxK, scale_NxK, mean_NxK = (a[:, perm_K] for a in (w_NxK, scale_NxK, mean_NxK))
  u_KxK, ok = inverse_cholesky(h_KxK, percdamp)
  q_NxK = _error_feedback(
    w_NxK, scale_NxK, mean_NxK, keep_K[perm_K], u_KxK, codebook_C, block_columns
  )
  return q_NxK[:, jnp.argsort(perm_K)].T.astype(w_KxN.dtype), ok


def quantize_kernel(
  w_KxN: jax.Array,
  h_KxK: jax.Array,
  spec: QuantSpec,
  keep_K: jax.Array | None = None,
  *,
  percdamp: float = PERCDAMP,
  act_order: bool = False,
  block_columns: int = BLOCK_COLUMNS,
  name: str = "kernel",
) -> jax.Array:
  """GPTQ of one (in, out) kernel with its input Hessian h_KxK (`KernelStats.h_KxK`).

  Returns the dequantized weights (w's shape and dtype); `keep_K` marks input features
  kept in 16 bits (`reference.outlier_masks`). Raises ValueError naming `name` if H is not
  positive definite after dampening.
  """
  check_percdamp(percdamp)
  if not spec.quantized:
    raise ValueError(
      f"quant.bits={spec.bits}: GPTQ needs a quantized spec; allowed: {list(codebooks.BITS)}"
    )
  if w_KxN.ndim != 2 or tuple(h_KxK.shape) != (w_KxN.shape[0],) * 2:
    raise ValueError(
      f"{name}: a kernel (K, N) needs a (K, K) Hessian; got kernel "
      f"{tuple(w_KxN.shape)}, Hessian {tuple(h_KxK.shape)}"
    )
  if not isinstance(block_columns, int) or block_columns < 1:
    raise ValueError(
      f"gptq block_columns={block_columns!r} is not allowed; allowed: an "
      f"int >= 1 (reference: {BLOCK_COLUMNS})"
    )
  keep_K = jnp.zeros(w_KxN.shape[:1], bool) if keep_K is None else jnp.asarray(keep_K)
  layout, codebook_C = reference.layout_spec(spec), reference.spec_codebook(spec)
  if spec.data_dependent:
    # The codebook is estimated first and passed in: GPTQ itself then compiles once per
    # block layout for every k and type (quantile has no centering or double quant).
    codebook_C = _live_data_codebook(w_KxN, jnp.asarray(h_KxK), spec, keep_K)
    layout = reference.layout_spec(dataclasses.replace(spec, dtype="int"))
  # Device arrays throughout: a numpy argument in place of a jax one recompiles.
  q_KxN, ok = _gptq(
    w_KxN,
    jnp.asarray(h_KxK),
    jnp.asarray(codebook_C),
    keep_K,
    jnp.float32(percdamp),
    jnp.bool_(act_order),
    spec=layout,
    block_columns=block_columns,
  )
  if not bool(ok):
    raise ValueError(
      f"GPTQ: the Hessian of {name} is not positive definite after "
      f"dampening (percdamp={percdamp}); its calibration statistics are "
      "broken (NaN/inf) or it is not a Gram matrix"
    )
  return q_KxN

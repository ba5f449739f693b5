"""AQT building blocks for k-bit weights: codebook numerics, absmax blocks, the weight quantizer.

`aqt.py` injects these into `AqtDotGeneral`; this file holds the numerics, which must agree
with the pure-jnp reference (`blockwise.py`) value for value:

- `CodebookNumerics`: an `AqtNumerics` whose codes are a sorted codebook in [-1, 1] (a
  static tuple) or, for `quantile`, the SRAM quantiles of the values it is given. Nearest
  code = `blockwise.nearest_code` (searchsorted over midpoints, ties to the lower code),
  backward = straight-through. Used for float, dynamic, nf and quantile: the study's
  float (bitsandbytes' `create_fp8_map`, subnormals 4x closer to zero than IEEE) is not
  AQT's `FpNumerics`, so it is a codebook too.
- int / int_centered use AQT's own `IntSymmetric(preserve_zero, preserve_max_val)`, whose
  levels j / (2^(k-1) - 1) are `codebooks.codebook('int', k)`; its qvalues are integers.
- `BlockTiling`: the block layout as an AQT `TilingState` on the weight's `QTensor`, so
  `QTensor.dequant()` (AQT's fake-quant, `DequantMode.THIS_INPUT`) turns (blocks, B)
  codes x scales back into the (in, out) kernel. AQT's own tiling only splits axes; a
  block layout with padding or a transpose needs `apply`/`unapply` of its own.
- `BlockwiseWeightQuantizer`: the `DotGeneralQuantizer` of a weight matmul. The left side
  (activations) keeps AQT's quantizer (per-token absmax int, or none); the right side is
  the (in, out) kernel, quantized blockwise by a fixed layout whatever the dimension
  numbers, so the backward pass (`cfg.dlhs`, which contracts the kernel's other axis)
  re-quantizes it identically and input gradients see the quantized weights.

Block layouts (B values per block, one float16 constant each, as `blockwise.py`):
- `flat` (blockwise.py today): the (in, out) kernel flattened row-major, so a block is B
  consecutive *output* units of one input row (padded at the end).
- `contraction`: the kernel flattened with the input axis fastest, i.e. the study's own
  grouping (PyTorch stores (out, in) and bitsandbytes flattens that): a block is B
  consecutive *input* weights of one output unit, AQT's natural subchannel layout (the
  only one an int matmul with output-side scales could use). Per channel (B = -1) is the
  same in both: one constant per output column.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from aqt.jax.v2 import aqt_dot_general, aqt_quantizer, aqt_tensor, tiled_dot_general, utils
from aqt.jax.v2.numerics import int_numerics, numerics

from kbit_jax.quant import blockwise, codebooks

LAYOUTS = ("flat", "contraction")
F32 = jnp.float32


def _straight_through(grad):
  return (grad, None)


@utils.flax_slots_kw_only_dataclass
class CodebookNumerics(numerics.AqtNumerics):
  """Nearest code of a sorted normalised codebook; `codes=()` means SRAM quantiles."""

  bits: int = utils.static_field()
  codes: tuple[float, ...] = utils.static_field(default=())

  def get_dtype(self):
    return None  # qvalues are code values (float32): QTensor.dequant needs them

  def get_quant_bound(self):
    return 1.0

  def codebook(self, normalized: jax.Array) -> jax.Array:
    """(C,) float32 codes; from `normalized`'s values if data-dependent."""
    if self.codes:
      return jnp.asarray(self.codes, F32)
    return codebooks.quantile_codebook(normalized.reshape(-1), self.bits)

  def encode(self, normalized: jax.Array, codebook_C: jax.Array) -> jax.Array:
    return blockwise.nearest_code(normalized, codebook_C)

  def decode(self, codes: jax.Array, codebook_C: jax.Array) -> jax.Array:
    return blockwise.lookup(codes, codebook_C)

  def vjp_fwd(self, x, context):
    del context
    codebook_C = self.codebook(x)
    return self.decode(self.encode(x, codebook_C), codebook_C).astype(x.dtype), None

  def vjp_bwd(self, res, grad):
    return _straight_through(grad)


def int_numerics_for(bits: int) -> int_numerics.IntSymmetric:
  """AQT's symmetric int with levels j / (2^(k-1) - 1), |j| <= 2^(k-1) - 1."""
  return int_numerics.IntSymmetric(
    bits=bits,
    preserve_zero=True,
    preserve_max_val=True,
    clip=True,
    round=True,
    noise_fn=None,
    clip_gradient=False,
    dtype=jnp.int8,
  )


def int_offset(num: int_numerics.IntSymmetric) -> int:
  """qb = 2^(k-1) - 1: int value j is code index j + qb of `codebook('int', k)`."""
  return int(num.get_quant_bound())


@dataclasses.dataclass(slots=True, eq=False)
class BlockTiling(tiled_dot_general.TilingState):
  """(in, out) kernel <-> (num_blocks, B) blocks, in the `flat` or `contraction` layout.

  Per channel (B = -1) and per tensor (B = 0) are the blocks of `blockwise.to_blocks`
  too: (out, in) and (1, in * out). Compared and hashed by (shape, B, layout): it is
  static pytree metadata of the QTensor (AQT's TilingState is unhashable).
  """

  blocksize: int = 0
  layout: str = "flat"

  def __post_init__(self):
    tiled_dot_general.TilingState.__post_init__(self)
    self.tiled_shape = [self.num_blocks, self.block_len]

  def _key(self) -> tuple:
    return (tuple(self.untiled_shape), self.blocksize, self.layout)

  def __eq__(self, other) -> bool:
    return isinstance(other, BlockTiling) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  @property
  def _transposed(self) -> bool:
    return self.layout == "contraction" or self.blocksize == blockwise.PER_CHANNEL

  @property
  def _size(self) -> int:
    return math.prod(self.untiled_shape)

  @property
  def block_len(self) -> int:
    if self.blocksize == blockwise.PER_TENSOR:
      return self._size
    if self.blocksize == blockwise.PER_CHANNEL:
      return self.untiled_shape[0]
    return self.blocksize

  @property
  def num_blocks(self) -> int:
    return -(-self._size // self.block_len)

  @property
  def padded(self) -> bool:
    return self.num_blocks * self.block_len != self._size

  def apply(self, x_KxN: jax.Array) -> jax.Array:
    x = x_KxN.T if self._transposed else x_KxN
    flat = x.reshape(-1)
    if self.padded:
      flat = jnp.pad(flat, (0, self.num_blocks * self.block_len - self._size))
    return flat.reshape(self.num_blocks, self.block_len)

  def unapply(self, x_NBxB: jax.Array) -> jax.Array:
    K, N = self.untiled_shape
    x = x_NBxB.reshape(-1)[: self._size]
    return x.reshape(N, K).T if self._transposed else x.reshape(K, N)


def block_tiling(shape: tuple[int, ...], blocksize: int, layout: str) -> BlockTiling:
  if len(shape) != 2:
    raise ValueError(f"k-bit AQT weights must be (in, out) kernels; got shape {shape}")
  if layout not in LAYOUTS:
    raise ValueError(f"block layout={layout!r} is unknown; allowed: {list(LAYOUTS)}")
  blockwise.check_blocksize(blocksize)
  return BlockTiling(untiled_shape=tuple(shape), blocksize=blocksize, layout=layout)


@utils.flax_slots_kw_only_dataclass
class BlockwiseWeightQuantizer(aqt_dot_general.DefaultDotGeneralQuantizer):
  """lhs: AQT's activation quantizer; rhs: the (in, out) kernel, blockwise absmax.

  `rhs.numerics` is `CodebookNumerics` or AQT's `IntSymmetric`; `rhs.calibration` is
  unused (blocks are computed here, as `blockwise._block_scales`: float16 absmax rounded
  up, or QLoRA double quantization).
  """

  blocksize: int = utils.static_field(default=64)
  layout: str = utils.static_field(default="flat")
  centered: bool = utils.static_field(default=False)
  double_quant: bool = utils.static_field(default=False)

  @property
  def is_int(self) -> bool:
    return isinstance(self.rhs.numerics, int_numerics.IntSymmetric)

  def calibrate(self, lhs, rhs, dimension_numbers, lhs_mode, rhs_mode):
    (lhs_ca, _), _ = dimension_numbers
    lhs_qt = self.lhs.calibrate(lhs, calibration_axes=lhs_ca)
    return (lhs, lhs_qt), (rhs, self.calibrate_weight(rhs))

  def block_constants(self, w_KxN: jax.Array) -> tuple[BlockTiling, jax.Array, jax.Array | None]:
    """(layout, absmax per block as stored: float16 rounded up or double-quantized,
    block mean (float16) if centered), as `blockwise.fake_quant` computes them."""
    tiling = block_tiling(w_KxN.shape, self.blocksize, self.layout)
    x_NxB = tiling.apply(w_KxN.astype(F32))
    mean_Nx1 = None
    if self.centered:
      valid_NxB = tiling.apply(jnp.ones(w_KxN.shape, bool))
      mean_N = jnp.sum(x_NxB, axis=-1) / jnp.sum(valid_NxB, axis=-1)
      mean_Nx1 = mean_N.astype(blockwise.SCALE_DTYPE)[:, None]
      x_NxB = jnp.where(valid_NxB, x_NxB - mean_Nx1.astype(F32), 0.0)
    absmax_N = jnp.max(jnp.abs(x_NxB), axis=-1)
    scale_N = (
      blockwise.double_quantize(absmax_N)
      if self.double_quant
      else blockwise.scale_to_16bit(absmax_N)
    )
    return tiling, scale_N[:, None], mean_Nx1

  def qtensor(
    self, tiling: BlockTiling, scale_Nx1: jax.Array, mean_Nx1: jax.Array | None, dtype
  ) -> aqt_tensor.QTensor:
    """QTensor without qvalue; dequant = qvalue * scale + mean (AQT: q * s - bias)."""
    scale_Nx1 = scale_Nx1.astype(F32)
    scale_Nx1 = jnp.where(scale_Nx1 > 0, scale_Nx1, 1.0)
    if self.is_int:  # AQT's int qvalue is j, not j / qb
      scale_Nx1 = scale_Nx1 / self.rhs.numerics.get_quant_bound()
    bias = [] if mean_Nx1 is None else [-mean_Nx1.astype(F32)]
    return aqt_tensor.QTensor(
      qvalue=None,
      scale=[scale_Nx1],
      scale_t=None,
      bias=bias,
      dequant_dtype=dtype,
      tiling_state=tiling,
    )

  def calibrate_weight(self, w_KxN: jax.Array) -> aqt_tensor.QTensor:
    return self.qtensor(*self.block_constants(w_KxN), w_KxN.dtype)

  def encode_weight(
    self, w_KxN: jax.Array, qt: aqt_tensor.QTensor
  ) -> tuple[jax.Array, jax.Array | None]:
    """(uint8 code indices (blocks, B), data-dependent codebook or None)."""
    if self.is_int:  # AQT's own arithmetic: (w + bias) * (1 / scale), round, clip
      j_NxB, _ = self.rhs.numerics.vjp_fwd(qt.quant(w_KxN.astype(F32)).qvalue, self.rhs.context)
      return (j_NxB + int_offset(self.rhs.numerics)).astype(jnp.uint8), None
    # blockwise.py's arithmetic: (w - mean) / scale, nearest code over midpoints.
    x_NxB = qt.tiling_state.apply(w_KxN.astype(F32))
    for b in qt.bias:
      x_NxB = x_NxB + b
    x_NxB = x_NxB / qt.scale[0]
    num = self.rhs.numerics
    codebook_C = num.codebook(qt.tiling_state.unapply(x_NxB))  # padding excluded
    return num.encode(x_NxB, codebook_C), (None if num.codes else codebook_C)

  def qvalue(self, codes_NxB: jax.Array, codebook_C: jax.Array | None) -> jax.Array:
    """Code indices -> QTensor.qvalue: int8 j for int, float32 code values otherwise."""
    if self.is_int:
      return codes_NxB.astype(jnp.int8) - int_offset(self.rhs.numerics)
    num = self.rhs.numerics
    return num.decode(codes_NxB, jnp.asarray(num.codes, F32) if num.codes else codebook_C)

  def calculate_qvalue(self, lhs, lhs_qt, rhs, rhs_qt):
    lhs_qt, lhs_grad = self.lhs.calculate_qvalue(lhs, lhs_qt)
    rhs_qt = rhs_qt.replace(qvalue=self.qvalue(*self.encode_weight(rhs, rhs_qt)))
    return (lhs_qt, lhs_grad), (rhs_qt, jax.tree_util.Partial(_straight_through))

  def swap_lhs_and_rhs(self) -> None:
    raise NotImplementedError(
      "BlockwiseWeightQuantizer quantizes nn.Dense kernels (rhs); "
      "AqtEinsum operand swapping is not supported"
    )


def weight_quantizer(
  numerics_: numerics.AqtNumerics,
  lhs: aqt_quantizer.Quantizer,
  blocksize: int,
  layout: str,
  centered: bool,
  double_quant: bool,
) -> BlockwiseWeightQuantizer:

  def none():
    return aqt_quantizer.quantizer_make(None, initialize_calibration=False)

  rhs = aqt_quantizer.Quantizer(
    numerics=numerics_,
    calib_shared_axes=None,
    scale_stop_grad=True,
    calibration=None,
    context=utils.Context(key=None, train_step=None),
  )
  return BlockwiseWeightQuantizer(
    lhs=lhs,
    rhs=rhs,
    lhs_mid=none(),
    rhs_mid=none(),
    blocksize=blocksize,
    layout=layout,
    centered=centered,
    double_quant=double_quant,
  )

"""k-bit matmuls through AQT v2: the model's injected dot_general, PTQ convert/serve, QAT.

`make_dot_general_cls(spec)` returns the factory `model.Transformer(dot_general_cls=...)`
takes; every targeted `nn.Dense` then runs `AqtDotGeneral` with an AQT config whose
weight side is `aqt_numerics.BlockwiseWeightQuantizer` (blockwise absmax, one float16
constant per block) with AQT's `IntSymmetric` (int, int_centered) or a codebook numerics
(float, dynamic, nf, quantile), and whose input side is AQT's per-token absmax int
quantizer when `spec.act_bits < 16` (weights-only otherwise, as in the study). Blocks
follow `layout`: "contraction" (default, the study's grouping: it flattened PyTorch's
(out, in) weights, so a block is B consecutive inputs of one output unit; the same as
`reference.fake_quant_params`) or "flat" (B consecutive values of our row-major (in, out)
kernel, i.e. `blockwise.fake_quant(w)`); see `aqt_numerics`.

Modes (`QuantMode`):
- TRAIN: quantize on the fly; gradients are straight-through. `cfg.dlhs` re-quantizes the
  kernel with the same layout, so input gradients use the quantized weights, and the
  weight gradient is x^T g (STE). This is QAT (`spec.mode == "qat"`) and also the PTQ
  forward on float params.
- CONVERT: `convert(params, preset, spec)` runs the model once (a 1x1 token batch) and
  writes, per quantized kernel, collection `aqt`: `codes` (uint8 code indices in the
  (blocks, B) layout, two per byte when k <= 4, so 3-bit codes take 4 bits; for int the
  index is j + 2^(k-1) - 1), `scale` (float16 per block; float32 = already
  double-quantized with `double_quant`), `mean` (float16, int_centered) and `codebook`
  (float32, quantile). The float kernels are dropped from `params`.
- SERVE: `serve_apply` rebuilds each kernel's QTensor from that storage and hands it to
  `AqtDotGeneral(rhs_qtensor=...)`; it equals TRAIN exactly. `nn.Dense` still declares
  its `kernel`, so a broadcast zero stands in for it (free under jit, never read).

Why not AQT's Freezer: it stores QTensor.qvalue as the numerics returns it (code *values*
for a codebook, a byte per int4 on CPU) with per-channel `scale_t`; packed indices, block
layouts and data-dependent codebooks need storage of our own.

Blockwise is done at the quantizer (quantize -> dequantize the kernel, then one plain
matmul, AQT's `DequantMode.THIS_INPUT`), not with `AqtDotGeneral(tiling_fn=...)`: tiling
the contraction axis into K/B tiles makes the dot_general batched over tiles and writes a
(K/B)x larger output before summing it (`benchmarks/quant_overhead.py` times both on a
768x3072 matmul: the tiled form is 6-10x slower than float on CPU, the quantizer-level
form within noise of float), and AQT calibrates tiles along the contraction axis only, so
it cannot express the `flat` layout, whose blocks run along the output axis. For PTQ
evaluation the study's method, dequantize once and run the float model, is
`dequantize_params`; SERVE decodes every kernel on every step (memory-bound on CPU).

Limits: `outlier_share > 0` (needs the previous layer's weights) and target `embed` (a
lookup, not a matmul) raise here; use `reference.fake_quant_params`. Under a bfloat16
compute dtype `nn.Dense` casts the kernel before the dot_general, so TRAIN quantizes the
bfloat16 weights; `convert` always quantizes the float32 parameters.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from aqt.jax.v2 import aqt_dot_general, aqt_tensor
from aqt.jax.v2 import config as aqt_config
from aqt.jax.v2.flax import aqt_flax
from aqt.jax.v2.utils import QuantMode
from flax import traverse_util

from kbit_jax.model.presets import Preset
from kbit_jax.model.transformer import Transformer
from kbit_jax.quant import aqt_numerics
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec, target_of

__all__ = [
  "QuantMode",
  "make_aqt_config",
  "make_dot_general_cls",
  "convert",
  "serve_apply",
  "dequantize_params",
  "stored_bytes",
  "KbitDotGeneral",
]

COLLECTION = "aqt"
THIS_INPUT = aqt_dot_general.DequantMode.THIS_INPUT


def _check_supported(spec: QuantSpec) -> None:
  if spec.quantized and spec.outlier_share > 0:
    raise ValueError(
      f"quant.outlier_share={spec.outlier_share} is not supported on the AQT "
      "path (proxy outliers need the previous layer's weights); allowed: 0.0, "
      "or use reference.fake_quant_params"
    )
  if spec.quantized and "embed" in spec.targets:
    raise ValueError(
      f"quant.targets={','.join(spec.targets)!r}: 'embed' is a lookup, not "
      "a matmul, so the AQT path cannot quantize it; allowed here: "
      "attn, mlp, head"
    )


def weight_numerics(spec: QuantSpec):
  """AQT's IntSymmetric for int types, a CodebookNumerics for every other type."""
  if spec.dtype in ("int", "int_centered"):
    return aqt_numerics.int_numerics_for(spec.bits)
  codes = () if spec.data_dependent else tuple(float(c) for c in spec.codebook())
  return aqt_numerics.CodebookNumerics(bits=spec.bits, codes=codes)


def make_aqt_config(spec: QuantSpec, layout: str = "contraction") -> aqt_dot_general.DotGeneral:
  """AQT config of one targeted matmul: lhs = inputs (B..., K), rhs = kernel (K, N)."""
  _check_supported(spec)
  if layout not in aqt_numerics.LAYOUTS:
    raise ValueError(f"block layout={layout!r} is unknown; allowed: {list(aqt_numerics.LAYOUTS)}")
  act_bits = None if spec.act_bits == UNQUANTIZED_BITS else spec.act_bits
  cfg = aqt_config.dot_general_make(lhs_bits=act_bits, rhs_bits=None)
  cfg.fwd.dg_accumulator_dtype = None  # the matmul itself is a float matmul
  if act_bits is not None:
    cfg.fwd.lhs.dequant_mode = THIS_INPUT
  if spec.quantized:
    for raw in (cfg.fwd, cfg.dlhs):  # dlhs: g @ quantized(W)^T
      raw.dg_quantizer = aqt_numerics.weight_quantizer(
        weight_numerics(spec),
        raw.dg_quantizer.lhs,
        spec.blocksize,
        layout,
        spec.centered,
        spec.double_quant,
      )
      raw.rhs.dequant_mode = THIS_INPUT
  return cfg


def _storage_names(spec: QuantSpec) -> tuple[str, ...]:
  return (
    ("codes", "scale")
    + (("mean",) if spec.centered else ())
    + (("codebook",) if spec.data_dependent else ())
  )


def _pack_axis(shape: tuple[int, int]) -> int:
  return 1 if shape[0] % 2 and not shape[1] % 2 else 0


def _pack(codes_NxB: jax.Array, bits: int) -> jax.Array:
  """uint8 codes (blocks, B) -> two 4-bit codes per byte when k <= 4, else unchanged.

  The first half of the rows (of the columns if the rows are odd and the columns not)
  takes the low nibble, the second half the high one: unpacking is then one
  concatenate, which XLA fuses with the dequantization at full speed (interleaving
  neighbouring codes made the decode ~10x slower on CPU).
  """
  if bits > 4:
    return codes_NxB
  axis = _pack_axis(codes_NxB.shape)
  pad = [(0, 0), (0, 0)]
  pad[axis] = (0, codes_NxB.shape[axis] % 2)
  low, high = jnp.split(jnp.pad(codes_NxB, pad), 2, axis=axis)
  return low | (high << 4)


def _unpack(stored: jax.Array, bits: int, shape: tuple[int, int]) -> jax.Array:
  if bits > 4:
    return stored
  codes = jnp.concatenate([stored & 0xF, stored >> 4], axis=_pack_axis(shape))
  return codes[: shape[0], : shape[1]]


def encode(
  quantizer: aqt_numerics.BlockwiseWeightQuantizer, w_KxN: jax.Array, bits: int
) -> dict[str, jax.Array]:
  """(in, out) kernel -> its packed storage (see the module docstring)."""
  tiling, scale_Nx1, mean_Nx1 = quantizer.block_constants(w_KxN)
  qt = quantizer.qtensor(tiling, scale_Nx1, mean_Nx1, w_KxN.dtype)
  codes_NxB, codebook_C = quantizer.encode_weight(w_KxN, qt)
  stored = dict(codes=_pack(codes_NxB, bits), scale=scale_Nx1)
  if mean_Nx1 is not None:
    stored["mean"] = mean_Nx1
  if codebook_C is not None:
    stored["codebook"] = codebook_C
  return stored


def decode(
  quantizer: aqt_numerics.BlockwiseWeightQuantizer,
  stored: dict[str, jax.Array],
  shape: tuple[int, ...],
  dtype: Any,
  bits: int,
) -> aqt_tensor.QTensor:
  """Packed storage -> the full QTensor that TRAIN mode computes for the same kernel."""
  tiling = aqt_numerics.block_tiling(shape, quantizer.blocksize, quantizer.layout)
  qt = quantizer.qtensor(tiling, stored["scale"], stored.get("mean"), dtype)
  codes_NxB = _unpack(stored["codes"], bits, tuple(tiling.tiled_shape))
  return qt.replace(qvalue=quantizer.qvalue(codes_NxB, stored.get("codebook")))


class KbitDotGeneral(nn.Module):
  """`nn.Dense(dot_general_cls=...)` for k-bit weights; untargeted layers stay float."""

  spec: QuantSpec
  mode: QuantMode = QuantMode.TRAIN
  layout: str = "contraction"

  def _targeted(self) -> bool:
    names = tuple(self.path[:-1]) + ("kernel",)  # this module sits inside its nn.Dense
    return target_of(names) in self.spec.targets

  @nn.compact
  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    if not self._targeted():
      return jax.lax.dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
      )
    spec, cfg = self.spec, make_aqt_config(self.spec, self.layout)
    rhs_qtensor = None
    if spec.quantized and self.mode in (QuantMode.CONVERT, QuantMode.SERVE):
      quantizer = cfg.fwd.dg_quantizer
      if self.mode == QuantMode.CONVERT:
        for name, value in encode(quantizer, rhs, spec.bits).items():
          self.put_variable(COLLECTION, name, value)
      stored = {n: self.get_variable(COLLECTION, n) for n in _storage_names(spec)}
      rhs_qtensor = decode(quantizer, stored, rhs.shape, rhs.dtype, spec.bits)
    dot_general = aqt_flax.AqtDotGeneral(
      cfg,
      prng_name=None,
      rhs_apply_quant_mode=rhs_qtensor is None,
      rhs_qtensor=rhs_qtensor,
      use_legacy_freezer=False,
      name="aqt",
    )
    return dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)


def make_dot_general_cls(
  spec: QuantSpec, mode: QuantMode = QuantMode.TRAIN, layout: str = "contraction"
) -> Callable[[], nn.Module] | None:
  """Factory for `Transformer(dot_general_cls=...)`; None when nothing is quantized."""
  if not spec.quantized and spec.act_bits == UNQUANTIZED_BITS:
    return None
  make_aqt_config(spec, layout)  # validate now, not at trace time
  return functools.partial(KbitDotGeneral, spec=spec, mode=mode, layout=layout)


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(nn.meta.unbox(tree))


def _kernel_paths(aqt_vars: Any) -> set[tuple[str, ...]]:
  """aqt/<dense path>/KbitDotGeneral_0/<name> -> params/<dense path>/kernel."""
  return {path[:-2] + ("kernel",) for path in _flat(aqt_vars)}


@functools.partial(jax.jit, static_argnames=("preset", "spec", "layout"))
def convert(params: Any, preset: Preset, spec: QuantSpec, layout: str = "contraction") -> dict:
  """Float params -> {"params": params less the quantized kernels, "aqt": their storage}."""
  model = Transformer(
    preset, jnp.float32, dot_general_cls=make_dot_general_cls(spec, QuantMode.CONVERT, layout)
  )
  params = nn.meta.unbox(params)
  _, state = model.apply({"params": params}, jnp.zeros((1, 1), jnp.int32), mutable=[COLLECTION])
  aqt_vars = state.get(COLLECTION, {})
  dropped = _kernel_paths(aqt_vars)
  kept = {p: v for p, v in _flat(params).items() if p not in dropped}
  return {"params": traverse_util.unflatten_dict(kept), COLLECTION: aqt_vars}


def _float_params(qparams: dict, preset: Preset, fill: Callable) -> Any:
  """qparams["params"] with each dropped kernel restored as fill(kernel path, shape)."""
  shapes = jax.eval_shape(
    lambda: Transformer(preset).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
  )["params"]
  have = _flat(qparams["params"])
  full = {p: have[p] if p in have else fill(p, s.shape) for p, s in _flat(shapes).items()}
  return traverse_util.unflatten_dict(full)


@functools.partial(jax.jit, static_argnames=("preset", "spec", "dtype", "layout"))
def serve_apply(
  qparams: dict,
  tokens_BxL: jax.Array,
  preset: Preset,
  spec: QuantSpec,
  dtype: Any = jnp.float32,
  layout: str = "contraction",
) -> jax.Array:
  """Logits from converted params; the kernels are decoded inside every matmul."""
  model = Transformer(
    preset, dtype, dot_general_cls=make_dot_general_cls(spec, QuantMode.SERVE, layout)
  )

  def placeholder(path, shape):
    return jnp.broadcast_to(jnp.zeros((), jnp.float32), shape)

  params = _float_params(qparams, preset, placeholder)
  return model.apply({"params": params, COLLECTION: qparams[COLLECTION]}, tokens_BxL)


@functools.partial(jax.jit, static_argnames=("preset", "spec", "layout"))
def dequantize_params(
  qparams: dict, preset: Preset, spec: QuantSpec, layout: str = "contraction"
) -> Any:
  """Converted params -> float32 params (the study's PTQ eval: dequantize once)."""
  quantizer = make_aqt_config(spec, layout).fwd.dg_quantizer
  stored = {}
  for path, value in _flat(qparams[COLLECTION]).items():
    stored.setdefault(path[:-2] + ("kernel",), {})[path[-1]] = value

  def dequant(path, shape):
    return decode(quantizer, stored[path], shape, jnp.float32, spec.bits).dequant()

  return _float_params(qparams, preset, dequant)


def stored_bytes(qparams: dict) -> dict[str, int]:
  """Measured bytes (sum of nbytes): quantized storage, float params, total."""

  def nbytes(tree):
    return sum(int(x.nbytes) for x in jax.tree_util.tree_leaves(tree))

  quantized, other = nbytes(qparams.get(COLLECTION, {})), nbytes(qparams["params"])
  return dict(quantized=quantized, float=other, total=quantized + other)

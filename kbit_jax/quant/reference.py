"""Pure-jnp fake quantization of a whole params tree: the reference k-bit path.

Every targeted kernel (see `spec.target_of`) is replaced by dequantize(quantize(w)):
blockwise absmax with the spec's codebook, optional double quantization, centering and
16-bit outlier rows. Everything else is returned unchanged. `jax.jit(fake_quant_params,
static_argnums=1)` compiles it; with `layout_spec(spec)` as the static spec and
`spec_codebook(spec)` as a traced argument, one compiled function serves every
(k, data-free dtype) with the same blocksize, targets and outlier share; `compile_args(spec)`
also makes a data-dependent type's k an argument, so one compile serves every k of it too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kbit_jax.quant import blockwise, codebooks, outliers
from kbit_jax.quant.spec import (
  UNQUANTIZED_BITS,
  QuantSpec,
  is_quantized,
  named_leaves,
  reboxed,
  unboxed,
)


def spec_codebook(spec: QuantSpec) -> np.ndarray | None:
  """The spec's data-free codebook padded to CODEBOOK_SIZE with +inf (as
  `codebooks.padded`), in numpy: an eager jnp pad would compile once per codebook
  length, i.e. per k. None for data-dependent types (their codes come from the tensor)."""
  if spec.data_dependent:
    return None
  codes = np.asarray(spec.codebook(), np.float32)
  return np.pad(codes, (0, codebooks.CODEBOOK_SIZE - len(codes)), constant_values=np.inf)


def layout_spec(spec: QuantSpec) -> QuantSpec:
  """`spec` with what only the codebook depends on (k, data-free dtype) made canonical,
  and act_bits at 16 (the weights' quantizer does not depend on it).

  `fake_quant_params(params, layout_spec(s), spec_codebook(s))` equals
  `fake_quant_params(params, s)` for a data-free `s`, so one compiled function serves
  every (k, data type) of a block layout; `quantile` stays as it is.
  """
  if spec.data_dependent or not spec.quantized:
    return dataclasses.replace(spec, act_bits=UNQUANTIZED_BITS)
  dtype = "int_centered" if spec.centered else "nf" if spec.double_quant else "int"
  return QuantSpec(
    bits=max(codebooks.BITS),
    dtype=dtype,
    blocksize=spec.blocksize,
    outlier_share=spec.outlier_share,
    double_quant=spec.double_quant,
    targets=spec.targets,
    mode=spec.mode,
  )


def compile_args(spec: QuantSpec) -> tuple[QuantSpec, np.ndarray | None, np.ndarray]:
  """(static spec, codebook, k) for `fake_quant_params(params, *compile_args(s))`, which
  computes `fake_quant_params(params, s)`: `layout_spec` and `spec_codebook`, and for a
  data-dependent type (quantile) its k canonical in the static spec and passed as the
  traced `data_bits`, so one compiled function serves every k of a layout
  (codebooks.quantile_codebook_padded; equal within 1 ulp, tests/test_blockwise.py)."""
  layout = layout_spec(spec)
  if spec.data_dependent and spec.quantized:
    layout = dataclasses.replace(layout, bits=max(codebooks.BITS))
  return layout, spec_codebook(spec), np.int32(spec.bits)


def _data_codebook(w: jax.Array, spec: QuantSpec, keep: jax.Array | None, bits) -> jax.Array:
  x = blockwise.normalized(w, spec.blocksize)
  if keep is not None:
    x = jnp.where(keep, jnp.nan, x)  # values kept in 16 bits are not part of the data
  return codebooks.quantile_codebook_padded(x.reshape(-1), spec.bits if bits is None else bits)


def fake_quant_tensor(
  w: jax.Array,
  spec: QuantSpec,
  keep_R: jax.Array | None = None,
  codebook_C: jax.Array | None = None,
  *,
  kernel: bool = False,
  data_bits: jax.Array | None = None,
) -> jax.Array:
  """Fake-quantizes one tensor; rows where `keep_R` is True stay exact (16-bit).

  `kernel=True` for a matmul kernel stored (in, out): its blocks then run along the input
  axis of each output unit, as in the study, which flattened PyTorch's (out, in) weights
  (the "contraction" layout of `aqt.py`). Per-channel scales (B = -1) are per output
  column either way. Other tensors are flattened as stored. `data_bits` (traced)
  replaces spec.bits for a data-dependent type's codes (`compile_args`).
  """
  quantized = w if keep_R is None else outliers.split_rows(w, keep_R)
  keep = None if keep_R is None else jnp.broadcast_to(keep_R[:, None], w.shape)
  transpose = kernel and spec.blocksize != blockwise.PER_CHANNEL  # columns either way
  if transpose:
    quantized, keep = quantized.T, (None if keep is None else keep.T)
  if spec.data_dependent:
    codebook_C = _data_codebook(quantized, spec, keep, data_bits)
  elif codebook_C is None:
    codebook_C = spec_codebook(spec)
  quantized = blockwise.fake_quant(
    quantized, codebook_C, spec.blocksize, centered=spec.centered, double_quant=spec.double_quant
  )
  quantized = quantized.T if transpose else quantized
  return quantized if keep_R is None else outliers.merge_rows(w, quantized, keep_R)


def _num_layers(names: list[tuple[str, ...]]) -> int:
  return len({n[0] for n in names if n[0].startswith("layer_")})


def outlier_masks(params: Any, spec: QuantSpec) -> dict[tuple[str, ...], jax.Array]:
  """Name -> rows kept in 16 bits, for every quantized tensor that has a proxy source."""
  names, leaves, _ = named_leaves(params)
  if spec.outlier_share == 0.0:
    return {}
  values = {n: unboxed(leaf) for n, leaf in zip(names, leaves)}
  outliers.check_proxy_shapes(
    {n: v.shape for n, v in values.items()},
    spec.outlier_share,
    {n: is_quantized(n, spec) for n in names},
  )
  masks = {}
  for n in names:
    source = outliers.proxy_source(n, _num_layers(names))
    if not is_quantized(n, spec) or source not in values:
      continue
    w = values[n]
    masks[n] = outliers.outlier_rows(
      outliers.proxy_std(values[source]), outliers.num_outliers(w.shape[0], spec.outlier_share)
    )
  return masks


def fake_quant_params(
  params: Any, spec: QuantSpec, codebook_C: jax.Array | None = None, data_bits=None
) -> Any:
  """params -> params with every targeted kernel fake-quantized (same tree and dtypes);
  `data_bits`: a data-dependent type's k as a traced argument (`compile_args`)."""
  if not spec.quantized:
    return params
  names, leaves, treedef = named_leaves(params)
  masks = outlier_masks(params, spec)  # from the unquantized weights
  out = []
  for n, leaf in zip(names, leaves):
    if is_quantized(n, spec):
      leaf = reboxed(
        leaf,
        fake_quant_tensor(
          unboxed(leaf),
          spec,
          masks.get(n),
          codebook_C,
          kernel=n[-1] == "kernel",
          data_bits=data_bits,
        ),
      )
    out.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, out)

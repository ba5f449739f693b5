"""Quantize a whole params tree with a method: RTN, GPTQ or AWQ.

`quantize_params(params, spec, method, calibration)` returns the params tree with every
kernel `spec` targets replaced by its dequantized weights under the method, and every
other leaf (and the tree, the dtypes, the shardings, the flax boxes) as it came in:
- "rtn": round to nearest, `reference.fake_quant_params` exactly as grid.py's
  CellEvaluator runs it (jitted, `reference.compile_args`: the layout static, the
  codebook and a quantile cell's k arguments);
- "gptq": `gptq.quantize_kernel` of each kernel with its Hessian;
- "awq": `awq.quantize_kernels`, per-input-channel scales searched per group.
Every method stores its result in RTN's layout (codes, constants), and outlier rows come
from the float weights' proxies as in RTN. GPTQ and AWQ are defined for every data type
of `codebooks.DTYPES` (with centering, double quantization and outlier rows) and need
calibration statistics (`calibration.py`). The `embed` target: a tied embedding is also
the head's matmul and is quantized as the head kernel E^T with the head input's
statistics (calibration.kernel_view; not per output channel, B = -1, whose blocks differ
between E and E^T); an untied embedding is a lookup with no matmul input statistics, so
a spec targeting it is refused. AWQ with activation bits < 16 is refused: the scale
folds into the layer before, so the activation quantizer would have to see x / s, and
the fake-quantized tree (original parametrisation) gives it x.
`quantize_sequential` calibrates block by block on the quantized prefix (calibration.py's
sequential mode). Every argument is checked (ValueError naming it) before any compile.
"""

from __future__ import annotations

from typing import Any

import jax

from kbit_jax.model.presets import Preset
from kbit_jax.model.transformer import Transformer
from kbit_jax.quant import awq, blockwise, calibration, gptq, reference
from kbit_jax.quant.calibration import kernel_view
from kbit_jax.quant.spec import (
  UNQUANTIZED_BITS,
  QuantSpec,
  is_quantized,
  named_leaves,
  reboxed,
  unboxed,
)

METHODS = ("rtn", "gptq", "awq")
CALIBRATED = ("gptq", "awq")  # need calibration statistics

_rtn = jax.jit(reference.fake_quant_params, static_argnums=1)


def check_method(
  method: str,
  spec: QuantSpec,
  *,
  preset: Preset | None = None,
  percdamp: float = gptq.PERCDAMP,
  grid: int = awq.GRID,
) -> None:
  """Raises ValueError for an unknown method or one that cannot serve `spec`."""
  if method not in METHODS:
    raise ValueError(f"quant method={method!r} is unknown; allowed: {list(METHODS)}")
  if method == "gptq":
    gptq.check_percdamp(percdamp)
  if method == "awq":
    awq.check_grid(grid)
    if preset is None:
      raise ValueError(
        "quant method='awq' needs the model's preset (its architecture "
        "decides which scales fold); got preset=None"
      )
  if method not in CALIBRATED or not spec.quantized:
    return
  if "embed" in spec.targets:
    if preset is None or not preset.tie_embeddings:
      why = (
        "the preset is needed to tell whether the embedding is tied"
        if preset is None
        else "the model's embedding is untied: a lookup with no matmul input statistics"
      )
      raise ValueError(
        f"quant.targets={','.join(spec.targets)!r} with method={method!r}: "
        f"{why}; allowed: 'embed' with a tied embedding (the head's matmul), "
        "targets from ['attn', 'mlp', 'head'], or method='rtn'"
      )
    if spec.blocksize == blockwise.PER_CHANNEL:
      raise ValueError(
        f"quant.blocksize=-1 with method={method!r} and target 'embed': per-channel "
        "constants of the embedding table (per column of E) are not per output "
        "channel of the head kernel E^T that GPTQ and AWQ quantize; allowed: "
        "blocksize in "
        f"{list(blockwise.BLOCKSIZES)} or 0, targets without 'embed', or method='rtn'"
      )
  if method == "awq" and spec.act_bits != UNQUANTIZED_BITS:
    raise ValueError(
      f"quant method='awq' with act_bits={spec.act_bits}: not defined here (the "
      "activation quantizer would see the unscaled inputs x, not x / s); allowed: "
      f"act_bits={UNQUANTIZED_BITS}, or method 'rtn' or 'gptq'"
    )


def quantized_kernels(params: Any, spec: QuantSpec) -> list[tuple[str, ...]]:
  names, _, _ = named_leaves(params)
  return [n for n in names if is_quantized(n, spec)]


def _check_calibration(
  params: Any, calib: calibration.Calibration | None, names: list[tuple[str, ...]]
) -> None:
  if calib is None or calib.sequences == 0:
    raise ValueError(
      f"calibration with {0 if calib is None else calib.sequences} "
      "sequences; allowed: statistics of at least one calibration sequence "
      "(calibration.calibrate)"
    )
  shapes = {n: unboxed(leaf).shape for n, leaf in zip(*named_leaves(params)[:2])}
  missing = ["/".join(n) for n in names if n not in calib.kernels]
  if missing:
    raise ValueError(
      f"calibration has no statistics for {missing}; allowed: a "
      "calibration of this model (it records every attn/mlp/head kernel)"
    )
  for n in names:
    k = calibration.in_features(n, shapes[n])
    stats = calib.kernels[n]
    if tuple(stats.h_KxK.shape) != (k, k) or tuple(stats.mean_abs_K.shape) != (k,):
      raise ValueError(
        f"calibration statistics of {'/'.join(n)} have shapes "
        f"{tuple(stats.h_KxK.shape)}, {tuple(stats.mean_abs_K.shape)}; "
        f"allowed: ({k}, {k}), ({k},) for its kernel {tuple(shapes[n])}"
      )


def _like(old: Any, new: jax.Array) -> jax.Array:
  """`new` with the dtype and (for a jax array) the sharding of `old`. Moved only if the
  sharding differs: device_put also commits an array, and a committed argument in place
  of an uncommitted one recompiles whatever takes the tree next."""
  new = new.astype(old.dtype)
  if isinstance(old, jax.Array) and new.sharding != old.sharding:
    return jax.device_put(new, old.sharding)
  return new


def _quantize_stage(
  params: Any,
  spec: QuantSpec,
  method: str,
  calib: calibration.Calibration,
  names: list[tuple[str, ...]],
  masks: dict[tuple[str, ...], jax.Array],
  preset: Preset | None,
  percdamp: float,
  act_order: bool,
  grid: int,
) -> Any:
  """params with the kernels `names` quantized by `method`; other leaves untouched."""
  all_names, leaves, treedef = named_leaves(params)
  values = {n: unboxed(leaf) for n, leaf in zip(all_names, leaves)}
  if method == "gptq":
    done = {
      n: gptq.quantize_kernel(
        kernel_view(n, values[n]),
        calib.kernels[n].h_KxK,
        spec,
        masks.get(n),
        percdamp=percdamp,
        act_order=act_order,
        name="/".join(n),
      )
      for n in names
    }
  else:
    kernels = {n: kernel_view(n, v) for n, v in values.items()}
    done, _ = awq.quantize_kernels(kernels, calib.kernels, spec, preset, masks, names, grid)
  done = {n: kernel_view(n, w) for n, w in done.items()}
  out = [
    reboxed(leaf, _like(values[n], done[n])) if n in done else leaf
    for n, leaf in zip(all_names, leaves)
  ]
  return jax.tree_util.tree_unflatten(treedef, out)


def quantize_params(
  params: Any,
  spec: QuantSpec,
  method: str = "rtn",
  calib: calibration.Calibration | None = None,
  *,
  preset: Preset | None = None,
  percdamp: float = gptq.PERCDAMP,
  act_order: bool = False,
  grid: int = awq.GRID,
) -> Any:
  """params with every kernel `spec` targets quantized by `method` (see the docstring).

  `calib`: statistics of the float model (calibration.calibrate) for gptq and awq;
  `preset`: the model's architecture (awq); `percdamp`, `act_order`: GPTQ's dampening and
  feature order; `grid`: AWQ's number of alphas.
  """
  check_method(method, spec, preset=preset, percdamp=percdamp, grid=grid)
  if method == "rtn":
    if not spec.quantized:
      return params
    out = _rtn(params, *reference.compile_args(spec))
    return jax.tree.map(_like, params, out)
  if not spec.quantized:
    return params
  names = quantized_kernels(params, spec)
  _check_calibration(params, calib, names)
  return _quantize_stage(
    params,
    spec,
    method,
    calib,
    names,
    reference.outlier_masks(params, spec),
    preset,
    percdamp,
    act_order,
    grid,
  )


def quantize_sequential(
  model: Transformer,
  params: Any,
  spec: QuantSpec,
  method: str,
  tokens: Any,
  *,
  percdamp: float = gptq.PERCDAMP,
  act_order: bool = False,
  grid: int = awq.GRID,
) -> tuple[Any, calibration.Calibration]:
  """(quantized params, statistics used): block i calibrated on the outputs of the
  quantized blocks < i (calibration.calibrate_sequential); outlier rows still come from
  the float weights."""
  check_method(method, spec, preset=model.p, percdamp=percdamp, grid=grid)
  if method not in CALIBRATED:
    raise ValueError(
      f"quant method={method!r} takes no calibration; allowed here: "
      f"{list(CALIBRATED)} (rtn: quantize_params)"
    )
  calibration.check_tokens(tokens)
  if not spec.quantized:
    return params, calibration.calibrate(model, params, tokens)
  masks = reference.outlier_masks(params, spec)
  targeted = set(quantized_kernels(params, spec))

  def stage(stage_params, calib, names):
    names = [n for n in names if n in targeted]
    return _quantize_stage(
      stage_params, spec, method, calib, names, masks, model.p, percdamp, act_order, grid
    )

  return calibration.calibrate_sequential(model, params, tokens, stage)

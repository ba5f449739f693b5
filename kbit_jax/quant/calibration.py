"""Calibration statistics of every targetable kernel, recorded by an injected dot_general.

GPTQ and AWQ need, per kernel (in, out) = (K, N), statistics of its inputs x (rows of the
(tokens, K) matrix the matmul contracts) over n calibration tokens:
- h_KxK = 2/n sum_x x x^T (float32): GPTQ's Hessian of the layer's squared output error.
  It also scores any weight change: sum_x ||dW^T x||^2 = n/2 sum_out dw^T H dw, which is
  what AWQ's scale search minimises (awq.py). The reference divides by the number of
  sequences rather than tokens; both methods are invariant to H's scale.
- mean_abs_K = 1/n sum_x |x|: AWQ's per-input-channel activation magnitude.

They are recorded without forking the model: `RecordingDotGeneral` is the
`nn.Dense(dot_general_cls=...)` of every matmul (model.py injects it); for kernels named
by `spec.target_of` as attn, mlp or head it `sow`s x^T x and sum |x| into the collection
`calibration` and returns the plain float matmul. The pass is one jitted function with
params and tokens as arguments and a `lax.scan` over the token batches, so it compiles
once per (model, batch shape). x^T x is accumulated in float32 at HIGHEST precision.
Statistics are recorded for every attn/mlp/head kernel whatever a spec targets, so one
record serves every cell of a model. A tied embedding (`embed/embedding`, (V, D)) is also
the output head's matmul (`nn.Embed.attend`, which takes no dot_general): its statistics
are those of the head's input, recorded by intercepting `attend`, and GPTQ and AWQ treat
it as the head kernel (D, V) = E^T (`kernel_view`); the lookup's error is not part of
their objective. An untied embedding is a lookup only and has no statistics.

Two modes:
- fast (`calibrate`): statistics of the float model, one forward pass over the
  calibration tokens plus the x^T x products (2 K^2 flops per token per kernel), computed
  once per model and reused by every cell. Memory: every kernel's K x K Hessian at once,
  4 bytes x (5 D^2 + F^2) per layer (+ D^2 for an untied head): 69 MB for s7, 45 GB for
  pythia-6.9b. query, key and value read the same input, so two of their three Hessians
  are copies; kept so that every kernel's statistics stand alone.
- sequential (`calibrate_sequential`, the GPTQ reference's default): block i's kernels are
  calibrated on the outputs of blocks < i already quantized (the head after all of them),
  then quantized before block i + 1 is calibrated; within a block all kernels see the
  float block (the reference's default, not its `true-sequential` option). Each stage is
  the same jitted full pass (no recompile) with the blocks before it quantized, so it
  costs L + 1 fast passes (L blocks, + 1 for an untied head), i.e. about (L + 1) / 2 times
  the work of the reference's block-by-block propagation, plus each stage's quantization;
  and its statistics depend on the method and the spec, so they are per cell, not per
  model. Memory as in the fast mode.

Choosing the calibration data (config keys, the corpus's train split, overlap checks) is
for the caller: here tokens come in as an int array (batches, sequences, length).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kbit_jax.model.transformer import Transformer
from kbit_jax.quant.spec import target_of

COLLECTION = "calibration"
RECORDED = ("attn", "mlp", "head")  # targets that are matmuls (embed is a lookup)
EMBED = ("embed", "embedding")  # tied: also the head's matmul (attend), recorded too
MODES = ("fast", "sequential")
_HIGHEST = jax.lax.Precision.HIGHEST
_LAYER = re.compile(r"layer_(\d+)$")


class KernelStats(NamedTuple):
  """Input statistics of one (K, N) kernel over the calibration tokens."""

  h_KxK: jax.Array  # 2/n sum x x^T, float32
  mean_abs_K: jax.Array  # 1/n sum |x|, float32


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Statistics of every recorded kernel (names as `spec.named_leaves` gives them)."""

  kernels: dict[tuple[str, ...], KernelStats]
  sequences: int
  tokens: int
  mode: str


def in_features(name: tuple[str, ...], shape: tuple[int, ...]) -> int:
  """K, the contracted width of a recorded tensor: a kernel's rows, a tied embedding's
  columns (the head multiplies by E^T)."""
  return shape[1] if tuple(name) == EMBED else shape[0]


def kernel_view(name: tuple[str, ...], w: Any) -> Any:
  """The (K, N) matmul kernel of a recorded tensor: itself, or a tied embedding's E^T
  (its own inverse: kernel_view(name, kernel_view(name, w)) is w). Quantized as a kernel
  (kernel=True), E^T has the blocks of E quantized as an embedding table (rows of D),
  except per output channel (B = -1), which methods.check_method refuses for it."""
  return w.T if tuple(name) == EMBED else w


def _record(module: nn.Module, x: jax.Array) -> None:
  """Sows x^T x and sum |x| of the matmul input x (..., K) into COLLECTION."""
  x_TxK = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  xtx_KxK = jnp.matmul(x_TxK.T, x_TxK, precision=_HIGHEST)
  module.sow(COLLECTION, "xtx", xtx_KxK, init_fn=lambda: 0, reduce_fn=operator.add)
  module.sow(
    COLLECTION,
    "abs_sum",
    jnp.sum(jnp.abs(x_TxK), axis=0),
    init_fn=lambda: 0,
    reduce_fn=operator.add,
  )


def _record_attend(next_fun, args, kwargs, context):
  """nn.intercept_methods hook: records the input of a tied head (nn.Embed.attend)."""
  if isinstance(context.module, nn.Embed) and context.method_name == "attend":
    _record(context.module, args[0])
  return next_fun(*args, **kwargs)


class RecordingDotGeneral(nn.Module):
  """`nn.Dense(dot_general_cls=RecordingDotGeneral)`: a float matmul that records its input."""

  @nn.compact
  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    names = tuple(self.path[:-1]) + ("kernel",)  # this module sits inside its nn.Dense
    (contract, _), _ = dimension_numbers
    if target_of(names) in RECORDED:
      if tuple(contract) != (lhs.ndim - 1,):
        raise ValueError(
          f"{'/'.join(names)}: recording needs the input's last axis "
          f"contracted, as nn.Dense does; got dimension numbers "
          f"{dimension_numbers}"
        )
      _record(self, lhs)
    return jax.lax.dot_general(
      lhs,
      rhs,
      dimension_numbers,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )


def check_tokens(tokens: Any) -> np.ndarray | jax.Array:
  """(batches, B, L) int tokens; a (B, L) array is one batch. Raises before any compile."""
  shape = tuple(np.shape(tokens))
  if len(shape) == 2:
    tokens = tokens[None]
    shape = (1,) + shape
  dtype = getattr(tokens, "dtype", np.asarray(tokens).dtype)
  if len(shape) != 3 or not np.issubdtype(dtype, np.integer):
    raise ValueError(
      f"calibration tokens of shape {shape} and dtype {dtype} are not "
      "allowed; allowed: int tokens (batches, sequences, length) or "
      "(sequences, length)"
    )
  if shape[0] * shape[1] == 0 or shape[2] == 0:
    raise ValueError(
      f"calibration tokens of shape {shape} hold {shape[0] * shape[1]} "
      f"sequences of length {shape[2]}; allowed: at least one sequence of "
      "at least one token"
    )
  return tokens


def recording_net(model: Transformer) -> Transformer:
  """The float net with every matmul recording its inputs."""
  if model.dot_general_cls is not None:
    raise ValueError(
      f"calibration records the float model; got a Transformer with "
      f"dot_general_cls={model.dot_general_cls!r}; allowed: None"
    )
  if model.scan_layers:
    raise ValueError(
      "calibration needs the unrolled net (one tree per layer); got "
      "scan_layers=True; allowed: False (see model.unstack_layers)"
    )
  return model.clone(dot_general_cls=RecordingDotGeneral, remat=False)


def _variables(params: Any) -> dict[str, Any]:
  return params if isinstance(params, dict) and "params" in params else {"params": params}


def row_sharded(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
  """A statistic's layout on `mesh`: a K x K matrix split along its rows over all the
  mesh's devices when their number divides K, anything else replicated."""
  if len(shape) == 2 and shape[0] % mesh.size == 0:
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names), None))
  return NamedSharding(mesh, PartitionSpec())


@functools.partial(jax.jit, static_argnums=(0, 3))
def _sums(net: Transformer, params: Any, tokens_SxBxL: jax.Array, mesh: Mesh | None = None) -> Any:
  """The `calibration` collection summed over the batches: xtx and abs_sum per kernel;
  with a `mesh`, accumulated and returned in `row_sharded` layouts."""
  variables = _variables(params)

  def record(tokens_BxL):
    with nn.intercept_methods(_record_attend):
      return net.apply(variables, tokens_BxL, mutable=[COLLECTION])[1]

  def laid_out(tree):
    if mesh is None:
      return tree
    return jax.tree.map(
      lambda x: jax.lax.with_sharding_constraint(x, row_sharded(mesh, x.shape)), tree
    )

  shapes = jax.eval_shape(record, tokens_SxBxL[0])
  init = laid_out(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))

  def step(acc, tokens_BxL):
    return (laid_out(jax.tree.map(jnp.add, acc, record(tokens_BxL))), None)

  sums, _ = jax.lax.scan(step, init, tokens_SxBxL)
  return sums[COLLECTION]


def _by_kernel(sums: Any) -> dict[tuple[str, ...], dict[str, Any]]:
  """The collection's leaves <dense path>/RecordingDotGeneral_0/<stat> by kernel name."""
  by_kernel: dict[tuple[str, ...], dict[str, Any]] = {}
  for path, value in jax.tree_util.tree_flatten_with_path(sums)[0]:
    keys = tuple(k.key for k in path)
    name = EMBED if keys[:-1] == EMBED[:1] else keys[:-2] + ("kernel",)  # embed/<stat>
    by_kernel.setdefault(name, {})[keys[-1]] = value
  return by_kernel


def _stats(sums: Any, tokens: int) -> dict[tuple[str, ...], KernelStats]:
  """Per kernel name: sums -> (2/n x^T x, 1/n sum |x|)."""
  return {
    n: KernelStats(
      h_KxK=v["xtx"] * np.float32(2.0 / tokens), mean_abs_K=v["abs_sum"] / np.float32(tokens)
    )
    for n, v in _by_kernel(sums).items()
  }


def calibrate(
  model: Transformer, params: Any, tokens: Any, out_sharding: Mesh | None = None
) -> Calibration:
  """Fast mode: statistics of the float model on `tokens` (batches, B, L); with
  `out_sharding` (a mesh, e.g. the evaluation mesh the params live on) each K x K
  statistic is accumulated split along its rows over the mesh (`row_sharded`)."""
  tokens = check_tokens(tokens)
  net = recording_net(model)
  s, b, length = tokens.shape
  sums = _sums(net, params, jnp.asarray(tokens, jnp.int32), out_sharding)
  return Calibration(
    _stats(sums, s * b * length), sequences=s * b, tokens=s * b * length, mode="fast"
  )


def stages(names: list[tuple[str, ...]]) -> list[list[tuple[str, ...]]]:
  """Recorded kernel names in calibration order: one list per block, then the head."""
  blocks: dict[int, list[tuple[str, ...]]] = {}
  rest = []
  for n in names:
    match = _LAYER.match(n[0])
    if match:
      blocks.setdefault(int(match.group(1)), []).append(n)
    else:
      rest.append(n)
  return [blocks[i] for i in sorted(blocks)] + ([rest] if rest else [])


QuantizeStage = Callable[[Any, Calibration, list[tuple[str, ...]]], Any]


def calibrate_sequential(
  model: Transformer, params: Any, tokens: Any, quantize_stage: QuantizeStage
) -> tuple[Any, Calibration]:
  """Sequential mode: returns (quantized params, the statistics each stage used).

  `quantize_stage(params, calibration, names)` returns `params` with the kernels `names`
  quantized from `calibration` and everything else unchanged (methods.py provides it).
  """
  tokens = check_tokens(tokens)
  net = recording_net(model)
  s, b, length = tokens.shape
  tokens = jnp.asarray(tokens, jnp.int32)
  names = list(_by_kernel(jax.eval_shape(_sums, net, params, tokens, None)))
  kernels: dict[tuple[str, ...], KernelStats] = {}
  for stage in stages(names):
    stats = _stats(_sums(net, params, tokens, None), s * b * length)  # as calibrate calls it
    kernels.update({n: stats[n] for n in stage})
    calibration = Calibration(
      {n: stats[n] for n in stage}, sequences=s * b, tokens=s * b * length, mode="sequential"
    )
    params = quantize_stage(params, calibration, stage)
  return params, Calibration(kernels, sequences=s * b, tokens=s * b * length, mode="sequential")

"""Mesh from config, logical-axis rules, and sharded initialisation.

The model names its parameter axes (`embed`, `mlp`, `heads`, `vocab`, ...); the config
picks a rule set (RULE_SETS below) mapping them onto the mesh axes
`('data', 'fsdp', 'tensor')`. Nothing is allocated before its sharding is known: the
state's shapes come from `jax.eval_shape`, then `jit(init, out_shardings=...)` builds
every array directly in place.

Why the default rules are Megatron-style: on XLA CPU (jax 0.6-0.10, Shardy or GSPMD) an
MLP whose two weights are both P('fsdp', 'tensor') with the batch on P(('data', 'fsdp'))
silently gives 60-80% wrong gradients while forward and loss are right. With the second
weight P('tensor', 'fsdp') gradients are correct; tests/test_sharding.py compares sharded
with single-device gradients for every rule set the configs offer.

Grouped-query attention (fewer key/value heads than query heads, `Preset.kv_heads`): the
key and value kernels name their output axis `kv_heads` (with as many heads as queries
they keep `heads`), and every rule set maps `kv_heads` to None, i.e. they are replicated
over the tensor axis (still split over fsdp by `embed`). Any tensor size that divides
num_heads then works, kv_heads = 1 (Gemma-2B, multi-query) included, and each device
computes the key/value heads its query heads read. The cost is small: the key and the
value kernel are each kv_heads / num_heads of the query kernel's size (1/4 for Llama
3.1-8B and Mistral-7B, 1/8 for Gemma-2B). Splitting them by kv group would save that
memory only where tensor divides kv_heads; it is not offered.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Logical axis -> mesh axis. Each rule set here is checked by
# tests/test_sharding.py::test_sharded_gradients_match_single_device.
# Megatron layout: the MLP's first weight is (fsdp, tensor) and its second (tensor, fsdp).
# (Both (fsdp, tensor) gives silently wrong gradients on XLA CPU, see sharding.py.)
RULE_SETS = {
  "megatron": (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", None),  # grouped-query key/value: replicated over tensor (see above)
    ("vocab", "tensor"),
    ("length", None),
    ("norm", None),
    ("layers", None),
  ),
  "fsdp": (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("kv_heads", None),
    ("vocab", None),
    ("length", None),
    ("norm", None),
    ("layers", None),
  ),
  "replicated": (
    ("batch", ("data", "fsdp")),
    ("embed", None),
    ("mlp", None),
    ("heads", None),
    ("kv_heads", None),
    ("vocab", None),
    ("length", None),
    ("norm", None),
    ("layers", None),
  ),
}

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor); a -1 entry takes whatever the others leave."""
  dims = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
  for name, d in zip(MESH_AXES, dims):
    if d == 0 or d < -1:
      raise ValueError(f"mesh.{name}={d} must be a positive size or -1 (fill)")
  if dims.count(-1) > 1:
    raise ValueError(
      f"mesh: only one axis may be -1, got data={dims[0]}, fsdp={dims[1]}, tensor={dims[2]}"
    )
  known = int(np.prod([d for d in dims if d != -1]))
  if -1 in dims:
    if num_devices % known:
      raise ValueError(
        f"mesh: fixed axes multiply to {known}, which does not divide the {num_devices} devices"
      )
    dims[dims.index(-1)] = num_devices // known
  if int(np.prod(dims)) != num_devices:
    raise ValueError(
      f"mesh: data*fsdp*tensor = {dims[0]}*{dims[1]}*{dims[2]} = "
      f"{int(np.prod(dims))} != {num_devices} devices; set one axis to -1 "
      "or make the product equal the device count"
    )
  return tuple(dims)


def initialize_distributed(mesh_cfg: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize()` from `config.mesh` (before any other jax call).

  Cross-process collectives of the CPU backend need gloo (the setting touches only the
  CPU backend; GPUs and TPUs bring their own collectives).
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=mesh_cfg.coordinator_address or None,
    num_processes=mesh_cfg.num_processes or None,
    process_id=None if mesh_cfg.process_id < 0 else mesh_cfg.process_id,
  )


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_rules(mesh_cfg: ml_collections.ConfigDict) -> tuple:
  if mesh_cfg.rules not in RULE_SETS:
    raise ValueError(f"mesh.rules={mesh_cfg.rules!r} is unknown; allowed: {sorted(RULE_SETS)}")
  return RULE_SETS[mesh_cfg.rules]


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES, None))


def state_shardings(boxed_shapes: Any, mesh: Mesh, rules: tuple) -> Any:
  """Shardings for a state whose abstract shapes still carry logical-axis boxes."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_shapes), mesh, rules)


def sharded_init(
  init_fn: Callable[..., Any], mesh: Mesh, rules: tuple, *args: Any
) -> tuple[Any, Any]:
  """Runs `init_fn(*args)` (returning a boxed pytree) with every output built in its
  sharding. Pass the RNG key in `args` rather than closing over it (see
  train.init_state_fn). Returns (unboxed state, its shardings).
  """
  shardings = state_shardings(jax.eval_shape(init_fn, *args), mesh, rules)

  def sharded_init_fn(*a):  # named: compile logs and XLA dumps say jit_sharded_init_fn
    return nn.unbox(init_fn(*a))

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(sharded_init_fn, out_shardings=shardings)(*args)
  return state, shardings


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's rows of the global batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}

"""A grid on several processes: who evaluates which cell, on which devices, who writes.

Several processes (`--config.base.mesh.distributed=True`; Cloud TPU pod slices, or
tests/test_multiprocess.py's two CPU processes) run the same program, and process 0 alone
prints the plan, the progress and the tables and writes the records. Training is one SPMD
program over every device of every process (train/loop.py; Orbax writes checkpoints
collectively). Evaluation uses no data parallelism, so the data axis only replicates
work; `eval_mesh` picks its devices:
  * fsdp x tensor fits one process (the usual case; -1 means all of one process's
    devices): the processes share out the cells. Each restores the checkpoint onto its
    own first fsdp x tensor devices and evaluates every P-th cell of each model (P
    processes: process i takes cell i of each round of P); after each round all records
    are gathered (`gather_records`, a collective) and process 0 writes them, so a pod of
    P hosts evaluates P cells at a time and a `kill -9` loses at most one round. Nothing
    else crosses hosts, so no collective can hang on a process that does not take part,
    and every output is addressable for `device_get`. A record's `process` says which
    process evaluated it.
  * fsdp x tensor = every device of every process (a model larger than one host's
    memory): one mesh over all devices, parameters sharded across processes, every
    process feeding the same (replicated) batches to the same SPMD program, cell by cell;
    process 0 writes each record.
  Any other size is an error: a mesh over some processes' devices would leave the others
  out of computations whose results they must read.
Splitting one cell's evaluation batches over processes instead would need global input
arrays and gathered outputs in the scorer; sharing out whole cells needs neither, and the
grid's cost is many small cells. Every process decides its work from process 0's finished
cells, broadcast before any work (`agreed_finished`): a process reading the results
directory after process 0 had written a record would otherwise skip a cell, or a model's
training, that the others do.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from kbit_jax.train import sharding


def eval_mesh(mesh_cfg: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The training mesh without its data axis (model parallelism only): this process's
  first fsdp x tensor devices (all of them for a -1 axis), or, when fsdp x tensor is
  every device of every process, one mesh over all of them (see the module docstring)."""
  cfg = ml_collections.ConfigDict(mesh_cfg.to_dict())
  cfg.data = 1
  local, size = jax.local_devices(), cfg.fsdp * cfg.tensor
  if -1 in (cfg.fsdp, cfg.tensor):
    devices = local
  elif size <= len(local):
    devices = local[:size]
  elif size == jax.device_count():
    devices = jax.devices()
  else:
    raise ValueError(
      f"evaluation needs mesh.fsdp x mesh.tensor = {cfg.fsdp} x {cfg.tensor} "
      f"devices: at most the {len(local)} of one process or all "
      f"{jax.device_count()} of the {jax.process_count()} processes (grid/multihost.py)"
    )
  return sharding.make_mesh(cfg, devices)


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize()` when the grid's `base.mesh.distributed` asks for it;
  before `grid_plan.make_plan`, which asks jax for the devices (and names a missing
  `base` section)."""
  mesh_cfg = config.base.mesh if "base" in config and "mesh" in config.base else None
  if mesh_cfg and mesh_cfg.get("distributed") and not jax.distributed.is_initialized():
    sharding.initialize_distributed(mesh_cfg)


def is_writer() -> bool:
  """Process 0 writes the records and prints; the others only compute."""
  return jax.process_index() == 0


def say(text: str) -> None:
  if is_writer():
    print(text, flush=True)


def agreed_flag(flag: bool) -> bool:
  """Process 0's `flag` on every process (a collective: all must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def agreed_finished(finished: set[str]) -> set[str]:
  """Process 0's finished cell ids, on every process (a collective: all must call it)."""
  if jax.process_count() == 1:
    return finished
  blob = "\n".join(sorted(finished)).encode("ascii") if is_writer() else b""
  size = int(multihost_utils.broadcast_one_to_all(np.int32(len(blob))))
  if not size:
    return set()
  buffer = np.zeros(size, np.uint8)
  if is_writer():
    buffer[:] = np.frombuffer(blob, np.uint8)
  agreed = np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8)
  return set(agreed.tobytes().decode("ascii").split("\n"))


def deals_cells(params: Any) -> bool:
  """Whether the processes share out the cells: several processes, each evaluating on
  its own devices (eval_mesh's first case). One mesh across all processes needs every
  process in every cell."""
  if jax.process_count() == 1:
    return False
  devices = jax.tree.leaves(params)[0].sharding.device_set
  return all(d.process_index == jax.process_index() for d in devices)


def gather_records(record: dict[str, Any] | None) -> list[dict[str, Any]]:
  """Every process's record of this round (None: it had no cell), in process order, on
  every process (a collective: all must call it)."""
  blob = json.dumps(record).encode() if record is not None else b""
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(blob)))).reshape(-1)
  buffer = np.zeros(max(int(sizes.max()), 1), np.uint8)
  buffer[: len(blob)] = np.frombuffer(blob, np.uint8)
  buffers = np.asarray(multihost_utils.process_allgather(buffer))
  return [json.loads(b[:n].tobytes()) for b, n in zip(buffers, sizes) if n]

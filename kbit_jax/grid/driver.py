"""Run a planned grid, resumably: train each (size, seed) once, then evaluate every
quantization cell of it and store one record per cell.

    kbit grid --config configs/grid.py --workdir W [--dry_run]

    W/models/<size>-seed<s>/   the training run (train.py; a finished run is reused);
                               <size>-seed<s>-D<tokens>/ per budget of a grid.tokens axis
    W/results/<cell id>.json   one record per finished cell (results.py)

Compiles do not grow with the number of cells. A model's float parameters are restored
once; each cell's quantized copy comes from one jitted `reference.fake_quant_params`
whose static spec is reduced to the cell's layout (block size, outlier share, centering,
double quantization, targets) while the codebook, padded to 256 codes, is an array
argument: one compile per layout serves every data-free (k, dtype). The data-dependent
`quantile` type estimates its 2^k codes from the weights inside the function, so it
compiles once per (layout, k). The quantized copy keeps the float parameters' shapes,
dtypes and shardings, and evaluate.py takes parameters as jit arguments, so every cell
of a model reuses the same evaluation executables. Backend compiles are counted with a
jax.monitoring listener and reported per cell (record `compiles/cell`; `compiles/run`:
all compiles of this run so far, training included) and per grid (the last log line).

Activation quantization (grid.act_bits a < 16): the weights are fake-quantized as above
and the net is built with AQT's dot_general quantizing the inputs of the attn and mlp
matmuls to a bits (`act_quant_net`); one net per a, so compiles grow with the number of
act_bits values, not cells.

Pretrained grids (configs/grid_pretrained.py; grid_plan.py): a model with an import is
never trained and W/models/ stays empty; its float parameters come from
`convert.importer.load_imported(import dir)` onto the evaluation mesh, its net from the
architecture the import saved, its tokenizer from the import dir (`data.tokenizer`), and
its records name the hub id (key `hub_id`) and the import dir (`model/import_dir`).

A model trained with `model.scan_layers` is restored stacked and evaluated unrolled
(`transformer.unstack_layers`): quantization and bit accounting see one tree per layer.

Evaluation runs on the first fsdp x tensor devices (the data axis would only replicate
the same work). A cell's record is written atomically after the cell and finished cells
are skipped on a rerun, so a `kill -9` loses at most the cell in flight.

Several processes (`--config.base.mesh.distributed=True`; Cloud TPU pod slices, or
tests/test_multiprocess.py's two CPU processes) run the same program, and process 0
alone prints the plan, the progress and the tables and writes the records. Training is
one SPMD program over every device of every process (train.py; Orbax writes checkpoints
collectively). Evaluation uses no data parallelism, so the data axis only replicates
work; `eval_mesh` picks its devices:
  * fsdp x tensor fits one process (the usual case; -1 means all of one process's
    devices): the processes share out the cells. Each restores the checkpoint onto its
    own first fsdp x tensor devices and evaluates every P-th cell of each model (P
    processes: process i takes cell i of each round of P); after each round all
    records are gathered (`_gather_records`, a collective) and process 0 writes them,
    so a pod of P hosts evaluates P cells at a time and a `kill -9` loses at most one
    round. Nothing else crosses hosts, so no collective can hang on a process that
    does not take part, and every output is addressable for `device_get`. A record's
    `process` says which process evaluated it.
  * fsdp x tensor = every device of every process (a model larger than one host's
    memory): one mesh over all devices, parameters sharded across processes, every
    process feeding the same (replicated) batches to the same SPMD program, cell by
    cell; process 0 writes each record.
  Any other size is an error: a mesh over some processes' devices would leave the
  others out of computations whose results they must read.
Splitting one cell's evaluation batches over processes instead would need global input
arrays and gathered outputs in evaluate.py; sharing out whole cells needs neither, and
the grid's cost is many small cells.
Every process decides its work from process 0's finished cells, broadcast before any
work (`_agreed_finished`): a process reading the results directory after process 0 had
written a record would otherwise skip a cell, or a model's training, that the others do.
"""

from __future__ import annotations

import collections
import datetime
import functools
import json
import pathlib
import subprocess
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from kbit_jax.analysis import results
from kbit_jax.convert import importer
from kbit_jax.evals import evaluate
from kbit_jax.grid import plan as grid_plan
from kbit_jax.grid import tpu_cost
from kbit_jax.model import presets, transformer
from kbit_jax.quant import aqt, reference
from kbit_jax.quant import bits as quant_bits
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec
from kbit_jax.train import checkpoint, loop, sharding

# jax records every executable it builds (a miss of its in-memory cache: compiled, or
# loaded from the persistent cache, compile_cache.py) under this event, with `fun_name`,
# and each persistent-cache load under the second.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_COMPILES: collections.Counter = collections.Counter()
_CACHE_HITS = [0]


def _count_compile(event: str, _: float, **kwargs):
  if event == COMPILE_EVENT:
    _COMPILES[kwargs.get("fun_name", "?")] += 1


def _count_cache_hit(event: str, **_):
  if event == CACHE_HIT_EVENT:
    _CACHE_HITS[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)
jax.monitoring.register_event_listener(_count_cache_hit)


def compile_count() -> int:
  """Executables built in this process so far (compiled or loaded from the cache)."""
  return sum(_COMPILES.values())


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
  try:
    out = subprocess.run(
      ["git", "rev-parse", "HEAD"],
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
      cwd=pathlib.Path(__file__).parent,
    )
    return out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


# ----------------------------------------------------------------------------- models


def model_dir(workdir: str, run: grid_plan.ModelRun) -> epath.Path:
  return epath.Path(workdir) / "models" / run.name


def _checkpoint_steps(directory: epath.Path, keep: int) -> list[int]:
  """Finished training steps in `directory`. A collective with several processes: they
  all take process 0's answer to whether checkpoints exist (a process that looked after
  process 0 had started training would otherwise open Orbax's manager, whose
  cross-process syncs would then pair with training's)."""
  if not _agreed_flag((directory / "checkpoints").exists()):
    return []
  with checkpoint.read_only(str(directory), keep) as ckpt:
    return ckpt.steps()


def ensure_trained(run: grid_plan.ModelRun, workdir: str) -> float:
  """Trains (or resumes) `run` unless its final checkpoint exists; returns seconds spent.
  An imported model is never trained (its import dir must exist)."""
  if run.pretrained:
    grid_plan.check_import(run)
    print(
      f"grid: {run.name}: {run.pretrained.hub_id} imported in "
      f"{run.pretrained.import_dir}; no training",
      flush=True,
    )
    return 0.0
  directory, steps = model_dir(workdir, run), run.config.train.steps
  done = _checkpoint_steps(directory, run.config.train.keep_checkpoints)
  if done and done[-1] > steps:
    raise ValueError(
      f"{directory} holds a training run of {done[-1]} steps but the grid "
      f"asks for train.steps={steps}; use another --workdir"
    )
  if steps in done:
    print(f"grid: {run.name}: reusing the trained model in {directory}", flush=True)
    return 0.0
  print(f"grid: {run.name}: training {run.train_tokens:,} tokens in {directory}", flush=True)
  t0 = time.perf_counter()
  loop.train_and_evaluate(run.config, str(directory))
  return time.perf_counter() - t0


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
      f"{jax.device_count()} of the {jax.process_count()} processes (grid.py)"
    )
  return sharding.make_mesh(cfg, devices)


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """`jax.distributed.initialize()` when the grid's `base.mesh.distributed` asks for it;
  before `grid_plan.make_plan`, which asks jax for the devices (and names a missing
  `base` section)."""
  mesh_cfg = config.base.mesh if "base" in config and "mesh" in config.base else None
  if mesh_cfg and mesh_cfg.get("distributed") and not jax.distributed.is_initialized():
    sharding.initialize_distributed(mesh_cfg)


def _restore_imported(run: grid_plan.ModelRun) -> Any:
  """The float parameters of an imported model, on the evaluation mesh."""
  grid_plan.check_import(run)
  mesh, rules = eval_mesh(run.config.mesh), sharding.logical_rules(run.config.mesh)
  with checkpoint.quiet_orbax():
    arch, params = importer.load_imported(run.pretrained.import_dir, mesh, rules)
  if arch != run.architecture:
    raise ValueError(
      f"{run.pretrained.import_dir} holds another architecture than when "
      f"the grid was planned ({arch} != {run.architecture}); rerun the grid"
    )
  return params


def restore_params(run: grid_plan.ModelRun, workdir: str) -> Any:
  """The final float parameters of `run` (trained or imported), on the evaluation mesh."""
  if run.pretrained:
    return _restore_imported(run)
  trainer = loop.Trainer(run.config, eval_mesh(run.config.mesh))
  with checkpoint.read_only(
    str(model_dir(workdir, run)), run.config.train.keep_checkpoints
  ) as ckpt:
    params = ckpt.restore_params(trainer.abstract_state().params, step=run.config.train.steps)
  return transformer.unstack_layers(params)  # trained with model.scan_layers: unroll


# ----------------------------------------------------------------------------- cells


def act_quant_net(run: grid_plan.ModelRun, act_bits: int):
  """The float net, or for act_bits < 16 the net whose targeted matmuls (attn, mlp: the
  nn.Dense layers) quantize their inputs with AQT's per-token absmax int quantizer to
  act_bits (aqt.make_dot_general_cls); the weights reach it already fake-quantized."""
  if act_bits == UNQUANTIZED_BITS:
    return _net(run)
  targets = tuple(t for t in run.cells[0].spec.targets if t != "embed") or ("attn", "mlp")
  return _net(run, _act_dot_general_cls(act_bits, targets))


def _net(run: grid_plan.ModelRun, dot_general_cls=None) -> transformer.Transformer:
  """loop.make_model's net, with the architecture an import saved for imported runs;
  always unrolled (restore_params unstacks a scan_layers model), so quantization and bit
  accounting see one tree per layer."""
  return loop.make_model(run.config, dot_general_cls, run.architecture, scan_layers=False)


@functools.lru_cache(maxsize=None)
def _act_dot_general_cls(act_bits: int, targets: tuple[str, ...]):
  """One factory per (a, targets): equal nets, so models of one preset share executables."""
  spec = QuantSpec(bits=UNQUANTIZED_BITS, act_bits=act_bits, targets=targets)
  return aqt.make_dot_general_cls(spec)


class CellEvaluator:
  """Quantizes and evaluates the cells of one model; compiles once per layout, and the
  evaluation once per activation bit width (one net per act_bits)."""

  def __init__(self, run: grid_plan.ModelRun, params: Any, eval_cfg: ml_collections.ConfigDict):
    self.run = run
    self.params = params
    self.nets: dict[int, Any] = {}
    self.config = ml_collections.ConfigDict(
      {"data": run.config.data.to_dict(), "eval": eval_cfg.to_dict()}
    )
    self._quantize = jax.jit(
      reference.fake_quant_params,
      static_argnums=1,
      out_shardings=jax.tree.map(lambda x: x.sharding, params),
    )

  def quantized(self, spec: QuantSpec) -> Any:
    if not spec.quantized:
      return self.params
    return jax.block_until_ready(
      self._quantize(self.params, reference.layout_spec(spec), reference.spec_codebook(spec))
    )

  def evaluate(self, params: Any, act_bits: int = UNQUANTIZED_BITS) -> dict[str, Any]:
    if act_bits not in self.nets:
      self.nets[act_bits] = act_quant_net(self.run, act_bits)
    return evaluate.evaluate(params, self.nets[act_bits], self.config)


def _evaluate_cell(
  run: grid_plan.ModelRun,
  cell: grid_plan.Cell,
  evaluator: CellEvaluator,
  train_s: float,
  compiles_start: int,
) -> dict[str, Any]:
  """Quantizes and evaluates one cell; returns its record."""
  t0, c0 = time.perf_counter(), compile_count()
  params = evaluator.quantized(cell.spec)
  t1 = time.perf_counter()
  metrics = evaluator.evaluate(params, cell.spec.act_bits)
  t2 = time.perf_counter()
  compiles = dict(cell=compile_count() - c0, run=compile_count() - compiles_start)
  timing = dict(quantize_s=t1 - t0, eval_s=t2 - t1, cell_s=t2 - t0, train_s=train_s)
  return make_record(run, cell, metrics, evaluator.params, timing, compiles)


def make_record(
  run: grid_plan.ModelRun,
  cell: grid_plan.Cell,
  metrics: dict[str, Any],
  params: Any,
  timing: dict[str, float],
  compiles: dict[str, int],
) -> dict[str, Any]:
  counts = presets.param_counts(run.architecture)
  report = quant_bits.bits_report(params, cell.spec)
  return dict(
    key=cell.key_dict,
    model=dict(
      params=counts["total"],
      non_embedding_params=counts["non_embedding"],
      embedding_params=counts["embedding"],
      seq_len=run.config.data.seq_len,
      **_model_source(run),
    ),
    bits=dict(
      total_bits=report["total_bits"],
      bits_per_param=report["bits_per_param"],
      quantized_params=report["quantized_params"],
      quantized_bits_per_param=report["quantized_bits_per_param"],
    ),
    metrics=metrics,
    time=timing,
    compiles=compiles,
    name=cell.name,
    process=jax.process_index(),
    git_commit=git_commit(),
    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  )


def _model_source(run: grid_plan.ModelRun) -> dict[str, Any]:
  """A record's training setup, or for an imported model where it came from."""
  if run.pretrained:
    s = run.pretrained
    return dict(import_dir=s.import_dir, family=s.family, imported_preset=s.table_preset)
  t = run.config.train
  return dict(train_steps=t.steps, train_batch_size=t.batch_size, train_lr=t.lr)


def _headline(metrics: dict[str, Any]) -> str:
  parts = []
  if "mean" in metrics:
    parts.append(f"acc {metrics['mean']['acc']:.3f}")
  if "probe/summary" in metrics:
    parts.append(f"probe bits {metrics['probe/summary']['bits']:.2f}")
  parts += [f"ppl {v['perplexity']:.2f}" for k, v in metrics.items() if k.startswith("ppl/")]
  return " ".join(parts)


# ----------------------------------------------------------------------------- driver


class Progress:
  """Cells done / total, elapsed, and an ETA from the plan's estimates scaled by how
  fast the work done in this run actually went."""

  def __init__(self, total: int, done: int, remaining_est_s: float):
    self.total, self.done = total, done
    self.remaining_est = remaining_est_s
    self.t0 = time.perf_counter()
    self.est_done = 0.0

  def work(self, est_s: float):
    self.est_done += est_s
    self.remaining_est -= est_s

  def advance(self, cell_name: str, seconds: float, compiles: int, headline: str) -> str:
    """Counts one more cell done; returns its progress line."""
    self.done += 1
    elapsed = time.perf_counter() - self.t0
    eta = self.remaining_est * elapsed / max(self.est_done, 1e-9)
    return (
      f"grid {self.done}/{self.total} {cell_name}: {headline} | {seconds:.1f}s "
      f"{compiles} compiles | elapsed {grid_plan.format_duration(elapsed)} "
      f"eta {grid_plan.format_duration(eta)}"
    )


def check_workdirs(plan: grid_plan.Plan, workdir: str) -> None:
  """WorkdirError if a model directory holds another model's checkpoints (e.g. the grid's
  base.model.scan_layers changed): checkpoint.check_workdir, for every trained model."""
  for m in plan.models:
    if not m.pretrained:
      try:
        checkpoint.check_workdir(m.config, str(model_dir(workdir, m)))
      except checkpoint.WorkdirError as e:
        raise checkpoint.WorkdirError(f"grid size {m.name}: {e}") from None


def _trained(run: grid_plan.ModelRun, workdir: str) -> bool:
  """Whether `run` needs no training; raises for an imported model whose import dir is
  missing (run() asks this of every model with work, before any of it)."""
  if run.pretrained:
    grid_plan.check_import(run)
    return True
  steps = _checkpoint_steps(model_dir(workdir, run), run.config.train.keep_checkpoints)
  return run.config.train.steps in steps


def _is_writer() -> bool:
  """Process 0 writes the records and prints; the others only compute."""
  return jax.process_index() == 0


def _say(text: str) -> None:
  if _is_writer():
    print(text, flush=True)


def _agreed_flag(flag: bool) -> bool:
  """Process 0's `flag` on every process (a collective: all must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _agreed_finished(finished: set[str]) -> set[str]:
  """Process 0's finished cell ids, on every process (a collective: all must call it)."""
  if jax.process_count() == 1:
    return finished
  blob = "\n".join(sorted(finished)).encode("ascii") if _is_writer() else b""
  size = int(multihost_utils.broadcast_one_to_all(np.int32(len(blob))))
  if not size:
    return set()
  buffer = np.zeros(size, np.uint8)
  if _is_writer():
    buffer[:] = np.frombuffer(blob, np.uint8)
  agreed = np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8)
  return set(agreed.tobytes().decode("ascii").split("\n"))


def _deals_cells(params: Any) -> bool:
  """Whether the processes share out the cells: several processes, each evaluating on
  its own devices (eval_mesh's first case). One mesh across all processes needs every
  process in every cell."""
  if jax.process_count() == 1:
    return False
  devices = jax.tree.leaves(params)[0].sharding.device_set
  return all(d.process_index == jax.process_index() for d in devices)


def _gather_records(record: dict[str, Any] | None) -> list[dict[str, Any]]:
  """Every process's record of this round (None: it had no cell), in process order, on
  every process (a collective: all must call it)."""
  blob = json.dumps(record).encode() if record is not None else b""
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(blob)))).reshape(-1)
  buffer = np.zeros(max(int(sizes.max()), 1), np.uint8)
  buffer[: len(blob)] = np.frombuffer(blob, np.uint8)
  buffers = np.asarray(multihost_utils.process_allgather(buffer))
  return [json.loads(b[:n].tobytes()) for b, n in zip(buffers, sizes) if n]


def run(plan: grid_plan.Plan, workdir: str, dry_run: bool = False) -> dict[str, Any]:
  """Prints the plan; unless `dry_run`, trains and evaluates every unfinished cell.

  Every process of a multi-process run calls this with the same plan: all of them train
  and evaluate, process 0 alone prints and writes `results/` (see the module docstring).
  """
  results_dir = epath.Path(workdir) / "results"
  check_workdirs(plan, workdir)
  finished = _agreed_finished(results.finished_ids(results_dir))
  cost = grid_plan.estimate(plan)
  _say(grid_plan.format_plan(plan, cost, finished))
  _say(f"results: {results_dir}")
  todo = {m.name: [c for c in m.cells if c.id not in finished] for m in plan.models}
  remaining = sum(map(len, todo.values()))
  if dry_run:
    _say(tpu_cost.format_costs(tpu_cost.grid_flops(plan, cost)))
    return dict(cells=len(plan.cells), todo=remaining, cost=cost)
  per_model = cost["per_model"]
  train_est = {
    m.name: 0.0 if _trained(m, workdir) else per_model[m.name]["train_s"]
    for m in plan.models
    if todo[m.name]
  }
  progress = Progress(
    len(plan.cells),
    len(plan.cells) - remaining,
    sum(train_est[n] + per_model[n]["cell_s"] * len(todo[n]) for n in train_est),
  )
  t_start, cpu_start = time.perf_counter(), time.process_time()
  compiles_start, before, hits_start = compile_count(), _COMPILES.copy(), _CACHE_HITS[0]
  for m in plan.models:
    if not todo[m.name]:
      continue
    train_s = ensure_trained(m, workdir)
    progress.work(train_est[m.name])
    params = restore_params(m, workdir)
    evaluator = CellEvaluator(m, params, plan.config.eval)
    dealers = jax.process_count() if _deals_cells(params) else 1
    for start in range(0, len(todo[m.name]), dealers):
      group = todo[m.name][start : start + dealers]
      i = jax.process_index() if dealers > 1 else 0  # this process's cell of the round
      record = (
        _evaluate_cell(m, group[i], evaluator, train_s, compiles_start) if i < len(group) else None
      )
      for rec in _gather_records(record) if dealers > 1 else [record]:
        if _is_writer():
          results.write(results_dir, rec)
        progress.work(per_model[m.name]["cell_s"])
        _say(
          progress.advance(
            rec["name"], rec["time"]["cell_s"], rec["compiles"]["cell"], _headline(rec["metrics"])
          )
        )
  seconds, cpu_seconds = time.perf_counter() - t_start, time.process_time() - cpu_start
  grid_compiles = compile_count() - compiles_start
  by_function = ", ".join(f"{name} {n}" for name, n in (_COMPILES - before).most_common(6))
  by_function = f" (most: {by_function})" if by_function else ""
  if _CACHE_HITS[0] > hits_start:
    by_function += f", {_CACHE_HITS[0] - hits_start} of them loaded from the compilation cache"
  _say(
    f"grid done: {len(plan.cells)} cells ({remaining} evaluated now, "
    f"{len(plan.cells) - remaining} found finished) in "
    f"{grid_plan.format_duration(seconds)} (process CPU time "
    f"{grid_plan.format_duration(cpu_seconds)}); compiles per grid: {grid_compiles}"
    f"{by_function}"
  )
  if _is_writer():
    df = results.load(results_dir)
    print(results.format_tables(df[df["id"].isin({c.id for c in plan.cells})]), flush=True)
  return dict(
    cells=len(plan.cells),
    evaluated=remaining,
    seconds=seconds,
    cpu_seconds=cpu_seconds,
    compiles=grid_compiles,
  )


def plan_and_run(
  config: ml_collections.ConfigDict, workdir: str, dry_run: bool = False
) -> dict[str, Any]:
  """`kbit grid`: distributed set-up (when asked), the plan with every cell validated
  (missing imports are an error unless `dry_run`), then `run`."""
  initialize_distributed(config)  # before make_plan asks jax for the devices
  plan = grid_plan.make_plan(config, require_imports=not dry_run)
  return run(plan, workdir, dry_run)

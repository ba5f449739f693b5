"""Run a planned grid, resumably: train each model once, then quantize and evaluate every
cell of it and store one record per cell.

    kbit grid --config configs/grid.py --workdir W [--dry_run]   # -> plan_and_run

    W/kbit.lock                held while the grid runs: a second grid (or `kbit train`)
                               on W is refused (train/workdir_lock.py)
    W/models/<model>-<train_id>/   each model's training run (models.py)
    W/results/<cell id>.json   one record per finished cell (analysis/results.py)

The recipe, per model with unfinished cells: train or reuse it (models.py), restore its
float parameters onto the evaluation mesh, then for each cell quantize and evaluate
(evaluator.py: compiles per block layout, not per cell) and write the record. Evaluation
runs on the first fsdp x tensor devices (the data axis would only replicate the same
work). A cell's record is written atomically after the cell and finished cells are
skipped on a rerun, so a `kill -9` loses at most the cell in flight. Only records that
read back whole and match their file name count as finished: an unreadable one is moved
to W/results/unreadable/ with a warning and its cell redone (results.finished_ids), and
records of this grid's cells written before cell keys carried `train_id` are moved to
W/results/legacy/ (they cannot be tied to a model) and redone. On several processes
the cells are shared out and process 0 writes (multihost.py). Compiles are counted per
cell (record `compiles/cell`; `compiles/run`: all of this run so far, training included)
and per grid (the last log line; compiles.py).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
from etils import epath

from kbit_jax.analysis import results
from kbit_jax.grid import compiles, describe, evaluator, models, multihost, tpu_cost
from kbit_jax.grid import cost as grid_cost
from kbit_jax.grid import keys as grid_keys
from kbit_jax.grid import plan as grid_plan
from kbit_jax.train import checkpoint, workdir_lock


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
      f"{compiles} compiles | elapsed {describe.format_duration(elapsed)} "
      f"eta {describe.format_duration(eta)}"
    )


def _finished(plan: grid_plan.Plan, results_dir: epath.Path, dry_run: bool) -> set[str]:
  """Process 0's finished cells, agreed by all processes. Unless `dry_run`, process 0
  first moves unreadable records aside and this grid's legacy records to results/legacy/
  (see the module docstring); a dry run only reports them."""
  finished = set()
  if multihost.is_writer():
    move = not dry_run
    finished = results.finished_ids(results_dir, move_bad=move)
    legacy = {
      results.cell_id(old): c.name
      for c in plan.cells
      if (old := grid_keys.legacy_key(c.key_dict)) is not None
    }
    found = [i for i in legacy if (results_dir / f"{i}{results.SUFFIX}").exists()]
    if found:
      if move:
        for i in found:
          results.move_aside(results_dir, i, results.LEGACY_DIR)
      print(
        f"grid: {len(found)} records of this grid's cells (e.g. {legacy[found[0]]}) were "
        "written before cell keys carried the model's training identity (train_id) and "
        f"cannot be tied to a model; {'moved to' if move else 'a run moves them to'} "
        f"{results_dir / results.LEGACY_DIR}/ and their cells are redone",
        flush=True,
      )
      finished -= set(found)
  return multihost.agreed_finished(finished)


def run(plan: grid_plan.Plan, workdir: str, dry_run: bool = False) -> dict[str, Any]:
  """Prints the plan; unless `dry_run`, trains and evaluates every unfinished cell.

  Every process of a multi-process run calls this with the same plan: all of them train
  and evaluate, process 0 alone prints and writes `results/` (see the module docstring).
  The workdir is locked for the run (not for a dry run, which writes nothing).
  """
  if dry_run:
    return _run(plan, workdir, dry_run)
  with workdir_lock.hold(workdir, "kbit grid"):
    return _run(plan, workdir, dry_run)


def _trained_params(m: grid_plan.ModelRun, workdir: str) -> tuple[Any, float]:
  """(float params on the evaluation mesh, training seconds): trains `m` if needed; a
  final checkpoint that cannot be read is moved aside and the model retrained."""
  train_s = models.ensure_trained(m, workdir)
  try:
    return models.restore_params(m, workdir), train_s
  except checkpoint.UnreadableCheckpointError as e:
    models.move_aside_final_step(m, workdir, e)
    multihost.say(f"grid: {m.name}: its final checkpoint is unreadable; retraining")
  train_s += models.ensure_trained(m, workdir)
  return models.restore_params(m, workdir), train_s


def _run(plan: grid_plan.Plan, workdir: str, dry_run: bool) -> dict[str, Any]:
  compiles.start()
  results_dir = epath.Path(workdir) / "results"
  models.check_workdirs(plan, workdir, adopt=not dry_run)
  finished = _finished(plan, results_dir, dry_run)
  cost = grid_cost.estimate(plan)
  multihost.say(describe.format_plan(plan, cost, finished))
  multihost.say(f"results: {results_dir}")
  todo = {m.name: [c for c in m.cells if c.id not in finished] for m in plan.models}
  remaining = sum(map(len, todo.values()))
  if dry_run:
    multihost.say(tpu_cost.format_costs(tpu_cost.grid_flops(plan, cost)))
    return dict(cells=len(plan.cells), todo=remaining, cost=cost)
  per_model = cost["per_model"]
  train_est = {
    m.name: 0.0 if models.is_trained(m, workdir) else per_model[m.name]["train_s"]
    for m in plan.models
    if todo[m.name]
  }
  progress = Progress(
    len(plan.cells),
    len(plan.cells) - remaining,
    sum(train_est[n] + per_model[n]["cell_s"] * len(todo[n]) for n in train_est),
  )
  t_start, cpu_start = time.perf_counter(), time.process_time()
  compiles_start, before, hits_start = (
    compiles.compile_count(),
    compiles.by_function(),
    compiles.cache_hits(),
  )
  for m in plan.models:
    if not todo[m.name]:
      continue
    params, train_s = _trained_params(m, workdir)
    progress.work(train_est[m.name])
    cells = evaluator.CellEvaluator(m, params, plan.config.eval, plan.calibration)
    dealers = jax.process_count() if multihost.deals_cells(params) else 1
    for start in range(0, len(todo[m.name]), dealers):
      group = todo[m.name][start : start + dealers]
      i = jax.process_index() if dealers > 1 else 0  # this process's cell of the round
      record = (
        evaluator.evaluate_cell(m, group[i], cells, train_s, compiles_start)
        if i < len(group)
        else None
      )
      for rec in multihost.gather_records(record) if dealers > 1 else [record]:
        if multihost.is_writer():
          results.write(results_dir, rec)
        progress.work(per_model[m.name]["cell_s"])
        multihost.say(
          progress.advance(
            rec["name"],
            rec["time"]["cell_s"],
            rec["compiles"]["cell"],
            evaluator.headline(rec["metrics"]),
          )
        )
  seconds, cpu_seconds = time.perf_counter() - t_start, time.process_time() - cpu_start
  grid_compiles = compiles.compile_count() - compiles_start
  by_function = ", ".join(
    f"{name} {n}" for name, n in (compiles.by_function() - before).most_common(6)
  )
  by_function = f" (most: {by_function})" if by_function else ""
  if compiles.cache_hits() > hits_start:
    by_function += (
      f", {compiles.cache_hits() - hits_start} of them loaded from the compilation cache"
    )
  multihost.say(
    f"grid done: {len(plan.cells)} cells ({remaining} evaluated now, "
    f"{len(plan.cells) - remaining} found finished) in "
    f"{describe.format_duration(seconds)} (process CPU time "
    f"{describe.format_duration(cpu_seconds)}); compiles per grid: {grid_compiles}"
    f"{by_function}"
  )
  if multihost.is_writer():
    df = results.load(results_dir)
    if "id" in df:
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
  multihost.initialize_distributed(config)  # before make_plan asks jax for the devices
  plan = grid_plan.make_plan(config, require_imports=not dry_run)
  return run(plan, workdir, dry_run)

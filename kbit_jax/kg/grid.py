"""The knowledge-graph grid run: train each model of the plan (kg/plan.py) once, evaluate
every cell of it, one record per cell in the results store; rerunning resumes.

    kbit kg --config configs/kg.py --workdir W [--dry_run]         # -> plan_and_run

    W/models/<model>-d<dim>-n<triples>-seed<s>/   its training run (train.py's Orbax
                                                   checkpoints) + train_summary.json
    W/results/<cell id>.json                       one record per finished cell

Like the LM grid (kbit_jax/grid/driver.py), and for the same reasons: every cell is
validated before anything trains (plan.make_plan); model directories holding another
run's checkpoints are refused before any work (WorkdirError); a rerun skips the cells
already in W/results and does not touch a model all of whose cells are done; a model
with cells left is restored from its final checkpoint, not retrained (a run cut short
resumes at its newest checkpoint, exactly: kg/train.py); each record is written
atomically as soon as its cell is evaluated, so a `kill -9` loses at most the cell in
flight. The KG grid is its own command rather than a mode of `kbit grid`: its models are
not transformer presets, its data axis is triples not tokens, and its evaluation is
ranking, so sharing the LM planner would put an `if kg:` in each of its files.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from typing import Any, Callable

import ml_collections
from etils import epath

from kbit_jax.analysis import results
from kbit_jax.grid import compiles
from kbit_jax.kg import experiment, train
from kbit_jax.kg.plan import (
  Plan,
  Run,
  format_duration,
  format_plan,
  make_plan,
  model_dir,
  model_state,
)
from kbit_jax.train import checkpoint

SUMMARY = "train_summary.json"


def check_workdirs(plan: Plan, workdir: str) -> None:
  """WorkdirError, naming the model and the keys, if a model directory holds checkpoints
  of another run (train.RESUME_KEYS differ) or of more steps than the grid asks for."""
  for run in plan.runs:
    directory = model_dir(workdir, run)
    if not (directory / "checkpoints").exists():
      continue
    with checkpoint.read_only(str(directory), run.config.train.keep_checkpoints) as ckpt:
      try:
        train.check_resumable(ckpt, run.config)
      except checkpoint.WorkdirError as e:
        raise checkpoint.WorkdirError(f"kg grid model {run.name}: {e}") from None
      steps = ckpt.steps()
    if steps and steps[-1] > run.steps:
      raise checkpoint.WorkdirError(
        f"kg grid model {run.name}: {directory} holds a training run of {steps[-1]} steps "
        f"but the grid asks for train.steps={run.steps}; use another --workdir"
      )


def _read_summary(directory: epath.Path) -> dict[str, Any]:
  path = directory / SUMMARY
  return json.loads(path.read_text()) if path.exists() else {}


def ensure_trained(
  plan: Plan, run: Run, workdir: str, log: Callable[[str], None]
) -> tuple[train.TrainResult, dict[str, Any]]:
  """Trains `run` (or resumes it from its newest checkpoint, or, when its final step is
  saved, restores it without a step); returns the result and the summary of the run
  that trained it (train_s, the final loss, whether this call trained)."""
  directory = model_dir(workdir, run)
  result = train.train(
    run.config, plan.graph, workdir=str(directory), log=lambda s: log(f"  {run.name}: {s}")
  )
  if result.resumed_from < run.steps:  # trained now (from scratch or resumed)
    losses = {str(k): v for k, v in sorted(result.losses.items())}
    summary = dict(
      steps=run.steps,
      train_s=result.train_s,
      resumed_from=result.resumed_from,
      final_loss=result.losses.get(run.steps),
      losses=losses,
    )
    (directory / SUMMARY).write_text(json.dumps(summary, indent=1))
    return result, dict(summary, trained_now=True)
  return result, dict(_read_summary(directory), trained_now=False)


# ----------------------------------------------------------------------------- run


def run(
  plan: Plan, workdir: str, dry_run: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
  """Prints the plan; unless `dry_run`, trains and evaluates every unfinished cell.
  Returns counts: cells, evaluated (now), trained (models trained or resumed now),
  restored (models loaded from their final checkpoint), skipped (models with no cell
  left), seconds."""
  compiles.start()
  results_dir = epath.Path(workdir) / "results"
  check_workdirs(plan, workdir)
  finished = results.finished_ids(results_dir)
  log(format_plan(plan, workdir, finished))
  log(f"results: {results_dir}")
  todo = {r.name: [c for c in r.cells if c.id not in finished] for r in plan.runs}
  remaining = sum(map(len, todo.values()))
  counts = dict(
    cells=len(plan.cells), todo=remaining, evaluated=0, trained=0, restored=0, skipped=0
  )
  if dry_run:
    return counts
  t_start, c_start, done = (
    time.perf_counter(),
    compiles.compile_count(),
    len(plan.cells) - remaining,
  )
  for r in plan.runs:
    if not todo[r.name]:
      counts["skipped"] += 1
      continue
    log(f"kg: {r.name}: {model_state(workdir, r)} ({r.steps} steps) in {model_dir(workdir, r)}")
    result, summary = ensure_trained(plan, r, workdir, log)
    counts["trained" if summary["trained_now"] else "restored"] += 1
    cells = {c.id: c for c in todo[r.name]}
    records = experiment.evaluate_specs(
      r.config,
      plan.graph,
      result,
      [c.spec for c in todo[r.name]],
      plan.split,
      plan.tables,
      plan.config.eval.batch_size,
      log=lambda _: None,
      train_s=summary.get("train_s"),
      train_loss=summary.get("final_loss"),
    )
    c_cell = compiles.compile_count()
    for record in records:
      cell = cells.get(results.cell_id(record["key"]))
      if cell is None:  # the plan's key and the record's must agree, or resuming breaks
        raise RuntimeError(f"record key {record['key']} is no cell of the plan of {r.name}")
      record["time"]["train_reused"] = not summary["trained_now"]
      record["compiles"] = dict(cell=compiles.compile_count() - c_cell)
      record["git_commit"] = results.git_commit()
      record["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
      results.write(results_dir, record)
      c_cell = compiles.compile_count()
      counts["evaluated"] += 1
      done += 1
      m = record["metrics"]
      elapsed = time.perf_counter() - t_start
      eta = elapsed / counts["evaluated"] * (remaining - counts["evaluated"])
      log(
        f"kg {done}/{len(plan.cells)} {record['name']}: mrr {m['mrr']:.4f} hits@10 "
        f"{m['hits@10']:.4f} unleaked mrr {m.get('unleaked', {}).get('mrr', math.nan):.4f} | "
        f"eval {record['time']['eval_s']:.1f}s | elapsed {format_duration(elapsed)} "
        f"eta ~{format_duration(eta)}"
      )
  counts["seconds"] = time.perf_counter() - t_start
  counts["compiles"] = compiles.compile_count() - c_start
  log(
    f"kg grid done: {len(plan.cells)} cells ({counts['evaluated']} evaluated now, "
    f"{len(plan.cells) - remaining} found finished); models trained {counts['trained']}, "
    f"restored {counts['restored']}, untouched {counts['skipped']}; "
    f"{format_duration(counts['seconds'])}, {counts['compiles']} compiles"
  )
  log(format_results(plan, results_dir))
  return counts


def format_results(plan: Plan, results_dir: epath.Path) -> str:
  """MRR and unleaked MRR of the plan's finished cells: rows (model, triples, dim), k."""
  ids = {c.id for c in plan.cells}
  records = [
    results.read(results_dir / f"{i}{results.SUFFIX}")
    for i in sorted(ids & results.finished_ids(results_dir))
  ]
  if not records:
    return ""
  df = results.frame(records)
  out = []
  for value in ("mrr", "unleaked/mrr"):
    if value in df:
      table = df.pivot_table(
        index=["model", "train_triples", "dim"], columns="bits", values=value, aggfunc="mean"
      )
      out.append(f"{value} (columns: k)\n{table.to_string(float_format=lambda x: f'{x:.4f}')}")
  return "\n\n".join(out)


def plan_and_run(
  config: ml_collections.ConfigDict, workdir: str, dry_run: bool = False
) -> dict[str, Any]:
  """`kbit kg`: the plan with every cell validated, then `run`."""
  return run(make_plan(config), workdir, dry_run)

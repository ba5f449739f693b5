"""The grid's models: train (or resume, or reuse) each one, and restore its float
parameters onto the evaluation mesh.

    W/models/<size>-seed<s>-<train_id>/   the training run (train/loop.py; a finished run
                                          is reused); <size>-seed<s>-D<tokens>-<train_id>/
                                          per budget of a grid.tokens axis;
                                          <run>-wsd<step>-<train_id>/ per WSD cool-down
                                          branch (along.py)

`train_id` is a hash of the run's whole training identity (train/identity.py), so a
model trained with another config (lr, seq_len, data, steps, ...) lives in another
directory and is never reused for this one; a directory whose checkpoints have another
identity than its name says is refused, naming the keys (`check_workdirs`). A model's
final checkpoint that cannot be read is moved aside and the model retrained
(driver.py). Workdirs of grids before `train_id`: a `W/models/<size>-seed<s>/` whose
saved config has this run's identity is this model and is renamed to its new name; one
with another identity is left as it is and named (the model is trained anew).

Along training (grid.checkpoints, along.py), a cosine checkpoint is restored from its
trunk's directory at its step (kept there by train.keep_steps); a WSD branch trains its
cool-down from the trunk's kept stable-phase step once the trunk is trained.

A pretrained grid's model (configs/grid_pretrained.py) is never trained and W/models/
stays empty: its float parameters come from `convert.importer.load_imported(import dir)`.
A model trained with `model.scan_layers` is restored stacked and returned unrolled
(`transformer.unstack_layers`): quantization and bit accounting see one tree per layer.
"""

from __future__ import annotations

import time
from typing import Any

from etils import epath

from kbit_jax.convert import importer
from kbit_jax.grid import multihost
from kbit_jax.grid import plan as grid_plan
from kbit_jax.model import transformer
from kbit_jax.train import checkpoint, identity, loop, sharding


def model_dir(workdir: str, run: grid_plan.ModelRun) -> epath.Path:
  return epath.Path(workdir) / "models" / run.dir_name


def legacy_model_dir(workdir: str, run: grid_plan.ModelRun) -> epath.Path:
  """Where grids before `train_id` trained `run` (W/models/<name>/)."""
  return epath.Path(workdir) / "models" / run.name


def _checkpoint_steps(directory: epath.Path, keep: int) -> list[int]:
  """Finished training steps in `directory`. A collective with several processes: they
  all take process 0's answer to whether checkpoints exist (a process that looked after
  process 0 had started training would otherwise open Orbax's manager, whose
  cross-process syncs would then pair with training's)."""
  if not multihost.agreed_flag((directory / "checkpoints").exists()):
    return []
  with checkpoint.read_only(str(directory), keep) as ckpt:
    return ckpt.steps()


def ensure_trained(run: grid_plan.ModelRun, workdir: str) -> float:
  """Trains (or resumes) `run` unless its final checkpoint exists; returns seconds spent.
  An imported model is never trained (its import dir must exist)."""
  if run.pretrained:
    run.check_import()
    print(
      f"grid: {run.name}: {run.pretrained.hub_id} imported in "
      f"{run.pretrained.import_dir}; no training",
      flush=True,
    )
    return 0.0
  if run.trunk is not None and not run.branch_start:  # a checkpoint of the trunk's run
    return ensure_trained(run.trunk, workdir)
  spent = ensure_trained(run.trunk, workdir) if run.trunk is not None else 0.0
  directory, steps = model_dir(workdir, run), run.config.train.steps
  done = _checkpoint_steps(directory, run.config.train.keep_checkpoints)
  if done and done[-1] > steps:
    raise ValueError(
      f"{directory} holds a training run of {done[-1]} steps but the grid "
      f"asks for train.steps={steps}; use another --workdir"
    )
  if steps in done:
    print(f"grid: {run.name}: reusing the trained model in {directory}", flush=True)
    return spent
  branch = None
  if run.branch_start:
    branch = (str(model_dir(workdir, run.trunk)), run.branch_start)
    print(
      f"grid: {run.name}: WSD cool-down from step {run.branch_start} of {run.trunk.name} "
      f"to step {steps} in {directory}",
      flush=True,
    )
  else:
    print(f"grid: {run.name}: training {run.train_tokens:,} tokens in {directory}", flush=True)
  t0 = time.perf_counter()
  loop.train_and_evaluate(run.config, str(directory), branch_from=branch)
  return spent + time.perf_counter() - t0


def restore_imported(run: grid_plan.ModelRun) -> Any:
  """The float parameters of an imported model, on the evaluation mesh."""
  run.check_import()
  mesh, rules = multihost.eval_mesh(run.config.mesh), sharding.logical_rules(run.config.mesh)
  with checkpoint.quiet_orbax():
    arch, params = importer.load_imported(run.pretrained.import_dir, mesh, rules)
  if arch != run.architecture:
    raise ValueError(
      f"{run.pretrained.import_dir} holds another architecture than when "
      f"the grid was planned ({arch} != {run.architecture}); rerun the grid"
    )
  return params


def restore_params(run: grid_plan.ModelRun, workdir: str) -> Any:
  """The final float parameters of `run` (trained or imported), on the evaluation mesh.
  A trained run's final step that cannot be read raises checkpoint.UnreadableCheckpointError
  on every process (they agree; driver.py moves it aside and retrains)."""
  if run.pretrained:
    return restore_imported(run)
  trainer = loop.Trainer(run.config, multihost.eval_mesh(run.config.mesh))
  params, error = None, None
  with checkpoint.read_only(
    str(model_dir(workdir, run)), run.config.train.keep_checkpoints
  ) as ckpt:
    try:
      params = ckpt.restore_params(trainer.abstract_state().params, step=run.final_step)
    except checkpoint.UnreadableCheckpointError as e:
      error = e
  if multihost.agreed_all(error is None):
    return transformer.unstack_layers(params)  # trained with model.scan_layers: unroll
  raise error or checkpoint.UnreadableCheckpointError(
    f"the final checkpoint of {run.name} is unreadable on another process", run.final_step
  )


def move_aside_final_step(run: grid_plan.ModelRun, workdir: str, error: Exception) -> None:
  """Moves `run`'s unreadable final step aside (checkpoint.move_aside), so that training
  resumes from the step before it (or from scratch) and saves it again."""
  directory = checkpoint.checkpoints_dir(str(model_dir(workdir, run)))
  checkpoint.move_aside(directory, run.final_step, error)


def _adopt_legacy_dir(run: grid_plan.ModelRun, workdir: str) -> None:
  """A `W/models/<name>/` of a grid before `train_id` (see the module docstring): renamed
  to `model_dir` if its saved identity is `run`'s, else left and named. Process 0 looks
  and renames; every process calls this (a collective with several)."""
  old, new = legacy_model_dir(workdir, run), model_dir(workdir, run)
  if not multihost.agreed_flag(old.exists() and not new.exists()):
    return
  if multihost.is_writer():
    saved = checkpoint.saved_config(str(old))
    from kbit_jax.config import defaults

    diffs = (
      identity.differences(saved, run.config, defaults.base_config().to_dict())
      if saved is not None
      else ["no readable checkpoint"]
    )
    if not diffs:
      old.rename(new)
      print(
        f"grid: {run.name}: {old} (trained before model directories carried the training "
        f"identity's hash) is this model; renamed to {new.name}/",
        flush=True,
      )
    else:
      print(
        f"grid: {run.name}: {old} holds another model ({'; '.join(diffs[:3])}); left as "
        f"it is, this model is trained in {new.name}/",
        flush=True,
      )
  multihost.barrier(f"kbit-adopt-{run.dir_name}")


def check_workdirs(plan: grid_plan.Plan, workdir: str, adopt: bool = True) -> None:
  """For every trained model: adopts a legacy directory of it (`_adopt_legacy_dir`; not
  with `adopt=False`, a dry run), then WorkdirError if its directory holds another model's
  checkpoints (another training identity: checkpoint.check_workdir), naming the keys."""
  for m in plan.models:
    if not m.pretrained:
      if adopt:
        _adopt_legacy_dir(m, workdir)
      try:
        checkpoint.check_workdir(m.config, str(model_dir(workdir, m)))
      except checkpoint.WorkdirError as e:
        raise checkpoint.WorkdirError(f"grid size {m.name}: {e}") from None
      _check_kept(m, workdir)


def _check_kept(run: grid_plan.ModelRun, workdir: str) -> None:
  """ValueError if a step this model needs from its trunk's directory (its checkpoint, or
  a WSD branch's start) is past the trunk's saved steps but was not kept: an earlier run
  of that directory saved other steps; the grid would have to train it again."""
  if run.trunk is None or (run.branch_start and is_trained(run, workdir)):
    return
  need = run.branch_start or run.step
  trunk = run.trunk
  saved = _checkpoint_steps(model_dir(workdir, trunk), trunk.config.train.keep_checkpoints)
  if saved and need <= saved[-1] and need not in saved:
    raise ValueError(
      f"grid model {run.name}: step {need} of {model_dir(workdir, trunk)} was not kept "
      f"(saved steps: {saved}); that run was trained without train.keep_steps "
      f"{tuple(trunk.config.train.keep_steps)}: use another --workdir, or checkpoints "
      "among the saved steps"
    )


def is_trained(run: grid_plan.ModelRun, workdir: str) -> bool:
  """Whether `run` needs no training; raises for an imported model whose import dir is
  missing (run() asks this of every model with work, before any of it)."""
  if run.pretrained:
    run.check_import()
    return True
  steps = _checkpoint_steps(model_dir(workdir, run), run.config.train.keep_checkpoints)
  return run.final_step in steps

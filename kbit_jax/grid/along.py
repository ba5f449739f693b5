"""Checkpoints along training: the grid.checkpoints axis.

    runs = along.expand(trunk, (0.125, 0.25, 0.5, 1.0), config.grid)   # plan.make_plan

One training run per (size, seed[, grid.tokens budget]), the *trunk*, and the models
along it that the grid evaluates, each with every quantization cell. A checkpoint is a
token count (int) or a fraction of the run (float in (0, 1]); the end of the run is always
one of them. How a point along the run becomes a model depends on train.schedule:

  cosine  the trunk keeps those steps beside keep-N (train.keep_steps) and each is
          evaluated as it is: an intermediate checkpoint of a cosine run, mid-decay at
          a learning rate the run had not finished lowering. It is *not* a run trained
          to that D (whose cosine would have ended there): its records say so with
          `step` and `run_tokens` (the trunk's D), and the analysis keeps them apart.
  wsd     warmup-stable-decay (Hägele et al. 2024): the trunk keeps, for each budget s,
          the stable-phase step s - c (c = decay_fraction x s, the cool-down a run to s
          would have); a branch restores it and cools down to s in its own directory
          (W/models/<trunk>-wsd<s>/). A branch is the WSD run trained to s with that
          cool-down (bit-identical on CPU, tests/test_training_length.py), so each budget
          is a finished run, for the price of the trunk plus the cool-downs.

A checkpoint past the run's end, one that rounds to step 0 or to a step listed twice, and
a WSD branch whose cool-down would start inside the warmup are errors here, at plan time.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import ml_collections

from kbit_jax.config import checks

if TYPE_CHECKING:
  from kbit_jax.grid.plan import ModelRun


def checkpoint_steps(trunk: ModelRun, checkpoints: tuple, where: str) -> list[int]:
  """The trunk's steps of `checkpoints`, ascending, the run's last step included."""
  t = trunk.config.train
  per_step = t.batch_size * trunk.config.data.seq_len
  allowed = (
    f"allowed: token counts (ints) up to the run's {t.steps * per_step:,} tokens, or "
    "fractions of it (floats in (0, 1])"
  )
  steps = []
  for c in checkpoints:
    if isinstance(c, str):  # --config.grid.checkpoints=0.25,0.5 (plan.axis_values)
      c = float(c) if any(ch in c for ch in ".eE") else int(c) if c.isdigit() else c
    if isinstance(c, bool) or not isinstance(c, (int, float)):
      raise ValueError(f"{where}: {c!r} is not a checkpoint; {allowed}")
    if isinstance(c, float):
      if not 0 < c <= 1:
        raise ValueError(f"{where}: {c!r} is not a fraction of the run; {allowed}")
      step = round(c * t.steps)
    else:
      step = round(c / per_step)
      if step > t.steps:
        raise ValueError(
          f"{where}: {c:,} tokens (step {step}) is beyond the end of run {trunk.name} "
          f"({t.steps} steps of {per_step:,} tokens); {allowed}"
        )
    if step < 1:
      raise ValueError(f"{where}: {c!r} rounds to step 0 of run {trunk.name}; {allowed}")
    if step in steps:
      raise ValueError(
        f"{where}: {c!r} is step {step} of run {trunk.name}, which another checkpoint already names"
      )
    steps.append(step)
  return sorted(set(steps) | {t.steps})


def _branch_config(trunk: ModelRun, step: int, where: str) -> tuple[ml_collections.ConfigDict, int]:
  """(the WSD run to `step` a branch trains, the trunk step it starts from)."""
  c = ml_collections.ConfigDict(trunk.config.to_dict())
  t = c.train
  t.steps, t.keep_steps = step, ()
  t.eval_every, t.checkpoint_every = min(t.eval_every, step), min(t.checkpoint_every, step)
  start = step - checks.wsd_decay_steps(t)
  if start < t.warmup_steps:
    raise ValueError(
      f"{where}: the WSD branch to step {step} of run {trunk.name} would cool down from "
      f"step {start}, inside the warmup (train.warmup_steps={t.warmup_steps}); allowed: "
      f"checkpoints whose cool-down (decay_fraction={t.decay_fraction}) starts after it"
    )
  return c, start


def expand(trunk: ModelRun, checkpoints: tuple, grid: ml_collections.ConfigDict) -> list[ModelRun]:
  """[trunk, the models along it (ascending)]; [trunk] without checkpoints. Sets the
  trunk's train.keep_steps to the steps they need."""
  if not checkpoints:
    return [trunk]
  where = f"grid.checkpoints={grid.checkpoints!r}"
  if trunk.pretrained:
    raise ValueError(
      f"{where}: a pretrained grid has no training run to keep checkpoints of; "
      "allowed: () (hub revisions along training: pretrained.revisions)"
    )
  steps = checkpoint_steps(trunk, checkpoints, where)[:-1]
  if trunk.config.train.schedule != "wsd":
    trunk.config.train.keep_steps = tuple(steps)
    return [trunk] + [
      dataclasses.replace(trunk, cells=[], trunk=trunk, step=step) for step in steps
    ]
  branches = [_branch_config(trunk, step, where) for step in steps]
  trunk.config.train.keep_steps = tuple(start for _, start in branches)
  return [trunk] + [
    dataclasses.replace(trunk, config=c, cells=[], trunk=trunk, branch_start=start)
    for c, start in branches
  ]


def key_extras(run: ModelRun) -> dict[str, Any]:
  """What a trained model's cell keys add: nothing for a cosine run of its own (the keys
  of grids without this axis are unchanged); the schedule for WSD; for a model along a
  run its trunk's training tokens (and a cosine checkpoint's step)."""
  t = run.config.train
  extra: dict[str, Any] = {}
  if t.schedule != "cosine":
    extra.update(schedule=t.schedule, decay_fraction=t.decay_fraction)
  if run.trunk is not None:
    extra["run_tokens"] = run.trunk.train_tokens
    if not run.branch_start:
      extra["step"] = run.step
  return extra


def record_fields(run: ModelRun, non_embedding: int) -> dict[str, Any]:
  """A trained model's record fields of training length (the model group)."""
  trunk = run.trunk or run
  return dict(
    step=run.final_step,
    run=trunk.name,
    run_tokens=trunk.train_tokens,
    schedule=run.config.train.schedule,
    branch_start=run.branch_start,
    d_over_n=run.train_tokens / non_embedding,
  )

"""Orbax checkpoints: everything needed to resume (state, data-iterator state, config).

One `CheckpointManager` per workdir (`<workdir>/checkpoints`), keeping the newest N and,
beside them, the steps `train.keep_steps` names (the grid's checkpoints along training).
Saves are asynchronous; Orbax writes each step to a temporary directory and renames it
when complete, so a `kill -9` mid-save leaves the previous steps intact. A step that is
complete on disk but unreadable (a corrupt file) is skipped on restore with a warning,
falling back to the next older one.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

# The config keys that decide the saved state's tree. A checkpoint saved with other
# values cannot be restored: resuming would skip it as unreadable, train from scratch and
# let keep-N delete it, so check_workdir refuses first.
TREE_KEYS = ("model.preset", "model.scan_layers")


class WorkdirError(ValueError):
  """The workdir holds checkpoints this config cannot resume (check_workdir)."""


def checkpoints_dir(workdir: str) -> epath.Path:
  """`<workdir>/checkpoints`; Orbax wants absolute paths, so a relative local workdir is
  taken from the cwd."""
  workdir = str(workdir) if "://" in str(workdir) else os.path.abspath(workdir)
  return epath.Path(workdir) / "checkpoints"


@contextlib.contextmanager
def quiet_orbax():
  """Orbax logs at ERROR only (its warnings about read-only managers are expected)."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


@contextlib.contextmanager
def read_only(workdir: str, keep: int):
  """A read-only Checkpointer of `workdir` (nothing is deleted: keep only names the
  policy), closed on exit."""
  with quiet_orbax():
    ckpt = Checkpointer(workdir, keep, read_only=True)
  try:
    yield ckpt
  finally:
    ckpt.close()


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises WorkdirError, naming the keys, if `workdir` holds checkpoints of another model
  (TREE_KEYS differ from the newest readable saved config); nothing is written."""
  directory = checkpoints_dir(workdir)
  if not directory.exists():
    return
  with read_only(workdir, 1) as ckpt:
    saved = ckpt.saved_config()
  if saved is None:
    return
  from kbit_jax.config import defaults

  base = defaults.base_config()  # for keys that older checkpoints lack
  diffs = []
  for key in TREE_KEYS:
    section, name = key.split(".")
    was, now = saved.get(section, {}).get(name, base[section][name]), config[section][name]
    if was != now:
      diffs.append(f"{key}={now!r} but the saved model has {was!r}")
  if diffs:
    raise WorkdirError(
      f"{directory} holds checkpoints of another model: "
      f"{'; '.join(diffs)}. Resuming cannot restore them; use another "
      "workdir, or the saved values to resume"
    )


class Checkpointer:
  """Saves and restores one workdir's checkpoints: the newest `keep`, and every step of
  `keep_steps` once saved (Orbax's preservation policies: LatestN or CustomSteps)."""

  def __init__(
    self, workdir: str, keep: int, *, read_only: bool = False, keep_steps: tuple[int, ...] = ()
  ):
    self.directory = checkpoints_dir(workdir)
    if keep_steps and not read_only:
      policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
          ocp.checkpoint_managers.LatestN(n=keep),
          ocp.checkpoint_managers.CustomSteps(steps=tuple(keep_steps)),
        ]
      )
      options = ocp.CheckpointManagerOptions(create=True, preservation_policy=policy)
    else:
      options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only
      )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data", "config")
    )

  def save(self, step: int, state: Any, data_state: dict, config: ml_collections.ConfigDict):
    self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config.to_dict()),
      ),
    )

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def saved_config(self) -> dict | None:
    """The config saved with the newest step whose config is readable, or None."""
    for step in reversed(self.steps()):
      try:
        return dict(
          self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
        )
      except Exception:
        continue
    return None

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """Newest readable (step, state, data_state), each array in `abstract_state`'s sharding.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings: restoring onto
    a different mesh than the one that saved works, Orbax reshards while reading.
    """
    for step in reversed(self.steps()):
      try:
        return step, *self.restore_step(step, abstract_state)
      except Exception as e:
        logging.warning(
          "checkpoint at step %d in %s is unreadable (%s: %s); falling back to the previous one",
          step,
          self.directory,
          type(e).__name__,
          e,
        )
        print(
          f"WARNING: checkpoint step {step} unreadable ({type(e).__name__}); "
          "falling back to the previous one",
          flush=True,
        )
    return None

  def restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(state, data_state) of `step` (a WSD branch's start: train/loop.py)."""
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
      ),
    )
    return restored.state, dict(restored.data)

  def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
    """Only the model parameters (for evaluation), from `step` or the newest readable."""
    steps = [step] if step is not None else list(reversed(self.steps()))
    for s in steps:
      try:
        restored = self.manager.restore(
          s,
          args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
              item={"params": abstract_params},
              restore_args=jax.tree.map(
                lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), {"params": abstract_params}
              ),
              partial_restore=True,
            )
          ),
        )
        return restored.state["params"]
      except Exception as e:
        logging.warning("params at step %d unreadable (%s); trying older", s, e)
    raise FileNotFoundError(f"no readable checkpoint with params in {self.directory}")

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()

"""Orbax checkpoints: everything needed to resume (state, data-iterator state, config).

One `CheckpointManager` per workdir (`<workdir>/checkpoints`), keeping the newest N and,
beside them, the steps `train.keep_steps` names (the grid's checkpoints along training).
Saves are asynchronous; Orbax writes each step to a temporary directory and renames it
when complete, so a `kill -9` mid-save leaves the previous steps intact (and the writer,
which holds the workdir's lock, removes such temporary directories when it starts). A
step that is complete on disk but unreadable (a corrupt or missing file) is moved aside
on restore, to `checkpoints/unreadable-<step>-<time>/`, named in one line, and the next
older one is tried: Orbax never saves a step at or below the newest one it lists, so an
unreadable step left in place would be retrained and never replaced. With every step
unreadable, training starts from scratch and says so. On several processes every
process tries the same step and they agree: a step unreadable on any process is moved
aside (by process 0) for all.

A workdir's checkpoints belong to one model: `check_workdir` refuses a config whose
training identity (train/identity.py: preset, data, schedule, batch, steps, seed, ...)
differs from the saved one, naming the keys, before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from kbit_jax.train import identity
from kbit_jax.train.workdir_lock import WorkdirError

__all__ = [
  "CheckpointWriteError",
  "Checkpointer",
  "UnreadableCheckpointError",
  "WorkdirError",
  "check_workdir",
]
UNREADABLE_PREFIX = "unreadable-"


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (a full disk, a lost permission, ...)."""


class UnreadableCheckpointError(FileNotFoundError):
  """A checkpoint step could not be read (`step`: the first step tried)."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def _os_cause(e: BaseException) -> str | None:
  """The operating-system error under `e`, as "File too large (errno 27)", or None.

  Python's OSErrors carry it as `strerror`; TensorStore (under Orbax) only prints
  `[os_error_code='27']` somewhere in a message of several hundred characters."""
  while e is not None:
    if isinstance(e, OSError) and e.errno:
      return f"{os.strerror(e.errno)} (errno {e.errno})"
    match = re.search(r"os_error_code='?(\d+)", str(e))
    if match:
      return f"{os.strerror(int(match[1]))} (errno {match[1]})"
    e = e.__cause__ or e.__context__
  return None


def _one_line(e: BaseException, head: int = 120, tail: int = 240) -> str:
  """An exception as one short line, its operating-system cause first (Orbax and
  TensorStore errors span many lines, with the cause buried in them)."""
  text = " ".join(str(e).split())
  if len(text) > head + tail + 5:
    text = f"{text[:head]} ... {text[-tail:]}"
  cause = _os_cause(e)
  return f"{cause}: {type(e).__name__}: {text}" if cause else f"{type(e).__name__}: {text}"


def _all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process (a collective with several processes)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def checkpoints_dir(workdir: str) -> epath.Path:
  """`<workdir>/checkpoints`; Orbax wants absolute paths, so a relative local workdir is
  taken from the cwd."""
  workdir = str(workdir) if "://" in str(workdir) else os.path.abspath(workdir)
  return epath.Path(workdir) / "checkpoints"


@contextlib.contextmanager
def interrupt_after():
  """Ctrl-C (SIGINT) inside the block is held until the block ends, then raised as
  KeyboardInterrupt: a save or a close cut half-way leaves Orbax's threads writing while
  Python exits (measured: 1 of 12 interrupted trainings aborted; in a test run, one logged
  a step without metadata). The main thread only (signal handlers live there)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  held = []
  previous = signal.signal(signal.SIGINT, lambda *_: held.append(True))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if held:
    raise KeyboardInterrupt


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


def move_aside(directory: epath.Path, step: int, error: BaseException) -> epath.Path:
  """Moves unreadable `step` of the checkpoints `directory` to
  `unreadable-<step>-<time>/` beside it (process 0; every process calls this), so that
  Orbax lists it no more and the step can be saved again; says so in one line and
  returns the new path."""
  stamp = time.strftime("%Y%m%dT%H%M%S")
  target = directory / f"{UNREADABLE_PREFIX}{step}-{stamp}"
  if jax.process_index() == 0:
    n = 1
    while target.exists():
      n, target = n + 1, directory / f"{UNREADABLE_PREFIX}{step}-{stamp}-{n}"
    (directory / str(step)).rename(target)
    logging.info("checkpoint step %d unreadable (%s); moved to %s", step, error, target)
    print(
      f"WARNING: checkpoint step {step} in {directory} is unreadable "
      f"({_one_line(error)}); moved to {target.name}/",
      flush=True,
    )
  _sync(f"kbit-move-aside-{step}")
  return target


def saved_config(workdir: str) -> dict | None:
  """The config saved with the newest checkpoint of `workdir` whose config is readable."""
  if not checkpoints_dir(workdir).exists():
    return None
  with read_only(workdir, 1) as ckpt:
    return ckpt.saved_config()


def check_workdir(
  config: ml_collections.ConfigDict, workdir: str, allowed: tuple[str, ...] = ()
) -> None:
  """Raises WorkdirError, naming the keys, if `workdir` holds checkpoints of another model
  (a training identity, train/identity.py, that differs from the newest readable saved
  config's in a key other than `allowed`'s); nothing is written."""
  saved = saved_config(workdir)
  if saved is None:
    return
  from kbit_jax.config import defaults

  diffs = identity.differences(saved, config, defaults.base_config().to_dict(), allowed)
  if diffs:
    raise WorkdirError(
      f"{checkpoints_dir(workdir)} holds checkpoints of another model: "
      f"{'; '.join(diffs)}. Resuming would train another model than the one saved; use "
      "another workdir, or the saved values to resume"
    )


class Checkpointer:
  """Saves and restores one workdir's checkpoints: the newest `keep`, and every step of
  `keep_steps` once saved (Orbax's preservation policies: LatestN or CustomSteps)."""

  def __init__(
    self, workdir: str, keep: int, *, read_only: bool = False, keep_steps: tuple[int, ...] = ()
  ):
    self.directory = checkpoints_dir(workdir)
    if keep_steps and not read_only:
      # Beside the newest `keep`, the steps a grid evaluates along training.
      policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
          ocp.checkpoint_managers.LatestN(n=keep),
          ocp.checkpoint_managers.CustomSteps(steps=tuple(keep_steps)),
        ]
      )
      kept = dict(preservation_policy=policy)
    else:
      kept = dict(max_to_keep=keep)
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        **kept,
        create=not read_only,
        read_only=read_only,
        # Temporary directories of saves a kill interrupted: the writer holds the
        # workdir's lock (workdir_lock.py), so no other save can be in flight.
        cleanup_tmp_directories=not read_only,
      ),
      item_names=("state", "data", "config"),
    )

  @contextlib.contextmanager
  def _writing(self, what: str):
    """Orbax's write errors (raised here or, for an asynchronous save, at the next save or
    wait) as one CheckpointWriteError naming the directory; Ctrl-C waits for the write
    (`interrupt_after`)."""
    try:
      with interrupt_after():
        yield
    except (KeyboardInterrupt, CheckpointWriteError):
      raise
    except Exception as e:  # noqa: BLE001 (TensorStore reports I/O errors as ValueError)
      raise CheckpointWriteError(f"{what} in {self.directory} failed: {_one_line(e)}") from e

  def save(self, step: int, state: Any, data_state: dict, config: ml_collections.ConfigDict):
    with self._writing(f"saving checkpoint step {step}"):
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

  def move_aside(self, step: int, error: BaseException) -> epath.Path:
    """`move_aside(directory, step, error)`, then Orbax's list of steps is reread."""
    target = move_aside(self.directory, step, error)
    self.manager.reload()
    return target

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """Newest readable (step, state, data_state), each array in `abstract_state`'s sharding;
    unreadable newer steps are moved aside (`move_aside`). None: nothing to resume from
    (said in one line when there were only unreadable steps).

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings: restoring onto
    a different mesh than the one that saved works, Orbax reshards while reading.
    """
    unreadable = 0
    for step in reversed(self.steps()):
      restored, error = None, None
      try:
        restored = self.restore_step(step, abstract_state)
      except Exception as e:  # noqa: BLE001 (a corrupt step raises many kinds)
        error = e
      if _all_processes(error is None):
        return step, *restored
      unreadable += 1
      self.move_aside(step, error or RuntimeError("unreadable on another process"))
    if unreadable and jax.process_index() == 0:
      print(f"no readable checkpoint in {self.directory}: training from scratch", flush=True)
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
    """Only the model parameters (for evaluation), from `step` or the newest readable.
    An unreadable `step` raises UnreadableCheckpointError (the caller decides whether to
    move it aside: `move_aside`)."""
    steps = [step] if step is not None else list(reversed(self.steps()))
    error: BaseException | None = None
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
      except Exception as e:  # noqa: BLE001
        error = e
        logging.info("params at step %d unreadable (%s); trying older", s, e)
    where = f"step {step}" if step is not None else "any step"
    raise UnreadableCheckpointError(
      f"no readable checkpoint with params at {where} in {self.directory}"
      + (f" ({_one_line(error)})" if error else ""),
      steps[0] if steps else -1,
    )

  def wait(self):
    with self._writing("writing a checkpoint"):
      self.manager.wait_until_finished()

  def close(self):
    with self._writing("writing a checkpoint"):
      self.manager.close()

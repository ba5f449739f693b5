"""The workdir can be trusted: each case runs `kbit` in fresh subprocesses, as a user
would, and corrupts, kills or doubles it (README.md, "Reliability").

  * a corrupt newest checkpoint is moved aside and saved again; with none readable,
    training starts from scratch, says so and saves again (`kbit train`, `kbit grid`);
  * one process per workdir: a second `kbit train` / `kbit grid` is refused in one line,
    and the lock of a `kill -9`ed run is stale, not in the way;
  * every failure ends in one line `kbit CMD: ...` (missing or broken config file, a
    workdir that is a file or read-only, a full disk, Ctrl-C, bad flag values, a model
    of another training identity, an empty or missing results store).
"""

import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ["train", "--config", "configs/lm.py:runlocal", "--config.mesh.data=1"]
GRID = [
  "grid",
  "--config",
  "configs/grid.py:runlocal",
  "--config.grid.bits=(16,)",
  "--config.base.mesh.data=1",
]


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")


def kbit(*args, timeout=600, preexec_fn=None):
  return subprocess.run(
    [sys.executable, "-m", "kbit_jax.main", *map(str, args)],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
    preexec_fn=preexec_fn,
  )


def start(*args):
  return subprocess.Popen(
    [sys.executable, "-m", "kbit_jax.main", *map(str, args)],
    cwd=REPO,
    env=_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def one_line(out, command):
  """The failure's stderr: exactly one line, `kbit <command>: ...`."""
  lines = out.stderr.splitlines()
  assert out.returncode != 0 and len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith(f"kbit {command}: "), lines[0]
  return lines[0]


def checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


# ----------------------------------------------------------------------------- corrupt


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_moved_aside_and_saved_again(tmp_path):
  """The issue: with step 20's state/_METADATA gone, a rerun fell back to step 10,
  trained 11-20 and exited 0, but step 20 stayed unreadable (Orbax saves no step at or
  below the newest it lists), so every rerun repeated it; with every step unreadable it
  retrained silently and saved nothing."""
  workdir = tmp_path / "w"
  out = kbit(*TRAIN, "--workdir", workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  (workdir / "checkpoints" / "20" / "state" / "_METADATA").unlink()
  out = kbit(*TRAIN, "--workdir", workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "checkpoint step 20 in" in out.stdout and "is unreadable" in out.stdout
  assert "resumed from step 10" in out.stdout
  (aside,) = (workdir / "checkpoints").glob("unreadable-20-*")
  assert f"moved to {aside.name}/" in out.stdout
  assert checkpoint_steps(workdir) == [10, 20]
  out = kbit(*TRAIN, "--workdir", workdir)  # step 20 is readable again: nothing to redo
  assert out.returncode == 0 and "already trained: step 20" in out.stdout, out.stdout

  # Every step unreadable (one truncated data file each): from scratch, and saved.
  for step in (10, 20):
    for f in (workdir / "checkpoints" / str(step) / "state" / "ocdbt.process_0" / "d").iterdir():
      f.write_bytes(f.read_bytes()[:10])
  out = kbit(*TRAIN, "--workdir", workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "no readable checkpoint in" in out.stdout and "training from scratch" in out.stdout
  assert "resumed from" not in out.stdout
  assert checkpoint_steps(workdir) == [10, 20]
  assert len(list((workdir / "checkpoints").glob("unreadable-*"))) == 3
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "train/loss" in r]
  assert steps == sorted(set(steps)) == [5, 10, 15, 20], "each step once, after two reruns"


@pytest.mark.slow
def test_the_grid_retrains_a_model_whose_final_checkpoint_is_unreadable(tmp_path):
  """The issue: `kbit grid` ended in `FileNotFoundError ... no readable checkpoint`
  under "Event loop is closed" noise (keep_checkpoints=1: the final step is the only
  one). Now the step is moved aside, the model retrained from scratch, the cell
  evaluated."""
  out = kbit(*GRID, "--workdir", tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  (model,) = (tmp_path / "models").iterdir()
  # Every data file cut to 10 bytes: the params-only restore must fail whichever file
  # (and whichever half of it) holds the params. Cut to half, the params happened to lie in
  # the kept half on CI (writes are concurrent, so the layout varies) and the restore passed.
  for f in (model / "checkpoints" / "20" / "state" / "ocdbt.process_0" / "d").iterdir():
    f.write_bytes(f.read_bytes()[:10])
  (record,) = (tmp_path / "results").glob("*.json")
  record.unlink()
  out = kbit(*GRID, "--workdir", tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "its final checkpoint is unreadable; retraining" in out.stdout
  assert "grid: s0-seed0: training 5,120 tokens" in out.stdout and "1 evaluated now" in out.stdout
  assert checkpoint_steps(model) == [20] and list((model / "checkpoints").glob("unreadable-20-*"))
  assert "Event loop is closed" not in out.stderr and "Traceback" not in out.stderr


# ----------------------------------------------------------------------------- locks


def _wait_for(proc, text, deadline_s=300):
  """Reads `proc`'s stdout until a line contains `text`; returns what was read."""
  seen, deadline = [], time.time() + deadline_s
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line and proc.poll() is not None:
      break
    seen.append(line)
    if text in line:
      return "".join(seen)
  raise AssertionError(f"never printed {text!r}:\n{''.join(seen)[-3000:]}")


@pytest.mark.slow
def test_one_run_per_workdir_and_a_killed_runs_lock_is_stale(tmp_path):
  """A second `kbit train` or `kbit grid` on a workdir in use is refused in one line
  naming the holder (before: both trained into the same checkpoints); after `kill -9`
  the lock file stays but is stale: the next run takes it over, says so and resumes."""
  workdir = tmp_path / "w"
  long_run = [*TRAIN, "--config.train.steps=100000", "--config.train.checkpoint_every=5"]
  first = start(*long_run, "--workdir", workdir)
  try:
    _wait_for(first, "step 5/")
    holder = json.loads((workdir / "kbit.lock").read_text())
    assert holder["pid"] == first.pid and holder["command"] == "kbit train"
    line = one_line(kbit(*long_run, "--workdir", workdir), "train")
    assert f"is in use by pid {first.pid} on host {holder['host']} (kbit train" in line
    line = one_line(kbit(*GRID, "--workdir", workdir), "grid")
    assert f"is in use by pid {first.pid}" in line
    while not checkpoint_steps(workdir):
      time.sleep(0.1)
  finally:
    first.kill()  # SIGKILL: no clean-up runs
    first.wait()
  assert (workdir / "kbit.lock").exists(), "a killed run leaves its lock file"
  again = start(*long_run, "--workdir", workdir)
  try:
    out = _wait_for(again, "resumed from step")
    assert f"replaced a stale lock of pid {first.pid} on host {holder['host']}" in out
    assert json.loads((workdir / "kbit.lock").read_text())["pid"] == again.pid
  finally:
    again.send_signal(signal.SIGINT)
    _, err = again.communicate(timeout=300)
  assert again.returncode == 130 and err.splitlines() == ["kbit train: interrupted"], err
  assert not (workdir / "kbit.lock").exists(), "an interrupted run releases its lock"


# ----------------------------------------------------------------------------- one line


def _limit_file_size():
  resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # a full disk: EFBIG


def test_a_write_error_names_its_operating_system_cause_first():
  """TensorStore reports EFBIG only as `[os_error_code='27']` in the middle of a ~1000
  character message (CI's run, where the cut to one line dropped "File too large");
  Python's OSError carries errno. Either way the cause leads the line."""
  from kbit_jax.train import checkpoint

  buried = "x" * 600 + " [os_error_code='27'] " + "y" * 600
  line = checkpoint._one_line(ValueError(buried))
  assert line.startswith("File too large (errno 27): ValueError: xxx")
  assert "os_error_code" not in line  # cut away, the cause is named anyway
  try:
    try:
      raise OSError(28, "No space left on device")
    except OSError as e:
      raise RuntimeError("commit failed") from e
  except RuntimeError as e:
    line = checkpoint._one_line(e)
    assert line == "No space left on device (errno 28): RuntimeError: commit failed"
  assert checkpoint._one_line(KeyError("k")) == "KeyError: 'k'"


def test_a_failed_write_leaves_no_unawaited_coroutine_warning_behind():
  """CI's full-disk run ended in three lines: ours, then Python's "coroutine
  'async_serialize_from_host.<locals>.write_fragment' was never awaited" and its tracemalloc
  hint, printed at exit for the Orbax write the error cut short. With `kbit`'s quiet
  hooks installed, a coroutine dropped unawaited prints nothing; without them, it does."""
  script = (
    "import sys\n"
    "if sys.argv[1] == 'quiet':\n"
    "  from kbit_jax import main\n"
    "  main._Quiet().install()\n"
    "async def write_fragment(): pass\n"
    "pending = write_fragment()\n"
  )
  runs = {
    mode: subprocess.run(
      [sys.executable, "-c", script, mode], cwd=REPO, capture_output=True, text=True
    )
    for mode in ("loud", "quiet")
  }
  assert "coroutine 'write_fragment' was never awaited" in runs["loud"].stderr
  assert (runs["quiet"].returncode, runs["quiet"].stderr) == (0, "")


def test_ctrl_c_during_a_checkpoint_write_is_raised_when_the_write_ends():
  """A SIGINT inside `interrupt_after` (around every save, wait and close) lets the block
  finish, then raises KeyboardInterrupt; the handler before it is back afterwards. Before,
  Ctrl-C cut saves half-way: 1 of 12 interrupted trainings aborted (SIGABRT) with Orbax's
  threads still writing, and in a suite run one logged a step without metadata."""
  from kbit_jax.train import checkpoint

  finished, before = [], signal.getsignal(signal.SIGINT)
  with pytest.raises(KeyboardInterrupt):
    with checkpoint.interrupt_after():
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.01)  # the handler runs here, between bytecodes
      finished.append(True)
  assert finished == [True]
  assert signal.getsignal(signal.SIGINT) is before
  with checkpoint.interrupt_after():  # no signal: nothing raised
    finished.append(True)
  assert finished == [True, True]


@pytest.mark.slow
def test_every_failure_ends_in_one_line(tmp_path):
  lm = "configs/lm.py:runlocal"
  (tmp_path / "bad.py").write_text("def get_config(arg=None:\n  pass\n")
  (tmp_path / "afile").write_text("")
  (tmp_path / "store").mkdir()
  (tmp_path / "store" / "0123456789abcdef.json").write_text('{"key": {"bi')  # truncated
  cases = [
    (("train", "--config", tmp_path / "nope.py", "--workdir", tmp_path / "a"), "does not exist"),
    (("train", "--config", tmp_path / "bad.py", "--workdir", tmp_path / "a"), "line 1"),
    (("train", "--config", f"{lm},sizee=3", "--workdir", tmp_path / "a"), "'sizee' is unknown"),
    (("train", "--config", lm, "--workdir", tmp_path / "afile"), "is a file"),
    (("train", "--config", lm, "--workdir", "/sys/kernel"), "cannot write to workdir"),
    (("train", "--config", lm, "--config.mesh.data=3", "--workdir", tmp_path / "m"), "3 != 1"),
    (("grid", "--config", "configs/grid.py:runlocal", "--workdir", tmp_path / "afile"), "a file"),
    (("codebook", "--bits", "9"), "quant.bits=9 has no codebook"),
    (("report", "--results", tmp_path / "typo", "--out", tmp_path / "r"), "does not exist"),
    (("fit", "--results", tmp_path, "--out", tmp_path / "r"), "holds no records"),
    (("report", "--results", tmp_path / "store", "--out", tmp_path / "r"), "is unreadable"),
    (("import", "--hf_dir", tmp_path, "--workdir", tmp_path / "i"), "config.json is missing"),
  ]
  for args, message in cases:
    line = one_line(kbit(*args, timeout=300), "import" if args[0] == "import" else args[0])
    assert message in line, (args, line)
  assert not (tmp_path / "r").exists(), "a report of nothing is not written"

  # A full disk while saving the step-10 checkpoint: one line naming the write, not
  # Orbax's background-thread traceback labelled "invalid config".
  out = kbit(*TRAIN, "--workdir", tmp_path / "full", preexec_fn=_limit_file_size)
  line = one_line(out, "train")
  assert "cannot write the workdir: saving checkpoint step" in line or (
    "cannot write the workdir: writing a checkpoint" in line
  ), line
  assert "File too large" in line

  # Fewer steps than a workdir holds (before: exit 0, silently), another lr: refused.
  workdir = tmp_path / "t"
  assert kbit(*TRAIN, "--config.train.steps=10", "--workdir", workdir).returncode == 0
  line = one_line(kbit(*TRAIN, "--config.train.steps=5", "--workdir", workdir), "train")
  assert "train.steps=5 but the saved model has 10" in line
  line = one_line(kbit(*TRAIN, "--config.train.lr=0.03", "--workdir", workdir), "train")
  assert "train.lr=0.03 but the saved model has 0.003" in line

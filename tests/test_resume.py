"""`kill -9` mid-training, rerun the same command: the loss curve is bit-identical."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ARGS = [
  "--config",
  "configs/lm.py:size=s1,steps=80,batch=16,seq_len=64",
  "--config.train.log_every=1",
  "--config.train.checkpoint_every=20",
  "--config.train.eval_every=1000",
  "--config.mesh.data=1",
]
REPO = pathlib.Path(__file__).resolve().parents[1]


def kbit_train(workdir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.Popen(
    [sys.executable, "-m", "kbit_jax.main", "train", *ARGS, "--workdir", str(workdir)],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def losses(workdir):
  """step -> loss (each step is logged once: the resumed run drops the rows it replays)."""
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "train/loss" in row:
      out[row["step"]] = row["train/loss"]
  return out


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(tmp_path):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  proc = kbit_train(straight)
  assert proc.wait(timeout=600) == 0, proc.stdout.read()

  proc = kbit_train(killed)
  deadline = time.time() + 600
  # Kill once the step-20 checkpoint is complete (Orbax renames it into place when done).
  while not (killed / "checkpoints" / "20").exists():
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  logged_before_kill = max(losses(killed))
  assert 20 <= logged_before_kill < 80, "the kill came too late to test a resume"

  proc = kbit_train(killed)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out
  assert "resumed from step" in out
  assert losses(killed) == losses(straight)  # exact float equality, every step
  rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "train/loss" in r]
  assert steps == sorted(set(steps)), "each step logged once, the replayed ones too"

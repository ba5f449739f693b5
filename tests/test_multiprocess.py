"""Two processes (jax.distributed on localhost, 2 CPU devices each) train like one process.

Losses must equal those of one process with the same 4-device mesh (tolerance 1e-6
relative: the same program, only the collectives' transport differs); only process 0
writes metrics; Orbax writes each checkpoint collectively, once.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["train", "--config", "configs/lm.py:runlocal", "--config.train.log_every=1",
        "--config.mesh.data=4"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, devices, extra=()):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, "-m", "kbit_jax.main", *ARGS, *extra,
                           "--workdir", str(workdir)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  one = _start(tmp_path / "one", devices=4)
  out, _ = one.communicate(timeout=600)
  assert one.returncode == 0, out

  port = _free_port()
  dist = ["--config.mesh.distributed=True", f"--config.mesh.coordinator_address=127.0.0.1:{port}",
          "--config.mesh.num_processes=2"]
  procs = [_start(tmp_path / "two", 2, [*dist, f"--config.mesh.process_id={i}"])
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outs)

  expected, got = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(got) == list(range(1, 21)), "process 0 logs each step once; process 1 never"
  for step, loss in expected.items():
    assert got[step] == pytest.approx(loss, rel=1e-6), step
  assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()
                if p.name.isdigit()) == ["10", "20"]

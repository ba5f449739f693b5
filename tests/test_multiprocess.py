"""Two processes (jax.distributed on localhost, 2 CPU devices each) train and run a grid
like one process with 4 devices.

Training: losses must equal those of one process with the same 4-device mesh (tolerance
1e-6 relative: the same program, only the collectives' transport differs); only process
0 writes metrics; Orbax writes each checkpoint collectively, once.

Grid (`kbit grid`, tiny config cut to 2 cells): every process trains (one SPMD program), the
processes share out the cells (each evaluates one on its own devices) and process 0 alone
prints and writes one record per cell, the other process's gathered to it. The records'
metrics must equal the one-process run's within 1e-5 relative: the trained parameters agree
to the training tolerance above (bit-identical in practice) and evaluation is the same
single-device program on both sides; accuracies are item counts, so they must agree exactly
unless an item sits on a near-tie. Total bits come from the shapes alone and must be equal.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = [
  "train",
  "--config",
  "configs/lm.py:runlocal",
  "--config.train.log_every=1",
  "--config.mesh.data=4",
]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, devices, extra=(), args=ARGS):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen(
    [sys.executable, "-m", "kbit_jax.main", *args, *extra, "--workdir", str(workdir)],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _distributed(prefix=""):
  """Flags of process i of 2 on a fresh localhost port (`prefix`: the mesh's section)."""
  port = _free_port()
  flags = [
    f"--config.{prefix}mesh.distributed=True",
    f"--config.{prefix}mesh.coordinator_address=127.0.0.1:{port}",
    f"--config.{prefix}mesh.num_processes=2",
  ]
  return lambda i: [*flags, f"--config.{prefix}mesh.process_id={i}"]


def _run_two(workdir, args):
  flags = _distributed("base." if args[0] == "grid" else "")
  procs = [_start(workdir, 2, flags(i), args) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outs)
  return outs


def _losses(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  one = _start(tmp_path / "one", devices=4)
  out, _ = one.communicate(timeout=600)
  assert one.returncode == 0, out

  _run_two(tmp_path / "two", ARGS)

  expected, got = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(got) == list(range(1, 21)), "process 0 logs each step once; process 1 never"
  for step, loss in expected.items():
    assert got[step] == pytest.approx(loss, rel=1e-6), step
  assert sorted(
    p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit()
  ) == ["10", "20"]


GRID_ARGS = [
  "grid",
  "--config",
  "configs/grid.py:runlocal",
  "--config.grid.bits=(4,16)",
  "--config.grid.dtypes=('int',)",
]  # s0 trained 20 steps; cells k16, k4 int B64
TABLES = "mean/acc at B=64"


def _records(workdir):
  records = [json.loads(p.read_text()) for p in (workdir / "results").iterdir()]
  assert all(
    p.suffix == ".json" and not p.name.startswith(".") for p in (workdir / "results").iterdir()
  ), "no temporary or stray files"
  return {r["name"]: r for r in records}


def _assert_same_metrics(got, expected, name):
  assert got["id"] == expected["id"] and got["bits"] == expected["bits"], name
  for task, metrics in expected["metrics"].items():
    for metric, value in metrics.items():
      assert got["metrics"][task][metric] == pytest.approx(value, rel=1e-5), (name, task, metric)


@pytest.mark.slow
def test_two_processes_run_the_grid_like_one(tmp_path):
  one = _start(tmp_path / "one", 4, args=GRID_ARGS)
  out, _ = one.communicate(timeout=600)
  assert one.returncode == 0, out
  assert "grid done: 2 cells (2 evaluated now" in out and TABLES in out

  two = tmp_path / "two"
  out0, out1 = _run_two(two, GRID_ARGS)
  assert "grid done: 2 cells (2 evaluated now" in out0 and TABLES in out0
  for printed_by_process_0 in ("grid plan", "grid 1/2", "grid done", TABLES):
    assert printed_by_process_0 not in out1, out1

  expected, got = _records(tmp_path / "one"), _records(two)
  assert len(expected) == 2 and sorted(got) == sorted(expected), "one record per cell"
  for name, record in expected.items():
    _assert_same_metrics(got[name], record, name)
  assert sorted(r["process"] for r in got.values()) == [0, 1], "each process took a cell"
  (model,) = (two / "models").iterdir()  # s0-seed0-<train_id>: one directory, written once
  assert re.fullmatch(r"s0-seed0-[0-9a-f]{8}", model.name), model.name
  assert sorted(p.name for p in (model / "checkpoints").iterdir() if p.is_dir()) == ["20"], (
    "one finished checkpoint (keep_checkpoints=1), written once"
  )
  losses = _losses(model)
  assert sorted(losses) == [10, 20], "process 0 logs each step once; process 1 never"
  for step, loss in _losses(tmp_path / "one" / "models" / model.name).items():
    assert losses[step] == pytest.approx(loss, rel=1e-6), step

  # Rerun with one record gone: a round of one cell for two processes; process 1 has
  # none, yet takes part in the gather (else both would hang).
  (two / "results" / f"{got['s0-seed0 k16']['id']}.json").unlink()
  out0, _ = _run_two(two, GRID_ARGS)
  assert "grid done: 2 cells (1 evaluated now, 1 found finished)" in out0
  again = _records(two)
  assert again["s0-seed0 k16"]["process"] == 0 and sorted(again) == sorted(expected)
  _assert_same_metrics(again["s0-seed0 k16"], expected["s0-seed0 k16"], "one-cell round")

  # Rerun with one record gone and fsdp = 4, every device of both processes: both agree
  # (process 0's finished cells) to reuse the model and evaluate just that cell, now on
  # one evaluation mesh across the two processes (parameters sharded over both).
  (two / "results" / f"{got['s0-seed0 k16']['id']}.json").unlink()
  out0, out1 = _run_two(two, [*GRID_ARGS, "--config.base.mesh.data=1", "--config.base.mesh.fsdp=4"])
  assert "2 cells (1 already finished)" in out0 and "grid 2/2 s0-seed0 k16" in out0
  assert "grid done: 2 cells (1 evaluated now, 1 found finished)" in out0
  assert "reusing the trained model" in out0 and TABLES not in out1
  rerun = _records(two)
  assert sorted(rerun) == sorted(expected)
  _assert_same_metrics(rerun["s0-seed0 k16"], expected["s0-seed0 k16"], "fsdp=4 rerun")
  assert rerun["s0-seed0 k16"]["process"] == 0, "one mesh over both: process 0's record"

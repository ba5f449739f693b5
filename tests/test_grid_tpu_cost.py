"""TPU chip-hours and dollars of a grid from its dry run's FLOPs (kbit_jax/grid/tpu_cost.py)."""

import pathlib
import types

import ml_collections
import pytest

from kbit_jax.config import files
from kbit_jax.grid import driver, tpu_cost
from kbit_jax.grid import plan as grid_plan
from kbit_jax.model import flops, presets

grid_config = files.load_module(pathlib.Path(__file__).resolve().parents[1] / "configs" / "grid.py")


def _run(name, preset, seq_len):
  config = ml_collections.ConfigDict({"data": {"seq_len": seq_len}})
  return types.SimpleNamespace(name=name, architecture=presets.get_preset(preset), config=config)


def test_grid_flops_of_a_made_up_plan():
  plan = types.SimpleNamespace(models=[_run("a", "s1", 128), _run("b", "s2", 64)])
  cost = {
    "per_model": {
      "a": dict(train_flops=3e12, eval_tokens_per_cell=1000, cells=61),
      "b": dict(train_flops=0.0, eval_tokens_per_cell=500, cells=2),
    }
  }  # b: imported
  got = tpu_cost.grid_flops(plan, cost)
  assert got["train"] == 3e12

  def forward(p, n):
    return flops.flops_per_token(presets.get_preset(p), n, training=False)

  assert got["eval"] == pytest.approx(forward("s1", 128) * 1000 * 61 + forward("s2", 64) * 500 * 2)


def test_chip_hours_and_dollars():
  # one hour of a chip of 100 TFLOP/s at 40% MFU, $2 per chip-hour; 4x as fast: 1/4 h
  hour = 100e12 * 0.4 * 3600
  rows = tpu_cost.tpu_costs(2 * hour, types={"x": (100e12, 2.0), "y": (400e12, 10.0)}, mfu=0.4)
  assert [r["type"] for r in rows] == ["x", "y"]
  assert rows[0]["chip_hours"] == pytest.approx(2.0) and rows[0]["dollars"] == pytest.approx(4.0)
  assert rows[1]["chip_hours"] == pytest.approx(0.5) and rows[1]["dollars"] == pytest.approx(5.0)
  v5e = tpu_cost.tpu_costs(197e12 * 0.4 * 3600)[0]  # the default table: v5e first
  assert v5e["type"] == "v5e" and v5e["chip_hours"] == pytest.approx(1.0)
  assert v5e["dollars"] == pytest.approx(1.20)


def test_table_text():
  text = tpu_cost.format_costs({"train": 197e12 * 0.4 * 3600, "eval": 0.0})
  lines = text.splitlines()
  assert "at 40% MFU" in lines[0] and "2026-11" in lines[0]
  assert lines[1].split() == ["TPU", "peak", "TFLOP/s/chip", "$/chip-hour", "chip-hours", "$"]
  assert lines[2].split() == ["v5e", "197", "1.20", "1", "1.2"]
  assert [line.split()[0] for line in lines[2:]] == ["v5e", "v5p", "v6e"]


def test_dry_run_prints_the_table(tmp_path, capsys):
  plan = grid_plan.make_plan(grid_config.get_config("runlocal"))
  summary = driver.run(plan, str(tmp_path), dry_run=True)
  out = capsys.readouterr().out
  assert summary["todo"] == 7 and "TPU cost from FLOPs" in out
  want = tpu_cost.grid_flops(plan, summary["cost"])
  assert want["train"] == summary["cost"]["per_model"]["s0-seed0"]["train_flops"] > 0
  assert f"= {want['train'] + want['eval']:.3g} FLOPs" in out
  assert not (tmp_path / "results").exists() and not (tmp_path / "models").exists()

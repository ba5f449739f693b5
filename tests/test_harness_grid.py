"""`eval.harness_tasks` in a grid: every cell also runs harness tasks through the bridge,
its record holds their metrics (with stderr), a rerun finds every cell finished, the
default leaves cell keys unchanged, and a k-bit cell's harness metrics equal `kbit
harness` on the same model and spec. The tiny GPT-2 import of tests/test_harness.py,
two cells (k16, k4 nf B64); about a minute on 2 CPU cores."""
# ruff: noqa: E402 (the imports below wait for pytest.importorskip)

import os
import pathlib

import ml_collections
import pytest

pytest.importorskip("torch", reason="needs torch (CPU) and transformers")
pytest.importorskip("transformers")
pytest.importorskip("lm_eval", reason='needs pip install "kbit-jax[harness]"')

import test_harness

from kbit_jax.analysis import results
from kbit_jax.config import eval_section, files
from kbit_jax.evals.harness import loading, run
from kbit_jax.grid import driver
from kbit_jax.grid import keys as grid_keys
from kbit_jax.grid import plan as grid_plan

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

ROOT = pathlib.Path(__file__).resolve().parents[1]
grid_pretrained = files.load_module(ROOT / "configs" / "grid_pretrained.py")
HARNESS = ("piqa", "winogrande")
HARNESS_TASKS = ",".join(HARNESS)
zoo = test_harness.zoo  # the tiny models' module fixture (built again for this module)


def _config(zoo, harness_tasks=HARNESS_TASKS):
  hf_dir, kbit_dir = zoo["models"]["gpt2"]
  c = grid_pretrained.get_config(
    f"families=gpt2,runlocal,hf_root={hf_dir.parent},import_root={kbit_dir.parent}"
  )
  c.pretrained.repos = (("gpt2-kbit", "test/tiny-gpt2"),)
  c.grid.update(dict(sizes=("gpt2-kbit",), bits=(4, 16), dtypes=("nf",), blocksizes=(64,)))
  c.base.data.seq_len = 32
  c.eval.update(
    dict(tasks="piqa", items_per_task=4, batch_size=8, ppl_split="", harness_tasks=harness_tasks)
  )
  c.eval.harness_include_path = str(zoo["yaml"])
  return c


def test_grid_cells_hold_harness_metrics_equal_to_kbit_harness(zoo, tmp_path):
  config = _config(zoo)
  plan = grid_plan.make_plan(config, require_imports=True)
  assert driver.run(plan, str(tmp_path))["evaluated"] == 2
  records = {r["name"]: r for r in results.load_records(tmp_path / "results")}
  assert set(records) == {"gpt2-kbit k16", "gpt2-kbit k4 nf B64 p0"}
  for name, bits in (("gpt2-kbit k16", 16), ("gpt2-kbit k4 nf B64 p0", 4)):
    metrics = records[name]["metrics"]
    assert "piqa" in metrics  # the built-in scorer's study task is still there
    args = loading.ModelArgs(
      model_dir=str(zoo["models"]["gpt2"][1]), bits=bits, dtype="nf", batch_size=8
    )
    alone = run.evaluate(args, HARNESS, include_path=[str(zoo["yaml"])])["record"]["metrics"]
    for task in HARNESS:
      assert metrics[f"harness/{task}"] == alone[f"harness/{task}"], (name, task)
      assert {"acc", "acc_stderr", "n"} <= set(metrics[f"harness/{task}"])
  again = grid_plan.make_plan(config, require_imports=True)
  assert driver.run(again, str(tmp_path))["evaluated"] == 0  # resumable as every cell


def test_harness_keys_at_their_default_leave_cell_keys_unchanged(zoo):
  with_default = _config(zoo, harness_tasks="")
  with_default.eval.harness_include_path = ""
  without = ml_collections.ConfigDict(with_default.to_dict())
  del without.eval["harness_tasks"], without.eval["harness_include_path"]
  assert grid_keys.eval_id(with_default) == grid_keys.eval_id(without)
  assert grid_keys.eval_id(_config(zoo)) != grid_keys.eval_id(without)
  ids = [c.id for c in grid_plan.make_plan(with_default).cells]
  assert ids == [c.id for c in grid_plan.make_plan(without).cells]


def test_unknown_harness_task_is_named_at_plan_time(zoo):
  config = _config(zoo, harness_tasks="piqa,nosuchtask")
  with pytest.raises(
    ValueError, match=r"^grid eval section: eval.harness_tasks: Tasks not found: nosuchtask$"
  ):
    grid_plan.make_plan(config)
  config = _config(zoo)
  config.eval.harness_include_path = os.fspath(zoo["root"] / "missing")
  with pytest.raises(ValueError, match=r"eval.harness_include_path: .*missing' is not a dir"):
    eval_section.validate(config.eval)

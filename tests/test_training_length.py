"""Training length: the WSD schedule and its cool-down branches, checkpoints kept beside
keep-N, and the grid's checkpoints-along-training axis (grid.checkpoints)."""

import pathlib

import jax
import numpy as np
import pytest

from kbit_jax.analysis import results
from kbit_jax.config import checks, files
from kbit_jax.grid import driver
from kbit_jax.grid import plan as grid_plan
from kbit_jax.train import checkpoint, loop, sharding

lm = files.load_module(pathlib.Path(__file__).resolve().parents[1] / "configs" / "lm.py")


def wsd_config(steps, **train):
  c = lm.get_config("runlocal")  # s0, batch 8 x 32 tokens, warmup 5, 8 fake devices
  c.mesh.data = -1
  c.train.update(dict(schedule="wsd", decay_fraction=0.25, steps=steps, **train))
  return c


def test_wsd_schedule_values():
  """Warmup 5 steps to lr, stable at lr, linear cool-down over the last 25% to lr/10."""
  c = wsd_config(20)
  lr = c.train.lr
  schedule = loop.learning_rate_schedule(c.train)
  got = [float(schedule(i)) for i in range(20)]
  want = [lr * i / 5 for i in range(5)] + [lr] * 10 + [lr - 0.9 * lr * i / 5 for i in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Before its own cool-down a shorter WSD run has the same learning rate at every step.
  short = loop.learning_rate_schedule(wsd_config(12).train)
  assert [float(short(i)) for i in range(9)] == got[:9]


@pytest.mark.parametrize(
  "train, message",
  [
    (dict(schedule="linear"), r"train.schedule='linear' is unknown; allowed: \('cosine', 'wsd'\)"),
    (dict(schedule="wsd", decay_fraction=0.0), r"train.decay_fraction=0.0: .* allowed: 0 <"),
    (
      dict(schedule="wsd", decay_fraction=0.9),
      r"train.warmup_steps=5 runs into the WSD cool-down, which starts at step 2",
    ),
    (dict(keep_steps=(5, 21)), r"train.keep_steps=\(5, 21\): 21 is not a step of the run"),
  ],
)
def test_bad_schedule_keys_are_named(train, message):
  c = lm.get_config("runlocal")
  c.train.update(train)
  with pytest.raises(ValueError, match=message):
    checks.validate(c)


def _final_params(config, workdir):
  trainer = loop.Trainer(config, sharding.make_mesh(config.mesh))
  with checkpoint.read_only(str(workdir), 1) as ckpt:
    params = ckpt.restore_params(trainer.abstract_state().params, step=config.train.steps)
  return jax.tree.map(np.asarray, params)


def test_wsd_branch_equals_a_run_trained_to_its_budget(tmp_path):
  """A trunk trained 20 steps (WSD, cool-down from step 15) keeps step 9 beside keep-N;
  the branch to 12 steps restores it and cools down over steps 10-12: bit-identical to a
  WSD run trained straight to 12 steps (same stable phase, same cool-down length 3)."""
  trunk, branch, straight = tmp_path / "trunk", tmp_path / "branch", tmp_path / "straight"
  loop.train_and_evaluate(wsd_config(20, keep_steps=(9,), keep_checkpoints=1), str(trunk))
  with checkpoint.read_only(str(trunk), 1) as ckpt:
    assert ckpt.steps() == [9, 20]  # 9 kept beside the newest (keep 1); 10 deleted
  short = wsd_config(12)
  assert checks.wsd_decay_steps(short.train) == 3
  loop.train_and_evaluate(short, str(branch), branch_from=(str(trunk), 9))
  loop.train_and_evaluate(short, str(straight))
  a, b = _final_params(short, branch), _final_params(short, straight)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # bit-identical, not close
  with checkpoint.read_only(str(branch), 1) as ckpt:
    assert ckpt.steps() == [10, 12]  # it trained steps 10..12 only (saves: every 10, last)


# ----------------------------------------------------------------------------- the grid

grid_config = files.load_module(pathlib.Path(__file__).resolve().parents[1] / "configs" / "grid.py")


def tiny_grid(**grid):
  c = grid_config.get_config("runlocal")  # s0 trained 20 steps, checkpoint every 10
  c.grid.update({"bits": (4, 16), "dtypes": ("int",), **grid})
  return c


def test_two_checkpoints_of_one_run_train_once_and_evaluate_both(tmp_path, monkeypatch):
  trained = []
  train = loop.train_and_evaluate
  monkeypatch.setattr(
    loop, "train_and_evaluate", lambda *a, **k: trained.append(a[1]) or train(*a, **k)
  )
  plan = grid_plan.make_plan(tiny_grid(checkpoints=(0.5, 1.0)))
  assert [m.name for m in plan.models] == ["s0-seed0", "s0-seed0-step10"]
  summary = driver.run(plan, str(tmp_path))
  trunk_dir = plan.models[0].dir_name  # s0-seed0-<train_id>: the step-10 model reads it
  assert plan.models[1].dir_name == trunk_dir
  assert summary["evaluated"] == 4 and trained == [str(tmp_path / "models" / trunk_dir)]
  assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [trunk_dir]
  with checkpoint.read_only(str(tmp_path / "models" / trunk_dir), 1) as ckpt:
    assert ckpt.steps() == [10, 20]  # 10 kept beside keep-N (keep_checkpoints 1)
  records = {r["name"]: r for r in results.load_records(tmp_path / "results")}
  mid, end = records["s0-seed0-step10 k4 int B64 p0"], records["s0-seed0 k4 int B64 p0"]
  assert mid["key"]["train_tokens"] == 2560 and mid["key"]["step"] == 10
  assert mid["key"]["run_tokens"] == 5120 and "step" not in end["key"]
  assert mid["model"]["step"] == 10 and mid["model"]["run"] == "s0-seed0"
  assert mid["model"]["d_over_n"] == 2560 / mid["model"]["non_embedding_params"]
  # The second checkpoint reuses every executable of the first: its cells compile nothing.
  assert [
    records[f"s0-seed0-step10 {c}"]["compiles"]["cell"] for c in ("k16", "k4 int B64 p0")
  ] == [0, 0]
  assert mid["metrics"]["ppl/validation"]["nll"] != end["metrics"]["ppl/validation"]["nll"]


def test_checkpoints_a_finished_run_did_not_keep_are_refused_before_any_work(tmp_path):
  driver.run(grid_plan.make_plan(tiny_grid(bits=(16,))), str(tmp_path))
  finished = sorted(p.name for p in (tmp_path / "results").iterdir())
  with pytest.raises(
    ValueError,
    match=r"grid model s0-seed0-step10: step 10 of .* was not kept \(saved steps: \[20\]\)",
  ):
    driver.run(grid_plan.make_plan(tiny_grid(bits=(16,), checkpoints=(0.5,))), str(tmp_path))
  assert sorted(p.name for p in (tmp_path / "results").iterdir()) == finished


@pytest.mark.parametrize(
  "checkpoints, schedule, message",
  [
    ((1.5,), "cosine", r"1.5 is not a fraction of the run"),
    (
      (10_000,),
      "cosine",
      r"10,000 tokens \(step 39\) is beyond the end of run s0-seed0 \(20 steps",
    ),
    ((0.5, 0.51), "cosine", r"0.51 is step 10 of run s0-seed0, which another checkpoint"),
    (
      (0.25,),
      "wsd",
      r"the WSD branch to step 5 of run s0-seed0 would cool down from step 4, "
      r"inside the warmup",
    ),
  ],
)
def test_bad_checkpoints_are_plan_time_errors(checkpoints, schedule, message):
  c = tiny_grid(checkpoints=checkpoints)
  c.base.train.schedule = schedule
  with pytest.raises(ValueError, match=message):
    grid_plan.make_plan(c)


def test_wsd_checkpoints_plan_branches_from_the_stable_phase():
  c = tiny_grid(checkpoints=(0.5,))
  c.base.train.schedule = "wsd"
  c.per_size.s0.train.warmup_steps = 2
  trunk, branch = grid_plan.make_plan(c).models
  assert (trunk.name, trunk.trained_steps, tuple(trunk.config.train.keep_steps)) == (
    "s0-seed0",
    20,
    (8,),
  )
  assert (branch.name, branch.branch_start) == ("s0-seed0-wsd10", 8)
  assert branch.dir_name == f"s0-seed0-wsd10-{branch.train_id}" != trunk.dir_name
  assert branch.trained_steps == 2 and branch.config.train.steps == 10
  assert (
    branch.cells[0].key_dict["schedule"] == "wsd" and branch.cells[0].key_dict["run_tokens"] == 5120
  )
  assert "step" not in branch.cells[0].key_dict  # a finished WSD run to its budget

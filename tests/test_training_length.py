"""Training length: the WSD schedule and its cool-down branches, checkpoints kept beside
keep-N, and the grid's checkpoints-along-training axis (grid.checkpoints)."""

import pathlib

import jax
import numpy as np
import pytest

from kbit_jax.config import checks, files
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

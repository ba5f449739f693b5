"""Training: a tiny graph learned exactly, losses by hand, exact resume, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from kbit_jax.kg import data, ranking, train
from kbit_jax.train import checkpoint, sharding

COMPILES = [0]  # executables built or loaded from the cache, in this process


def _count(event, *_, **__):
  if event in ("/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_hits"):
    COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count)
jax.monitoring.register_event_listener(_count)

PARENTS = [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 2), (7, 2), (8, 3), (9, 3), (10, 4), (11, 4)]
LIKES = [(5, 6), (7, 8), (9, 10), (11, 1)]


def tiny_graph():
  """12 entities: a three-level tree (child, parent, parent) and 4 (a, likes, b) links."""
  triples = [(f"e{c}", "parent", f"e{p}") for c, p in PARENTS]
  triples += [(f"e{a}", "likes", f"e{b}") for a, b in LIKES]
  return data.from_triples(triples, [], [], name="tiny")


def tiny_config(name, steps, **train_overrides):
  c = train.default_config()
  c.model.name, c.model.dim = name, 16
  c.train.update(
    dict(steps=steps, batch_size=5, negatives=8, lr=0.01, log_every=5, checkpoint_every=10),
    **train_overrides,
  )
  return c


def train_ranks(result):
  g = result.graph
  return ranking.Evaluator(result.model, g.train_Nx3, g.all_true_Nx3(), 16).ranks(result.params)


def test_transe_ranks_every_training_triple_first():
  g = tiny_graph()
  untrained = train.train(tiny_config("transe", 1), g, log=lambda _: None)
  tail, head = train_ranks(untrained)
  assert np.mean(np.concatenate([tail, head])) > 2  # after one step: far from learned
  learned = train.train(tiny_config("transe", 300), g, log=lambda _: None)
  tail, head = train_ranks(learned)
  # Asserted: for all 15 training triples, in both directions, the true answer scores
  # strictly above every entity that is not another known answer (filtered rank 1.0,
  # no tie), so filtered MRR and Hits@1 on the training triples are exactly 1.
  np.testing.assert_array_equal(tail, np.ones(15))
  np.testing.assert_array_equal(head, np.ones(15))


def test_margin_and_self_adversarial_losses_by_hand():
  pos, neg = jnp.array([1.0]), jnp.array([[0.5, 2.0]])
  # max(0, 1 - 1 + 0.5) = 0.5 and max(0, 1 - 1 + 2) = 2: mean 1.25.
  assert float(train.margin_loss(pos, neg, 1.0)) == pytest.approx(1.25)
  w = np.exp([0.5, 2.0]) / np.exp([0.5, 2.0]).sum()  # softmax, alpha = 1

  def sig(x):
    return 1 / (1 + np.exp(-x))

  expected = (-np.log(sig(1.0)) - np.sum(w * np.log(sig(-np.array([0.5, 2.0]))))) / 2
  assert float(train.self_adversarial_loss(pos, neg, 1.0)) == pytest.approx(expected, 1e-6)
  # The weights get no gradient: d/dneg_n = w_n sigmoid(neg_n) / 2, nothing from w.
  grad = jax.grad(lambda n: train.self_adversarial_loss(pos, n, 1.0))(neg)
  np.testing.assert_allclose(grad[0], w * sig(np.array([0.5, 2.0])) / 2, rtol=1e-5)


def test_positives_are_a_function_of_the_step():
  g = tiny_graph()
  a, b = train.Positives(g.train_Nx3, 5, seed=3), train.Positives(g.train_Nx3, 5, seed=3)
  np.testing.assert_array_equal(a(7), b(7))
  epoch = np.concatenate([a(s) for s in range(3)])  # 15 triples / 5 = 3 steps an epoch
  assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, g.train_Nx3.tolist()))
  assert not np.array_equal(a(0), a(3))  # epochs reshuffle


def test_resume_gives_the_parameters_of_an_uninterrupted_run(tmp_path):
  g = tiny_graph()
  straight = train.train(tiny_config("rotate", 40), g, log=lambda _: None)
  first = train.train(tiny_config("rotate", 20), g, workdir=str(tmp_path), log=lambda _: None)
  assert first.resumed_from == 0
  resumed = train.train(tiny_config("rotate", 40), g, workdir=str(tmp_path), log=lambda _: None)
  assert resumed.resumed_from == 20
  for name in ("entity", "relation"):  # bit-identical, not close
    np.testing.assert_array_equal(resumed.params[name], straight.params[name])
  assert {s: loss for s, loss in straight.losses.items() if s > 20} == resumed.losses
  with pytest.raises(checkpoint.WorkdirError, match=r"model.dim=8 but the checkpoint has 16"):
    other = tiny_config("rotate", 40)
    other.model.dim = 8
    train.train(other, g, workdir=str(tmp_path), log=lambda _: None)


def test_the_compile_counter_sees_a_compile():
  before = COMPILES[0]
  jax.jit(lambda x: x * 3 + 1)(np.float32(2))  # a new function: built or loaded once
  assert COMPILES[0] > before


@pytest.mark.parametrize(
  "section, overrides, message",
  [
    ("train", dict(batch_size=16), r"train.batch_size=16 is not allowed; allowed: 1\.\.15"),
    ("train", dict(negatives=0), r"train.negatives=0 is not allowed; allowed: a positive int"),
    ("train", dict(lr=0.0), r"train.lr=0.0 is not allowed; allowed: a value > 0"),
    (
      "model",
      dict(name="complex"),
      r"model.name='complex' is unknown; allowed: "
      r"\['transe', 'rotate'\]",
    ),
    ("model", dict(name="rotate", dim=15), r"model.dim=15 is odd"),
    ("data", dict(num_train=99), r"data.num_train=99 is not allowed; allowed: 1\.\.15"),
  ],
)
def test_bad_config_raises_before_any_compile_or_write(tmp_path, section, overrides, message):
  config = tiny_config("transe", 10)
  config[section].update(overrides)
  graph, before = tiny_graph(), COMPILES[0]
  with pytest.raises(ValueError, match=message):
    train.train(config, graph, workdir=str(tmp_path / "w"))
  assert COMPILES[0] == before
  assert not (tmp_path / "w").exists()


def test_sharded_training_matches_one_device():
  """Entity rows over fsdp=4, the batch over data x fsdp = 8 fake CPU devices."""
  g = tiny_graph()
  config = tiny_config("rotate", 12, batch_size=8)
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4, 1), sharding.MESH_AXES)
  sharded = train.train(config, g, mesh=mesh, log=lambda _: None)
  single = train.train(config, g, log=lambda _: None)
  assert sharded.params["entity"].sharding.spec == P("fsdp", None)
  assert len(sharded.params["entity"].addressable_shards) == 8
  for name in ("entity", "relation"):
    np.testing.assert_allclose(sharded.params[name], single.params[name], rtol=1e-5, atol=1e-6)

"""TransE and RotatE: scores against numpy, |r| = 1, logical axes, bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kbit_jax.kg import models


def init(model):
  z = jnp.zeros((1,), jnp.int32)
  return model.init(jax.random.key(0), z, z, z)["params"]


def test_rotate_score_equals_numpy_complex_and_rotations_have_unit_modulus():
  model = models.RotatE(num_entities=6, num_relations=3, dim=10, gamma=6.0)
  params = nn.unbox(init(model))
  ent, rel = np.asarray(params["entity"], np.float64), np.asarray(params["relation"], np.float64)
  assert ent.shape == (6, 10) and rel.shape == (3, 5)
  embedding_range = (6.0 + 2.0) / 5
  assert np.abs(ent).max() <= embedding_range and np.abs(rel).max() <= embedding_range
  cos, sin = model.apply({"params": params}, jnp.arange(3), method=models.RotatE.rotation)
  np.testing.assert_allclose(np.hypot(cos, sin), 1.0, atol=1e-6)
  # numpy: h, t complex from (real | imaginary) halves, r = exp(i phase).
  z = ent[:, :5] + 1j * ent[:, 5:]
  rot = np.exp(1j * rel * np.pi / embedding_range)
  h, r, t = np.array([0, 4, 5, 2]), np.array([1, 0, 2, 2]), np.array([3, 1, 5, 0])
  expected = 6.0 - np.abs(z[h] * rot[r] - z[t]).sum(-1)
  np.testing.assert_allclose(model.apply({"params": params}, h, r, t), expected, rtol=1e-5)
  # Against every entity at once, both sides.
  tails = model.apply({"params": params}, h, r, method=models.RotatE.tail_scores)
  heads = model.apply({"params": params}, r, t, method=models.RotatE.head_scores)
  np.testing.assert_allclose(
    tails, 6.0 - np.abs((z[h] * rot[r])[:, None] - z[None]).sum(-1), rtol=1e-5
  )
  np.testing.assert_allclose(
    heads, 6.0 - np.abs(z[None] * rot[r][:, None] - z[t][:, None]).sum(-1), rtol=1e-5
  )


@pytest.mark.parametrize("norm", [1, 2])
def test_transe_scores_and_unit_entity_rows(norm):
  model = models.TransE(num_entities=5, num_relations=2, dim=4, norm=norm)
  params = nn.unbox(init(model))
  ent, rel = np.asarray(params["entity"]), np.asarray(params["relation"])
  np.testing.assert_allclose(np.linalg.norm(ent, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(rel, axis=1), 1.0, rtol=1e-6)
  h, r, t = np.array([0, 1, 4]), np.array([1, 0, 1]), np.array([2, 2, 3])
  expected = -np.linalg.norm(ent[h] + rel[r] - ent[t], ord=norm, axis=-1)
  np.testing.assert_allclose(model.apply({"params": params}, h, r, t), expected, rtol=1e-6)
  tails = model.apply({"params": params}, h, r, method=models.TransE.tail_scores)
  np.testing.assert_allclose(tails[np.arange(3), t], expected, rtol=1e-6)
  # project() puts grown rows back on the unit sphere, and leaves RotatE alone.
  grown = {**params, "entity": params["entity"] * 3.0}
  np.testing.assert_allclose(
    np.linalg.norm(models.project("transe", grown)["entity"], axis=1), 1.0, rtol=1e-6
  )
  assert models.project("rotate", grown) is grown


def test_tables_carry_logical_axis_names():
  for model, relation_dim in [(models.TransE(5, 2, 4), 4), (models.RotatE(5, 2, 4), 2)]:
    boxed = jax.eval_shape(lambda model=model: init(model))
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["entity"]) == ("entity", "embed")
    assert tuple(specs["relation"]) == ("relation", "embed")
    assert nn.unbox(boxed)["relation"].shape == (2, relation_dim)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (
      dict(name="distmult", dim=8),
      r"model.name='distmult' is unknown; allowed: "
      r"\['transe', 'rotate'\]",
    ),
    (dict(name="rotate", dim=7), r"model.dim=7 is odd; RotatE needs an even dim"),
    (dict(name="transe", dim=0), r"model.dim=0 is not allowed; allowed: a positive int"),
    (dict(name="transe", dim=8, norm=3), r"model.norm=3 is not allowed; allowed: \[1, 2\]"),
    (dict(name="rotate", dim=8, gamma=0.0), r"model.gamma=0.0 is not allowed"),
  ],
)
def test_bad_model_input_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.make_model(num_entities=5, num_relations=2, **kwargs)

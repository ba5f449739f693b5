"""Every preset, even 7B, builds under jax.eval_shape with exactly the counted parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from kbit_jax.model import presets, transformer


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_eval_shape_matches_param_counts(name):
  p = presets.PRESETS[name]
  shapes = jax.eval_shape(
    lambda: transformer.Transformer(p).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  )["params"]
  shapes = nn.unbox(shapes)
  counts = presets.param_counts(p)
  assert sum(x.size for x in jax.tree.leaves(shapes)) == counts["total"]
  embedding = shapes["embed"]["embedding"].size + (
    shapes["pos_embed"].size if "pos_embed" in shapes else 0
  )
  assert embedding == counts["embedding"]
  head = shapes["head"]["kernel"].size if "head" in shapes else 0
  assert head == counts["head"]


@pytest.mark.parametrize(
  "name, total",
  [
    ("70m", 70_426_624),
    ("160m", 162_322_944),
    ("410m", 405_334_016),
    ("1b", 1_011_781_632),
    ("1.4b", 1_414_647_808),
    ("2.8b", 2_775_208_960),
    ("6.9b", 6_857_302_016),
  ],
)
def test_pythia_presets_have_pythias_parameter_counts(name, total):
  # Published totals of the Pythia suite (GPT-NeoX: untied head without bias, biases
  # elsewhere); sequential vs parallel residual changes no parameter count.
  assert presets.param_counts(presets.PRESETS[name])["total"] == total


def test_size_table_spans_tiny_to_7b():
  totals = [presets.param_counts(p)["total"] for p in presets.PRESETS.values()]
  assert len(totals) >= 12 and min(totals) < 1e5 and max(totals) > 6e9


def test_unknown_preset_names_allowed_values():
  with pytest.raises(ValueError, match="model.preset='s99'.*allowed.*s0"):
    presets.get_preset("s99")

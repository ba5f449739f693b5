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


# The parameters of each modern family's Hugging Face checkpoint: the hub's safetensors
# count of the repo (its API's `safetensors.total`, which the model page shows rounded,
# e.g. "8.03B"; = the index's total_size / 2 for these bf16 files). Not fetched here (no
# hub access from the tests): written from the hub pages and equal to the count computed
# from each config.json's shapes. Qwen3-0.6B and -1.7B store their tied head as well
# (lm_head.weight, a copy of the embedding the import ignores), so the hub counts
# 751,632,384 and 2,031,739,904; the model has one vocab x d_model matrix fewer.
PUBLISHED = [
  ("smollm2-135m", 134_515_008),  # HuggingFaceTB/SmolLM2-135M
  ("smollm2-360m", 361_821_120),  # HuggingFaceTB/SmolLM2-360M
  ("smollm2-1.7b", 1_711_376_384),  # HuggingFaceTB/SmolLM2-1.7B
  ("llama-3.2-1b", 1_235_814_400),  # meta-llama/Llama-3.2-1B
  ("llama-3.2-3b", 3_212_749_824),  # meta-llama/Llama-3.2-3B
  ("llama-3.1-8b", 8_030_261_248),  # meta-llama/Llama-3.1-8B
  ("mistral-7b-v0.3", 7_248_023_552),  # mistralai/Mistral-7B-v0.3
  ("qwen2.5-0.5b", 494_032_768),  # Qwen/Qwen2.5-0.5B
  ("qwen2.5-1.5b", 1_543_714_304),  # Qwen/Qwen2.5-1.5B
  ("qwen2.5-3b", 3_085_938_688),  # Qwen/Qwen2.5-3B
  ("qwen2.5-7b", 7_615_616_512),  # Qwen/Qwen2.5-7B
  ("qwen3-0.6b", 751_632_384 - 151_936 * 1024),  # Qwen/Qwen3-0.6B-Base
  ("qwen3-1.7b", 2_031_739_904 - 151_936 * 2048),  # Qwen/Qwen3-1.7B-Base
  ("qwen3-4b", 4_022_468_096),  # Qwen/Qwen3-4B-Base
  ("qwen3-8b", 8_190_735_360),  # Qwen/Qwen3-8B-Base
  ("gemma-2b", 2_506_172_416),  # google/gemma-2b
  ("gemma-7b", 8_537_680_896),  # google/gemma-7b
]


@pytest.mark.parametrize("name, total", PUBLISHED)
def test_modern_family_presets_have_published_parameter_counts(name, total):
  assert presets.param_counts(presets.PRESETS[name])["total"] == total


@pytest.mark.parametrize("i", range(7))
def test_llama_style_tiny_presets_match_the_gpt_style_totals(i):
  """l_i has s_i's layers, width and heads; its d_ff makes the totals the closest the
  shapes allow: one more (or fewer) d_ff unit moves the total by 3 x d_model x layers."""
  gpt, llama = presets.PRESETS[f"s{i}"], presets.PRESETS[f"l{i}"]
  shape = (llama.num_layers, llama.d_model, llama.num_heads)
  assert shape == (gpt.num_layers, gpt.d_model, gpt.num_heads)
  assert llama.mlp == "gated" and llama.norm == "rmsnorm"
  assert llama.num_kv_heads == llama.num_heads // 2
  gap = abs(presets.param_counts(llama)["total"] - presets.param_counts(gpt)["total"])
  assert gap <= 3 * llama.d_model * llama.num_layers / 2


def test_default_switches_keep_the_parameter_tree():
  """The GPT-style presets' parameter names are those checkpoints were written with."""
  shapes = jax.eval_shape(
    lambda: transformer.Transformer(presets.PRESETS["s1"]).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32)
    )
  )["params"]
  layer = {k: sorted(v) for k, v in nn.unbox(shapes)["layer_0"].items()}
  assert sorted(nn.unbox(shapes)) == ["embed", "layer_0", "layer_1", "ln_f", "pos_embed"]
  assert layer == {
    "attn": ["key", "out", "query", "value"],
    "ln1": ["bias", "scale"],
    "ln2": ["bias", "scale"],
    "mlp": ["wi", "wo"],
  }


@pytest.mark.parametrize(
  "fields, match",
  [
    (dict(kv_heads=3), r"Preset.kv_heads=3 must divide num_heads=4"),
    (dict(norm="batchnorm"), r"Preset.norm='batchnorm' is unknown; allowed: \('layernorm'"),
    (dict(mlp="moe"), r"Preset.mlp='moe' is unknown; allowed: \('dense', 'gated'\)"),
    (dict(norm_plus_one=True), r"norm_plus_one=True needs norm='rmsnorm'"),
    (dict(rope_type="llama3"), r"rope_type='llama3' needs positions='rotary' and rope_orig"),
  ],
)
def test_bad_switches_name_the_field(fields, match):
  with pytest.raises(ValueError, match=match):
    presets.Preset(2, 32, 4, 64, 100, 64, **fields)

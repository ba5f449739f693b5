"""The Llama-architecture families' config.json handling, without torch: hub configs name
their presets, unsupported fields are refused with the field and value named, and the
pretrained grid plans the new sizes (memory per device, dry run with download/import
commands and the TPU cost table).

The hub configs below are the shape-defining keys of each repo's config.json in the
hub's (transformers 4.x) format, rope_theta + rope_scaling, transcribed by hand: the
hub is not reachable from the tests. Their shapes are confirmed by the published
parameter totals (tests/test_presets.py); the other fields (context, theta, eps) are as
the model cards give them.
"""

import pathlib

import pytest

from kbit_jax.config import files
from kbit_jax.convert import families, importer
from kbit_jax.grid import driver
from kbit_jax.grid import plan as grid_plan
from kbit_jax.model import presets

grid_pretrained = files.load_module(
  pathlib.Path(__file__).resolve().parents[1] / "configs" / "grid_pretrained.py"
)


def _llama(**kw):
  return dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    attention_bias=False,
    mlp_bias=False,
    hidden_act="silu",
    pretraining_tp=1,
    **kw,
  )


_LLAMA3_ROPE = dict(
  rope_type="llama3",
  low_freq_factor=1.0,
  high_freq_factor=4.0,
  original_max_position_embeddings=8192,
)
_QWEN = dict(hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0, use_sliding_window=False)
HUB_CONFIGS = {
  "smollm2-135m": _llama(
    hidden_size=576,
    intermediate_size=1536,
    num_attention_heads=9,
    num_key_value_heads=3,
    num_hidden_layers=30,
    vocab_size=49152,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000,
    rope_scaling=None,
    rope_interleaved=False,
    tie_word_embeddings=True,
  ),
  "llama-3.2-1b": _llama(
    hidden_size=2048,
    intermediate_size=8192,
    head_dim=64,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_hidden_layers=16,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling=dict(_LLAMA3_ROPE, factor=32.0),
    tie_word_embeddings=True,
  ),
  "llama-3.1-8b": _llama(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_hidden_layers=32,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling=dict(_LLAMA3_ROPE, factor=8.0),
    tie_word_embeddings=False,
  ),
  "mistral-7b-v0.3": dict(
    model_type="mistral",
    hidden_act="silu",
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_hidden_layers=32,
    vocab_size=32768,
    max_position_embeddings=32768,
    rms_norm_eps=1e-5,
    rope_theta=1000000.0,
    sliding_window=None,
    tie_word_embeddings=False,
  ),
  "qwen2.5-0.5b": dict(
    model_type="qwen2",
    hidden_size=896,
    intermediate_size=4864,
    num_attention_heads=14,
    num_key_value_heads=2,
    num_hidden_layers=24,
    vocab_size=151936,
    max_position_embeddings=32768,
    max_window_layers=24,
    sliding_window=32768,
    use_mrope=False,
    tie_word_embeddings=True,
    **_QWEN,
  ),
  "qwen2.5-7b": dict(
    model_type="qwen2",
    hidden_size=3584,
    intermediate_size=18944,
    num_attention_heads=28,
    num_key_value_heads=4,
    num_hidden_layers=28,
    vocab_size=152064,
    max_position_embeddings=131072,
    max_window_layers=28,
    sliding_window=131072,
    tie_word_embeddings=False,
    **_QWEN,
  ),
  "qwen3-0.6b": dict(
    model_type="qwen3",
    attention_bias=False,
    head_dim=128,
    hidden_size=1024,
    intermediate_size=3072,
    num_attention_heads=16,
    num_key_value_heads=8,
    num_hidden_layers=28,
    vocab_size=151936,
    max_position_embeddings=32768,
    max_window_layers=28,
    sliding_window=None,
    rope_scaling=None,
    tie_word_embeddings=True,
    **_QWEN,
  ),
  "qwen3-8b": dict(
    model_type="qwen3",
    attention_bias=False,
    head_dim=128,
    hidden_size=4096,
    intermediate_size=12288,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_hidden_layers=36,
    vocab_size=151936,
    max_position_embeddings=32768,
    tie_word_embeddings=False,
    **_QWEN,
  ),
  "gemma-2b": dict(
    model_type="gemma",
    attention_bias=False,
    head_dim=256,
    hidden_act="gelu",  # transformers reads it as gelu_pytorch_tanh (GemmaConfig)
    hidden_size=2048,
    intermediate_size=16384,
    num_attention_heads=8,
    num_key_value_heads=1,
    num_hidden_layers=18,
    vocab_size=256000,
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    rope_scaling=None,
  ),
  "gemma-7b": dict(
    model_type="gemma",
    head_dim=256,
    hidden_act="gelu",
    hidden_size=3072,
    intermediate_size=24576,
    num_attention_heads=16,
    num_key_value_heads=16,
    num_hidden_layers=28,
    vocab_size=256000,
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
  ),
}


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_hub_configs_name_their_presets(name):
  cfg = HUB_CONFIGS[name]
  assert importer.preset_name(families.family_of(cfg).preset_from_config(cfg)) == name


def test_transformers5_rope_parameters_read_as_the_hub_keys():
  """save_pretrained of transformers >= 5 writes rope_parameters (theta inside)."""
  hub = HUB_CONFIGS["llama-3.2-1b"]
  v5 = {k: v for k, v in hub.items() if k not in ("rope_theta", "rope_scaling")}
  v5["rope_parameters"] = dict(hub["rope_scaling"], rope_theta=500000.0)
  v5["layer_types"] = ["full_attention"] * 16
  assert families.family_of(v5).preset_from_config(v5) == presets.PRESETS["llama-3.2-1b"]


def test_architectures_alone_name_the_family():
  cfg = {k: v for k, v in HUB_CONFIGS["smollm2-135m"].items() if k != "model_type"}
  assert families.family_of(cfg).name == "llama"
  assert importer.preset_name(families.family_of(cfg).preset_from_config(cfg)) == "smollm2-135m"


def _edit(name, **changes):
  cfg = dict(HUB_CONFIGS[name])
  for key, value in changes.items():
    if value is KeyError:
      cfg.pop(key)
    else:
      cfg[key] = value
  return cfg


REFUSED = {
  "mistral_v0.1_window": (
    _edit("mistral-7b-v0.3", sliding_window=4096),
    r"config.json sliding_window=4096 is not supported \(windowed attention over "
    r"max_position_embeddings=32768\); supported: null or >= max_position_embeddings",
  ),
  "qwen_sliding_layers": (
    _edit("qwen2.5-0.5b", use_sliding_window=True, max_window_layers=21),
    r"use_sliding_window=True \(sliding_window=32768, max_window_layers=21\) makes layers "
    r"21..23 sliding-window, which is not supported; supported: use_sliding_window false",
  ),
  "layer_types": (
    _edit("qwen3-0.6b", layer_types=["full_attention"] * 27 + ["sliding_attention"]),
    r"config.json layer_types\[27\]='sliding_attention' \(1 of 28 layers\) is not supported; "
    r"supported: every layer 'full_attention'",
  ),
  "moe": (
    _edit("qwen3-0.6b", num_experts=128),
    r"config.json num_experts=128: mixture-of-experts layers are not supported",
  ),
  "rope_yarn": (
    _edit("qwen3-8b", rope_scaling=dict(rope_type="yarn", factor=4.0)),
    r"rope scaling rope_type='yarn' is not supported; supported: \['default', 'llama3'\]",
  ),
  "rope_linear_old_key": (
    _edit("smollm2-135m", rope_scaling=dict(type="linear", factor=2.0)),
    r"rope_type='linear' is not supported",
  ),
  "llama3_incomplete": (
    _edit("llama-3.1-8b", rope_scaling=dict(rope_type="llama3", factor=8.0)),
    r"rope scaling 'llama3' has no \['low_freq_factor', 'high_freq_factor', "
    r"'original_max_position_embeddings'\]",
  ),
  "partial_rotary": (
    _edit("smollm2-135m", partial_rotary_factor=0.5),
    r"partial_rotary_factor=0.5 is not supported for model_type 'llama'",
  ),
  "heads_kv": (
    _edit("smollm2-135m", num_key_value_heads=4),
    r"num_attention_heads=9 is not a multiple of num_key_value_heads=4",
  ),
  "attention_bias": (
    _edit("llama-3.1-8b", attention_bias=True),
    r"config.json attention_bias=True is not supported; supported: False",
  ),
  "mlp_bias": (
    _edit("llama-3.1-8b", mlp_bias=True),
    r"config.json mlp_bias=True is not supported; supported: False",
  ),
  "bidirectional": (
    _edit("gemma-2b", use_bidirectional_attention=True),
    r"use_bidirectional_attention=True is not supported; supported: False",
  ),
  "activation": (
    _edit("smollm2-135m", hidden_act="gelu_10"),
    r"config.json hidden_act='gelu_10' is not supported; allowed: \[",
  ),
  "missing_shape_key": (
    _edit("qwen3-8b", intermediate_size=KeyError),
    r"config.json has no 'intermediate_size'; the 'qwen3' family needs it",
  ),
  "unknown_model_type": (
    _edit("qwen3-8b", model_type="qwen3_moe"),
    r"model_type='qwen3_moe' .*allowed model_type: \['bloom', 'gemma', 'gpt2', 'gpt_neox', "
    r"'llama', 'mistral', 'opt', 'qwen2', 'qwen3'\]",
  ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_config_fields_are_named(case):
  cfg, match = REFUSED[case]
  with pytest.raises(ValueError, match=match):
    families.family_of(cfg).preset_from_config(cfg)


def test_mistral_window_covering_the_context_is_full_attention():
  cfg = _edit("mistral-7b-v0.3", sliding_window=32768)
  assert importer.preset_name(families.family_of(cfg).preset_from_config(cfg)) == (
    "mistral-7b-v0.3"
  )


def test_pretrained_grid_plans_the_modern_families(tmp_path, capsys):
  """families=modern: every size, its hub id, memory per device, and the dry run's
  download/import commands and TPU cost table (no import exists)."""
  config = grid_pretrained.get_config(f"families=modern,fsdp=8,import_root={tmp_path / 'imp'}")
  sizes = [s for f in grid_pretrained.MODERN for s in grid_pretrained.FAMILIES[f]]
  assert config.grid.sizes == tuple(sizes) and len(sizes) == 17
  assert dict(config.pretrained.repos)["qwen3-8b"] == "Qwen/Qwen3-8B-Base"
  assert config.base.data.seq_len == 2048  # min(2048, the shortest context: 8192)
  rows = {r["size"]: r for r in grid_pretrained.memory_table(config)}
  assert rows["llama-3.1-8b"]["f32"] == 4 * 8_030_261_248 / 8 / 2**30
  for r in rows.values():
    assert r["k3"] < r["k4"] < r["k8"] < r["b16"] == r["f32"] / 2
  assert "gemma-7b" in grid_pretrained.format_memory_table(config, list(rows.values()))

  config.grid.update(dict(bits=(4, 16), dtypes=("nf",), blocksizes=(64,)))
  config.eval.update(dict(items_per_task=2, ppl_max_batches=1))
  plan = grid_plan.make_plan(config)
  assert len(plan.cells) == 2 * 17 and len(plan.missing_imports) == 17
  driver.run(plan, str(tmp_path / "w"), dry_run=True)
  out = capsys.readouterr().out
  assert out.count("MISSING") == 17
  assert "hf download meta-llama/Llama-3.2-1B --local-dir" in out
  assert f"kbit import --hf_dir {pathlib.Path('~/hf').expanduser()}/gemma-2b" in out
  assert "TPU cost from FLOPs" in out and "v5e" in out
  # The dry run's memory per device: 8,030,261,248 params x 4 B / 8 devices = 3.74 GiB,
  # 16-bit half, grid eval 2x; k=4 nf B64 (attn, mlp) from quant/bits.py; no train column
  # for imports; missing imports use their table preset.
  memory = out[out.index("memory: GiB of parameters per device on fsdp=8 x tensor=1 = 8 devices") :]
  (llama,) = [r.split() for r in memory.splitlines() if r.split()[:1] == ["llama-3.1-8b"]]
  assert llama == "llama-3.1-8b 8,030,261,248 3.74 1.87 0.68 7.48".split()

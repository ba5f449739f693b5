"""The Hugging Face families: config.json -> Preset, tensors -> params. The k-bit study's
(GPT-2, GPT-NeoX/Pythia, OPT, BLOOM) are here; the Llama-architecture ones (llama,
mistral, qwen2, qwen3, gemma) in llama.py; `FAMILIES` has them all (rules.py: the parts
they share).

A family knows three things about its checkpoints: how config.json names the
architecture (`preset_from_config`), which tensors the checkpoint holds and their shapes
(`rules`: one `Rule` per HF tensor, in torch's naming and layout), and how each becomes
our parameters (a transform to the (in, out) kernel layout of `nn.Dense`, and the
splitting of fused attention projections). Anything config.json says that the model
cannot express raises a ValueError naming the key, its value and what is supported.

Fused query/key/value projections differ by family:
- GPT-2 `c_attn` is a Conv1D, weight (in, out) = (D, 3D): q | k | v in thirds of the output.
- GPT-NeoX and BLOOM `query_key_value` are Linear, weight (out, in) = (3D, D), and the
  output is viewed as (heads, 3, head_dim): q, k and v interleaved *per head*.
OPT has separate q/k/v Linear layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kbit_jax.convert import llama
from kbit_jax.convert.rules import (
  HEAD,
  Family,
  Path,
  Rule,
  Transform,
  config_activation,
  config_value,
  is_ignored,
  linear,
  require,
  same,
  untied_head,
)
from kbit_jax.model.presets import Preset

__all__ = ["FAMILIES", "Family", "Rule", "family_of", "is_ignored"]


# ----------------------------------------------------------------------------- config


def _checked(p: Preset) -> Preset:
  if p.d_model % p.num_heads:
    raise ValueError(
      f"config.json: {p.num_heads} attention heads do not divide the hidden size {p.d_model}"
    )
  return p


def gpt2_preset(cfg: dict[str, Any]) -> Preset:
  require(cfg, "scale_attn_weights", True, True)
  require(cfg, "scale_attn_by_inverse_layer_idx", False, False)
  require(cfg, "add_cross_attention", False, False)
  d = config_value(cfg, "n_embd", "hidden_size")
  return _checked(
    Preset(
      num_layers=config_value(cfg, "n_layer", "num_hidden_layers"),
      d_model=d,
      num_heads=config_value(cfg, "n_head", "num_attention_heads"),
      d_ff=config_value(cfg, "n_inner", default=4 * d),
      vocab_size=config_value(cfg, "vocab_size"),
      max_len=config_value(cfg, "n_positions", "max_position_embeddings"),
      positions="learned",
      tie_embeddings=config_value(cfg, "tie_word_embeddings", default=True),
      activation=config_activation(cfg, "activation_function"),
      norm_eps=float(config_value(cfg, "layer_norm_epsilon", default=1e-5)),
    )
  )


def gpt_neox_preset(cfg: dict[str, Any]) -> Preset:
  # transformers >= 5 writes rotary settings into rope_parameters; hub configs have the
  # older top-level keys.
  rope = cfg.get("rope_parameters") or {}
  if rope.get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
    raise ValueError(
      f"config.json rope scaling {rope or cfg.get('rope_scaling')!r} is not "
      "supported; supported: plain rotary (rope_type 'default')"
    )
  require(cfg, "attention_bias", True, True)
  return _checked(
    Preset(
      num_layers=config_value(cfg, "num_hidden_layers"),
      d_model=config_value(cfg, "hidden_size"),
      num_heads=config_value(cfg, "num_attention_heads"),
      d_ff=config_value(cfg, "intermediate_size"),
      vocab_size=config_value(cfg, "vocab_size"),
      max_len=config_value(cfg, "max_position_embeddings"),
      positions="rotary",
      tie_embeddings=config_value(cfg, "tie_word_embeddings", default=False),
      rotary_pct=float(
        rope.get("partial_rotary_factor", config_value(cfg, "rotary_pct", default=0.25))
      ),
      rotary_base=float(
        rope.get("rope_theta", config_value(cfg, "rotary_emb_base", default=10000))
      ),
      activation=config_activation(cfg, "hidden_act"),
      parallel_residual=config_value(cfg, "use_parallel_residual", default=True),
      norm_eps=float(config_value(cfg, "layer_norm_eps", default=1e-5)),
    )
  )


def opt_preset(cfg: dict[str, Any]) -> Preset:
  require(cfg, "layer_norm_elementwise_affine", True, True)
  pre_norm = config_value(cfg, "do_layer_norm_before", default=True)
  if pre_norm:
    require(cfg, "_remove_final_layer_norm", False, False)
  d = config_value(cfg, "hidden_size")
  embed_dim = config_value(cfg, "word_embed_proj_dim", default=d)
  return _checked(
    Preset(
      num_layers=config_value(cfg, "num_hidden_layers"),
      d_model=d,
      num_heads=config_value(cfg, "num_attention_heads"),
      d_ff=config_value(cfg, "ffn_dim"),
      vocab_size=config_value(cfg, "vocab_size"),
      max_len=config_value(cfg, "max_position_embeddings"),
      positions="learned",
      pos_offset=2,
      tie_embeddings=config_value(cfg, "tie_word_embeddings", default=True),
      use_bias=config_value(cfg, "enable_bias", default=True),
      activation=config_activation(cfg, "activation_function"),
      post_norm=not pre_norm,
      embed_dim=0 if embed_dim == d else embed_dim,
    )
  )


def bloom_preset(cfg: dict[str, Any]) -> Preset:
  require(cfg, "apply_residual_connection_post_layernorm", False, False)
  d = config_value(cfg, "hidden_size", "n_embed")
  # ALiBi has no position limit; 2048 is BLOOM's training length (the scoring default).
  return _checked(
    Preset(
      num_layers=config_value(cfg, "n_layer", "num_hidden_layers"),
      d_model=d,
      num_heads=config_value(cfg, "n_head", "num_attention_heads"),
      d_ff=4 * d,
      vocab_size=config_value(cfg, "vocab_size"),
      max_len=config_value(cfg, "seq_length", default=2048),
      positions="alibi",
      tie_embeddings=config_value(cfg, "tie_word_embeddings", default=True),
      activation="gelu_tanh",
      embed_norm=True,
      norm_eps=float(config_value(cfg, "layer_norm_epsilon", default=1e-5)),
    )
  )


# ----------------------------------------------------------------------------- tensors


def _third(j: int) -> Transform:
  """GPT-2 c_attn (D, 3D) or its bias (3D,): the j-th third of the output axis."""
  return lambda w: np.split(w, 3, axis=-1)[j]


def _per_head(j: int, num_heads: int) -> Transform:
  """NeoX/BLOOM query_key_value (3D, D) or its bias (3D,): output rows viewed as
  (heads, 3, head_dim); part j of every head, then (in, out) for a weight."""

  def split(w: np.ndarray) -> np.ndarray:
    part = w.reshape(num_heads, 3, -1, *w.shape[1:])[:, j]
    part = part.reshape(-1, *w.shape[1:])
    return part.T if part.ndim == 2 else part

  return split


def _norm(source: str, target: Path, d: int) -> list[Rule]:
  return [
    Rule(f"{source}.weight", (d,), ((target + ("scale",), same),)),
    Rule(f"{source}.bias", (d,), ((target + ("bias",), same),)),
  ]


QKV = ("query", "key", "value")


def _fused_qkv(source: str, layer: str, d: int, num_heads: int | None = None) -> list[Rule]:
  """GPT-2's Conv1D thirds (num_heads None), or NeoX/BLOOM's per-head interleaving."""
  attn = (layer, "attn")
  shape = (d, 3 * d) if num_heads is None else (3 * d, d)
  split = _third if num_heads is None else lambda j: _per_head(j, num_heads)
  return [
    Rule(
      f"{source}.weight",
      shape,
      tuple((attn + (name, "kernel"), split(j)) for j, name in enumerate(QKV)),
    ),
    Rule(
      f"{source}.bias",
      (3 * d,),
      tuple((attn + (name, "bias"), split(j)) for j, name in enumerate(QKV)),
    ),
  ]


def gpt2_rules(p: Preset) -> list[Rule]:
  d, f = p.d_model, p.d_ff
  rules = [
    Rule("wte.weight", (p.vocab_size, d), ((("embed", "embedding"), same),)),
    Rule("wpe.weight", (p.max_len, d), ((("pos_embed",), same),)),
  ]
  for i in range(p.num_layers):
    h, layer = f"h.{i}", f"layer_{i}"
    rules += _norm(f"{h}.ln_1", (layer, "ln1"), d)
    rules += _fused_qkv(f"{h}.attn.c_attn", layer, d)
    rules += linear(f"{h}.attn.c_proj", (layer, "attn", "out"), d, d, True, conv1d=True)
    rules += _norm(f"{h}.ln_2", (layer, "ln2"), d)
    rules += linear(f"{h}.mlp.c_fc", (layer, "mlp", "wi"), d, f, True, conv1d=True)
    rules += linear(f"{h}.mlp.c_proj", (layer, "mlp", "wo"), f, d, True, conv1d=True)
  return rules + _norm("ln_f", ("ln_f",), d) + untied_head(p, HEAD)


def gpt_neox_rules(p: Preset) -> list[Rule]:
  d, f, h = p.d_model, p.d_ff, p.num_heads
  rules = [Rule("embed_in.weight", (p.vocab_size, d), ((("embed", "embedding"), same),))]
  for i in range(p.num_layers):
    src, layer = f"layers.{i}", f"layer_{i}"
    rules += _norm(f"{src}.input_layernorm", (layer, "ln1"), d)
    rules += _fused_qkv(f"{src}.attention.query_key_value", layer, d, h)
    rules += linear(f"{src}.attention.dense", (layer, "attn", "out"), d, d, True)
    rules += _norm(f"{src}.post_attention_layernorm", (layer, "ln2"), d)
    rules += linear(f"{src}.mlp.dense_h_to_4h", (layer, "mlp", "wi"), d, f, True)
    rules += linear(f"{src}.mlp.dense_4h_to_h", (layer, "mlp", "wo"), f, d, True)
  return rules + _norm("final_layer_norm", ("ln_f",), d) + untied_head(p, "embed_out.weight")


def opt_rules(p: Preset) -> list[Rule]:
  d, f, e, b = p.d_model, p.d_ff, p.token_dim, p.use_bias
  rules = [
    Rule("embed_tokens.weight", (p.vocab_size, e), ((("embed", "embedding"), same),)),
    Rule("embed_positions.weight", (p.max_len + p.pos_offset, d), ((("pos_embed",), same),)),
  ]
  if e != d:
    rules += linear("project_in", ("embed_proj_in",), e, d, False)
    rules += linear("project_out", ("embed_proj_out",), d, e, False)
  for i in range(p.num_layers):
    src, layer = f"layers.{i}", f"layer_{i}"
    rules += _norm(f"{src}.self_attn_layer_norm", (layer, "ln1"), d)
    for hf, ours in zip(("q_proj", "k_proj", "v_proj", "out_proj"), QKV + ("out",)):
      rules += linear(f"{src}.self_attn.{hf}", (layer, "attn", ours), d, d, b)
    rules += _norm(f"{src}.final_layer_norm", (layer, "ln2"), d)
    rules += linear(f"{src}.fc1", (layer, "mlp", "wi"), d, f, b)
    rules += linear(f"{src}.fc2", (layer, "mlp", "wo"), f, d, b)
  if not p.post_norm:
    rules += _norm("final_layer_norm", ("ln_f",), d)
  return rules + untied_head(p, HEAD)


def bloom_rules(p: Preset) -> list[Rule]:
  d, f, h = p.d_model, p.d_ff, p.num_heads
  rules = [Rule("word_embeddings.weight", (p.vocab_size, d), ((("embed", "embedding"), same),))]
  rules += _norm("word_embeddings_layernorm", ("embed_norm",), d)
  for i in range(p.num_layers):
    src, layer = f"h.{i}", f"layer_{i}"
    rules += _norm(f"{src}.input_layernorm", (layer, "ln1"), d)
    rules += _fused_qkv(f"{src}.self_attention.query_key_value", layer, d, h)
    rules += linear(f"{src}.self_attention.dense", (layer, "attn", "out"), d, d, True)
    rules += _norm(f"{src}.post_attention_layernorm", (layer, "ln2"), d)
    rules += linear(f"{src}.mlp.dense_h_to_4h", (layer, "mlp", "wi"), d, f, True)
    rules += linear(f"{src}.mlp.dense_4h_to_h", (layer, "mlp", "wo"), f, d, True)
  return rules + _norm("ln_f", ("ln_f",), d) + untied_head(p, HEAD)


FAMILIES = {
  f.name: f
  for f in (
    Family(
      "gpt2",
      "GPT2LMHeadModel",
      ("transformer.", ""),
      (HEAD,),
      r"h\.\d+\.attn\.(bias|masked_bias)",
      gpt2_preset,
      gpt2_rules,
    ),
    # transformers >= 5 calls the head lm_head in memory (its state_dict) and embed_out on disk
    Family(
      "gpt_neox",
      "GPTNeoXForCausalLM",
      ("gpt_neox.",),
      ("embed_out.weight", HEAD),
      r"layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",
      gpt_neox_preset,
      gpt_neox_rules,
    ),
    Family(
      "opt", "OPTForCausalLM", ("model.decoder.", "decoder."), (HEAD,), r"$^", opt_preset, opt_rules
    ),
    Family(
      "bloom", "BloomForCausalLM", ("transformer.", ""), (HEAD,), r"$^", bloom_preset, bloom_rules
    ),
    *llama.FAMILIES,
  )
}


def family_of(cfg: dict[str, Any]) -> Family:
  """The family config.json names: its model_type, or without one its architectures."""
  by_arch = {f.architecture: f for f in FAMILIES.values()}
  model_type = cfg.get("model_type")
  if model_type in FAMILIES:
    return FAMILIES[model_type]
  known = [by_arch[a] for a in cfg.get("architectures") or () if a in by_arch]
  if model_type is None and known:
    return known[0]
  raise ValueError(
    f"config.json model_type={model_type!r} (architectures="
    f"{cfg.get('architectures')!r}) is not supported; allowed model_type: "
    f"{sorted(FAMILIES)} (architectures {sorted(by_arch)})"
  )

"""The Llama-architecture families: config.json -> Preset, tensors -> params.

    llama    Llama 2 / 3.x, SmolLM2 (and any LlamaForCausalLM)
    mistral  Mistral-7B-v0.3 (v0.1/v0.2's 4096-token sliding window is refused)
    qwen2    Qwen2 / Qwen2.5: biases on q, k and v only
    qwen3    Qwen3: RMSNorm over each query and key head, explicit head_dim
    gemma    Gemma (1): RMSNorm scale 1 + w, embeddings x sqrt(d_model), GeGLU, head_dim

All are one checkpoint layout (transformers' `LlamaForCausalLM` naming): pre-norm blocks
with RMSNorm, separate q/k/v/o projections with num_key_value_heads key/value heads
(grouped-query attention, transformers' `repeat_kv` order), half-split rotary on whole
heads (`rotate_half`, theta = rope_theta; Llama 3.1's `llama3` rescaling), a gated MLP
down(act(gate(x)) * up(x)) and no biases unless the family has them. Our names:

    model.embed_tokens                 embed/embedding
    model.layers.i.input_layernorm     layer_i/ln1/scale      (post_attention_layernorm: ln2)
    self_attn.{q,k,v,o}_proj           layer_i/attn/{query,key,value,out}
    self_attn.{q,k}_norm               layer_i/attn/{query,key}_norm/scale   (Qwen3)
    mlp.{gate,up,down}_proj            layer_i/mlp/{gate,wi,wo}
    model.norm                         ln_f/scale;   lm_head: head/kernel when untied

Refused, naming the config.json key and value, before any weight is read: sliding-window
attention (Mistral `sliding_window` shorter than max_position_embeddings; Qwen
`use_sliding_window` with sliding layers, or `layer_types` other than full_attention),
mixture-of-experts keys, rope types other than default and llama3, partial rotary,
attention/MLP biases where the family has none, Gemma's bidirectional attention, and heads
not a multiple of the key/value heads. Defaults for keys a config.json leaves out are the
transformers config classes' (5.24).
"""

from __future__ import annotations

from typing import Any

from kbit_jax.convert.rules import (
  HEAD,
  Family,
  Path,
  Rule,
  config_activation,
  config_value,
  linear,
  require,
  same,
  untied_head,
)
from kbit_jax.model.presets import ROPE_TYPES, Preset

# transformers' config class defaults (5.24) for keys a config.json may leave out
_DEFAULTS = {
  "llama": dict(num_key_value_heads=0, tie_word_embeddings=False, max_position_embeddings=2048),
  "mistral": dict(num_key_value_heads=8, tie_word_embeddings=False, max_position_embeddings=131072),
  "qwen2": dict(num_key_value_heads=32, tie_word_embeddings=False, max_position_embeddings=32768),
  "qwen3": dict(
    num_key_value_heads=32, tie_word_embeddings=False, max_position_embeddings=32768, head_dim=128
  ),
  "gemma": dict(
    num_key_value_heads=16,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    head_dim=256,
    hidden_act="gelu_pytorch_tanh",
  ),
}
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _rope(cfg: dict[str, Any]) -> dict[str, Any]:
  """Preset rotary fields from transformers >= 5's `rope_parameters` or the hub's
  `rope_theta` + `rope_scaling` (either may be absent: plain rotary, theta 10000)."""
  rope = {**(cfg.get("rope_scaling") or {}), **(cfg.get("rope_parameters") or {})}
  if any(isinstance(v, dict) for v in rope.values()):
    raise ValueError(
      f"config.json rope_parameters={rope!r} (per layer type) is not supported; "
      "supported: one rope setting for every layer"
    )
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ROPE_TYPES:
    raise ValueError(
      f"config.json rope scaling rope_type={rope_type!r} is not supported; supported: "
      f"{list(ROPE_TYPES)}"
    )
  partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    raise ValueError(
      f"config.json partial_rotary_factor={partial!r} is not supported for model_type "
      f"{cfg.get('model_type')!r} (its transformers model rotates whole heads); supported: 1.0"
    )
  out = dict(rotary_base=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
  if rope_type == "llama3":
    missing = [k for k in _LLAMA3_KEYS if k not in rope]
    if missing:
      raise ValueError(
        f"config.json rope scaling 'llama3' has no {missing}; it needs {_LLAMA3_KEYS}"
      )
    out.update(
      rope_type="llama3",
      rope_factor=float(rope["factor"]),
      rope_low_freq_factor=float(rope["low_freq_factor"]),
      rope_high_freq_factor=float(rope["high_freq_factor"]),
      rope_original_max_len=int(rope["original_max_position_embeddings"]),
    )
  return out


def _full_attention(cfg: dict[str, Any], model_type: str, num_layers: int, max_len: int) -> None:
  """Raises unless every layer attends to every earlier position, as transformers decides."""
  types = cfg.get("layer_types")
  if types is not None:
    sliding = [i for i, t in enumerate(types) if t != "full_attention"]
    if sliding:
      raise ValueError(
        f"config.json layer_types[{sliding[0]}]={types[sliding[0]]!r} ({len(sliding)} of "
        f"{len(types)} layers) is not supported; supported: every layer 'full_attention'"
      )
  window = cfg.get("sliding_window")
  if model_type == "mistral" and window is not None and window < max_len:
    raise ValueError(
      f"config.json sliding_window={window!r} is not supported (windowed attention over "
      f"max_position_embeddings={max_len}); supported: null or >= max_position_embeddings "
      "(Mistral-7B-v0.3 has null; v0.1 has 4096)"
    )
  if model_type in ("qwen2", "qwen3") and cfg.get("use_sliding_window") and window is not None:
    first = cfg.get("max_window_layers", 28)
    if first < num_layers:
      raise ValueError(
        f"config.json use_sliding_window=True (sliding_window={window}, max_window_layers="
        f"{first}) makes layers {first}..{num_layers - 1} sliding-window, which is not "
        "supported; supported: use_sliding_window false"
      )


def _preset(cfg: dict[str, Any], model_type: str, **switches: Any) -> Preset:
  """The Llama architecture from config.json, plus the family's `switches`."""
  defaults = _DEFAULTS[model_type]
  for key in MOE_KEYS:
    if cfg.get(key):
      raise ValueError(
        f"config.json {key}={cfg[key]!r}: mixture-of-experts layers are not supported; "
        "supported: a dense MLP (no expert keys)"
      )
  require(cfg, "mlp_bias", False, False)
  if model_type != "qwen2":  # Qwen2's q/k/v biases are not configurable
    require(cfg, "attention_bias", False, False)
  d, heads = config_value(cfg, "hidden_size"), config_value(cfg, "num_attention_heads")
  kv_heads = config_value(cfg, "num_key_value_heads", default=defaults["num_key_value_heads"])
  kv_heads = kv_heads or heads
  if heads % kv_heads:
    raise ValueError(
      f"config.json num_attention_heads={heads} is not a multiple of "
      f"num_key_value_heads={kv_heads} (each key/value head serves a group of query heads)"
    )
  head_dim = config_value(cfg, "head_dim", default=defaults.get("head_dim", 0)) or d // heads
  num_layers = config_value(cfg, "num_hidden_layers")
  max_len = config_value(
    cfg, "max_position_embeddings", default=defaults["max_position_embeddings"]
  )
  _full_attention(cfg, model_type, num_layers, max_len)
  return Preset(
    num_layers=num_layers,
    d_model=d,
    num_heads=heads,
    d_ff=config_value(cfg, "intermediate_size"),
    vocab_size=config_value(cfg, "vocab_size"),
    max_len=max_len,
    positions="rotary",
    tie_embeddings=config_value(
      cfg, "tie_word_embeddings", default=defaults["tie_word_embeddings"]
    ),
    use_bias=False,
    activation=config_activation(cfg, "hidden_act", default=defaults.get("hidden_act", "silu")),
    norm="rmsnorm",
    mlp="gated",
    kv_heads=kv_heads,
    head_width=head_dim,
    norm_eps=float(config_value(cfg, "rms_norm_eps", default=1e-6)),
    **_rope(cfg),
    **switches,
  )


def llama_preset(cfg: dict[str, Any]) -> Preset:
  return _preset(cfg, "llama")


def mistral_preset(cfg: dict[str, Any]) -> Preset:
  return _preset(cfg, "mistral")


def qwen2_preset(cfg: dict[str, Any]) -> Preset:
  return _preset(cfg, "qwen2", qkv_bias=True)


def qwen3_preset(cfg: dict[str, Any]) -> Preset:
  return _preset(cfg, "qwen3", qk_norm=True)


def gemma_preset(cfg: dict[str, Any]) -> Preset:
  require(cfg, "use_bidirectional_attention", False, False)
  if cfg.get("hidden_act") == "gelu":  # as transformers' GemmaConfig: the legacy name of
    cfg = {**cfg, "hidden_act": "gelu_pytorch_tanh"}  # the tanh approximation
  return _preset(cfg, "gemma", norm_plus_one=True, embed_scale=True)


def _scale(source: str, target: Path, n: int) -> list[Rule]:
  """An RMSNorm: its weight is our scale (Gemma's w too: the model adds the 1)."""
  return [Rule(f"{source}.weight", (n,), ((target + ("scale",), same),))]


def llama_rules(p: Preset) -> list[Rule]:
  d, f, q, kv, qkv_bias = p.d_model, p.d_ff, p.q_dim, p.kv_dim, p.use_bias or p.qkv_bias
  rules = [Rule("embed_tokens.weight", (p.vocab_size, d), ((("embed", "embedding"), same),))]
  for i in range(p.num_layers):
    src, layer = f"layers.{i}", f"layer_{i}"
    attn, mlp = (layer, "attn"), (layer, "mlp")
    rules += _scale(f"{src}.input_layernorm", (layer, "ln1"), d)
    for hf, ours, width in (("q_proj", "query", q), ("k_proj", "key", kv), ("v_proj", "value", kv)):
      rules += linear(f"{src}.self_attn.{hf}", attn + (ours,), d, width, qkv_bias)
    rules += linear(f"{src}.self_attn.o_proj", attn + ("out",), q, d, p.use_bias)
    if p.qk_norm:
      rules += _scale(f"{src}.self_attn.q_norm", attn + ("query_norm",), p.head_dim)
      rules += _scale(f"{src}.self_attn.k_norm", attn + ("key_norm",), p.head_dim)
    rules += _scale(f"{src}.post_attention_layernorm", (layer, "ln2"), d)
    rules += linear(f"{src}.mlp.gate_proj", mlp + ("gate",), d, f, p.use_bias)
    rules += linear(f"{src}.mlp.up_proj", mlp + ("wi",), d, f, p.use_bias)
    rules += linear(f"{src}.mlp.down_proj", mlp + ("wo",), f, d, p.use_bias)
  return rules + _scale("norm", ("ln_f",), d) + untied_head(p, HEAD)


# Old Llama checkpoints store each layer's rotary inverse frequencies (a buffer).
_IGNORED = r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq"
FAMILIES = tuple(
  Family(name, architecture, ("model.", ""), (HEAD,), _IGNORED, preset_fn, llama_rules)
  for name, architecture, preset_fn in (
    ("llama", "LlamaForCausalLM", llama_preset),
    ("mistral", "MistralForCausalLM", mistral_preset),
    ("qwen2", "Qwen2ForCausalLM", qwen2_preset),
    ("qwen3", "Qwen3ForCausalLM", qwen3_preset),
    ("gemma", "GemmaForCausalLM", gemma_preset),
  )
)

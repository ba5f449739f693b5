"""The model-size table: preset name -> architecture, and exact parameter counts.

Tiny `s*` presets train on the embedded corpus on a laptop CPU (vocab = the shipped
tokenizer's 4096 pieces). The `*m`/`*b` presets follow Pythia's published shapes
(GPT-NeoX tokenizer, vocab padded to 50304, rotary positions, untied head) so that grids
and ahead-of-time checks can name the sizes of the k-bit study. The `gpt2*`, `opt-*`,
`pythia-*` and `bloom-*` presets are the pretrained families of the study exactly as
their Hugging Face checkpoints are built (`kbit_jax/convert` imports them; an import
records the name of the preset its config.json equals). The modern families (Llama 3.x,
SmolLM2, Mistral, Qwen2.5, Qwen3, Gemma) are the same one model with its Llama switches
(RMSNorm, gated MLP, grouped-query attention, rotary, no biases), and the tiny `l*`
presets are that architecture at the `s*` presets' total parameters, trained on the
embedded corpus like them. `tests/test_presets.py` checks `param_counts` against
`jax.eval_shape` for every entry without allocating; kbit_jax/model/README.md tabulates
them.
"""

from __future__ import annotations

import dataclasses

POSITIONS = ("learned", "rotary", "alibi")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("dense", "gated")  # gated: wo(act(gate x) * wi x), SwiGLU with silu, GeGLU with gelu
ROPE_TYPES = ("default", "llama3")  # llama3: Llama 3.1's frequency-dependent rescaling


@dataclasses.dataclass(frozen=True)
class Preset:
  """Architecture of one size. Every field is something a checkpoint's shapes depend on."""

  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  vocab_size: int
  max_len: int
  positions: str = "learned"  # one of POSITIONS
  tie_embeddings: bool = True  # head shares the token embedding
  use_bias: bool = True  # biases on every linear layer (GPT-2 / Pythia style)
  rotary_pct: float = 1.0  # share of each head's dims that rotate (Pythia: 0.25)
  activation: str = "gelu"  # one of ACTIVATIONS
  # Switches of the pretrained families (kbit_jax/convert); the defaults are the tiny
  # presets' pre-LN model.
  parallel_residual: bool = False  # x + attn(ln1 x) + mlp(ln2 x) (GPT-NeoX / Pythia)
  post_norm: bool = False  # LayerNorm after each residual add, no final LN (OPT-350m)
  embed_norm: bool = False  # LayerNorm on the embeddings (BLOOM)
  embed_dim: int = 0  # token embedding width if not d_model: projected in and
  # out around the blocks (OPT-350m: 512)
  pos_offset: int = 0  # learned: table rows before position 0 (OPT: 2)
  norm_eps: float = 1e-5  # every LayerNorm's epsilon
  rotary_base: float = 10000.0  # rotary: wavelength base
  # Switches of the modern families (Llama, Mistral, Qwen, Gemma); the defaults above
  # and here leave every earlier preset, parameter tree and number unchanged.
  norm: str = "layernorm"  # one of NORMS; rmsnorm has a scale only
  norm_plus_one: bool = False  # rmsnorm scale applied as (1 + w), w initialised 0 (Gemma)
  mlp: str = "dense"  # one of MLPS; gated adds mlp/gate (same shape as mlp/wi)
  kv_heads: int = 0  # key/value heads if fewer than num_heads (grouped-query attention)
  head_width: int = 0  # each head's dims if not d_model // num_heads (Gemma: 256)
  qkv_bias: bool = False  # biases on query, key and value only (Qwen2: use_bias False)
  qk_norm: bool = False  # RMSNorm over each query and key head before rotary (Qwen3)
  embed_scale: bool = False  # token embeddings times sqrt(d_model) (Gemma)
  rope_type: str = "default"  # one of ROPE_TYPES
  rope_factor: float = 1.0  # llama3: the low frequencies' divisor (Llama 3.1: 8)
  rope_low_freq_factor: float = 1.0  # llama3: wavelengths > original/low are divided
  rope_high_freq_factor: float = 4.0  # llama3: wavelengths < original/high are kept
  rope_original_max_len: int = 0  # llama3: the pretraining context (8192)

  def __post_init__(self):
    # one spelling per architecture, so that equal models compare equal (import names)
    if self.kv_heads == self.num_heads:
      object.__setattr__(self, "kv_heads", 0)
    if self.head_width and self.head_width * self.num_heads == self.d_model:
      object.__setattr__(self, "head_width", 0)
    for name, allowed in (
      ("positions", POSITIONS),
      ("activation", ACTIVATIONS),
      ("norm", NORMS),
      ("mlp", MLPS),
      ("rope_type", ROPE_TYPES),
    ):
      if getattr(self, name) not in allowed:
        raise ValueError(f"Preset.{name}={getattr(self, name)!r} is unknown; allowed: {allowed}")
    if self.kv_heads < 0 or (self.kv_heads and self.num_heads % self.kv_heads):
      raise ValueError(
        f"Preset.kv_heads={self.kv_heads} must divide num_heads={self.num_heads} "
        "(each key/value head serves num_heads / kv_heads query heads); 0 = num_heads"
      )
    if self.norm_plus_one and self.norm != "rmsnorm":
      raise ValueError(f"Preset.norm_plus_one=True needs norm='rmsnorm', not {self.norm!r}")
    if self.rope_type != "default" and (
      self.positions != "rotary" or self.rope_original_max_len < 1
    ):
      raise ValueError(
        f"Preset.rope_type={self.rope_type!r} needs positions='rotary' and "
        f"rope_original_max_len >= 1 (got {self.positions!r}, {self.rope_original_max_len})"
      )

  @property
  def head_dim(self) -> int:
    return self.head_width or self.d_model // self.num_heads

  @property
  def num_kv_heads(self) -> int:
    return self.kv_heads or self.num_heads

  @property
  def q_dim(self) -> int:
    """Width of the query projection (and of the attention output)."""
    return self.num_heads * self.head_dim

  @property
  def kv_dim(self) -> int:
    """Width of the key and the value projections."""
    return self.num_kv_heads * self.head_dim

  @property
  def token_dim(self) -> int:
    """Width of the token embedding (and of the tied head's input)."""
    return self.embed_dim or self.d_model


TOKENIZER_VOCAB = 4096  # the embedded corpus's SentencePiece model, see data.py
PYTHIA_VOCAB = 50304

_tiny = dict(vocab_size=TOKENIZER_VOCAB, max_len=512, positions="learned", tie_embeddings=True)
_pythia = dict(
  vocab_size=PYTHIA_VOCAB, max_len=2048, positions="rotary", tie_embeddings=False, rotary_pct=0.25
)

PRESETS: dict[str, Preset] = {
  # name: Preset(layers, d_model, heads, d_ff, ...)    # params (exact, param_counts)
  "s0": Preset(1, 16, 2, 64, **_tiny),  # 77,040
  "s1": Preset(2, 32, 2, 128, **_tiny),  # 172,928
  "s2": Preset(2, 64, 4, 256, **_tiny),  # 395,008
  "s3": Preset(3, 96, 4, 384, **_tiny),  # 778,080
  "s4": Preset(4, 128, 4, 512, **_tiny),  # 1,383,168
  "s5": Preset(4, 192, 6, 768, **_tiny),  # 2,664,576
  "s6": Preset(6, 256, 8, 1024, **_tiny),  # 5,918,720
  "s7": Preset(8, 320, 5, 1280, **_tiny),  # 11,338,880
  # Pythia shapes; totals equal the published Pythia parameter counts.
  "70m": Preset(6, 512, 8, 2048, **_pythia),  # 70,426,624
  "160m": Preset(12, 768, 12, 3072, **_pythia),  # 162,322,944
  "410m": Preset(24, 1024, 16, 4096, **_pythia),  # 405,334,016
  "1b": Preset(16, 2048, 8, 8192, **_pythia),  # 1,011,781,632
  "1.4b": Preset(24, 2048, 16, 8192, **_pythia),  # 1,414,647,808
  "2.8b": Preset(32, 2560, 32, 10240, **_pythia),  # 2,775,208,960
  "6.9b": Preset(32, 4096, 32, 16384, **{**_pythia, "vocab_size": 50432}),  # 6,857,302,016
}

# The pretrained families of the k-bit study, as their Hugging Face checkpoints are built;
# totals are the parameters those checkpoints hold (OPT's include its 2 unused position rows).
_gpt2 = dict(vocab_size=50257, max_len=1024, activation="gelu_tanh")
_opt = dict(vocab_size=50272, max_len=2048, activation="relu", pos_offset=2)
_pythia_hf = dict(_pythia, parallel_residual=True)
_bloom = dict(
  vocab_size=250880, max_len=2048, positions="alibi", activation="gelu_tanh", embed_norm=True
)
PRESETS.update(
  {
    "gpt2": Preset(12, 768, 12, 3072, **_gpt2),  # 124,439,808
    "gpt2-medium": Preset(24, 1024, 16, 4096, **_gpt2),  # 354,823,168
    "gpt2-large": Preset(36, 1280, 20, 5120, **_gpt2),  # 774,030,080
    "gpt2-xl": Preset(48, 1600, 25, 6400, **_gpt2),  # 1,557,611,200
    "opt-125m": Preset(12, 768, 12, 3072, **_opt),  # 125,239,296
    # 331,196,416: post-LN, tokens embedded in 512 dims and projected to d_model and back
    "opt-350m": Preset(24, 1024, 16, 4096, **_opt, post_norm=True, embed_dim=512),
    "opt-1.3b": Preset(24, 2048, 32, 8192, **_opt),  # 1,315,758,080
    "opt-2.7b": Preset(32, 2560, 32, 10240, **_opt),  # 2,651,596,800
    "opt-6.7b": Preset(32, 4096, 32, 16384, **_opt),  # 6,658,473,984
    "opt-13b": Preset(40, 5120, 40, 20480, **_opt),  # 12,853,473,280
    "opt-30b": Preset(48, 7168, 56, 28672, **_opt),  # 29,974,540,288
    "opt-66b": Preset(64, 9216, 72, 36864, **_opt),  # 65,719,701,504
    "pythia-70m": Preset(6, 512, 8, 2048, **_pythia_hf),  # 70,426,624
    "pythia-160m": Preset(12, 768, 12, 3072, **_pythia_hf),  # 162,322,944
    "pythia-410m": Preset(24, 1024, 16, 4096, **_pythia_hf),  # 405,334,016
    "pythia-1b": Preset(16, 2048, 8, 8192, **_pythia_hf),  # 1,011,781,632
    "pythia-1.4b": Preset(24, 2048, 16, 8192, **_pythia_hf),  # 1,414,647,808
    "pythia-2.8b": Preset(32, 2560, 32, 10240, **_pythia_hf),  # 2,775,208,960
    # 6,857,302,016 and 11,846,072,320
    "pythia-6.9b": Preset(32, 4096, 32, 16384, **{**_pythia_hf, "vocab_size": 50432}),
    "pythia-12b": Preset(36, 5120, 40, 20480, **{**_pythia_hf, "vocab_size": 50688}),
    "bloom-560m": Preset(24, 1024, 16, 4096, **_bloom),  # 559,214,592
    "bloom-1b1": Preset(24, 1536, 16, 6144, **_bloom),  # 1,065,314,304
    "bloom-1b7": Preset(24, 2048, 16, 8192, **_bloom),  # 1,722,408,960
    "bloom-3b": Preset(30, 2560, 32, 10240, **_bloom),  # 3,002,557,440
    "bloom-7b1": Preset(30, 4096, 32, 16384, **_bloom),  # 7,069,016,064
    "bloom-176b": Preset(70, 14336, 112, 57344, **_bloom),  # 176,247,271,424
  }
)


# Llama-style tiny presets: RMSNorm, SwiGLU, grouped-query attention (kv_heads = heads / 2),
# rotary, no biases, tied head, the embedded tokenizer's vocab. Layers, width and heads
# are s0..s6's; d_ff is the one whose total is nearest s*'s (the rotary model has no
# position table, so its MLP is wider: more non-embedding parameters at equal total).
_llama_tiny = dict(
  vocab_size=TOKENIZER_VOCAB,
  max_len=512,
  positions="rotary",
  tie_embeddings=True,
  use_bias=False,
  norm="rmsnorm",
  mlp="gated",
  activation="silu",
)
PRESETS.update(
  {  # name: Preset(layers, d_model, heads, d_ff, ...)   # params; s* params
    "l0": Preset(1, 16, 2, 223, kv_heads=1, **_llama_tiny),  # 77,056; 77,040
    "l1": Preset(2, 32, 2, 185, kv_heads=1, **_llama_tiny),  # 172,896; 172,928
    "l2": Preset(2, 64, 4, 281, kv_heads=2, **_llama_tiny),  # 394,944; 395,008
    "l3": Preset(3, 96, 4, 349, kv_heads=2, **_llama_tiny),  # 778,368; 778,080
    "l4": Preset(4, 128, 4, 430, kv_heads=2, **_llama_tiny),  # 1,382,528; 1,383,168
    "l5": Preset(4, 192, 6, 622, kv_heads=3, **_llama_tiny),  # 2,663,616; 2,664,576
    "l6": Preset(6, 256, 8, 800, kv_heads=4, **_llama_tiny),  # 5,917,952; 5,918,720
  }
)

# The modern pretrained families as their Hugging Face config.json files describe them
# (hub ids in configs/grid_pretrained.py; totals checked in tests/test_presets.py
# against the published counts). Fields that change no shape (max_len, rotary_base,
# norm_eps, rope scaling) follow the configs too, so that an import names its preset.
_llama = dict(_llama_tiny, norm_eps=1e-5)
_llama3 = dict(
  _llama,
  vocab_size=128256,
  max_len=131072,
  rotary_base=500000.0,
  rope_type="llama3",
  rope_low_freq_factor=1.0,
  rope_high_freq_factor=4.0,
  rope_original_max_len=8192,
)
_llama31 = dict(_llama3, tie_embeddings=False, rope_factor=8.0)
_llama32 = dict(_llama3, rope_factor=32.0)
_smollm2 = dict(_llama, vocab_size=49152, max_len=8192, rotary_base=100000.0)
_smollm2_17 = dict(_smollm2, rotary_base=130000.0)
_mistral = dict(
  _llama, vocab_size=32768, max_len=32768, rotary_base=1000000.0, tie_embeddings=False
)
_qwen = dict(_llama, vocab_size=151936, max_len=32768, rotary_base=1000000.0, norm_eps=1e-6)
_qwen2 = dict(_qwen, qkv_bias=True)
_qwen2_long = dict(_qwen2, max_len=131072)
_qwen3 = dict(_qwen, qk_norm=True, head_width=128)
_qwen3_8b = dict(_qwen3, tie_embeddings=False)
_qwen25_7b = dict(_qwen2, tie_embeddings=False, vocab_size=152064, max_len=131072)
_gemma = dict(
  _llama,
  vocab_size=256000,
  max_len=8192,
  norm_eps=1e-6,
  activation="gelu_tanh",
  norm_plus_one=True,
  embed_scale=True,
  head_width=256,
)
PRESETS.update(
  {  # name: Preset(layers, d_model, heads, d_ff, ...)                  # params (exact)
    "smollm2-135m": Preset(30, 576, 9, 1536, kv_heads=3, **_smollm2),  # 134,515,008
    "smollm2-360m": Preset(32, 960, 15, 2560, kv_heads=5, **_smollm2),  # 361,821,120
    "smollm2-1.7b": Preset(24, 2048, 32, 8192, **_smollm2_17),  # 1,711,376,384
    "llama-3.2-1b": Preset(16, 2048, 32, 8192, kv_heads=8, **_llama32),  # 1,235,814,400
    "llama-3.2-3b": Preset(28, 3072, 24, 8192, kv_heads=8, **_llama32),  # 3,212,749,824
    "llama-3.1-8b": Preset(32, 4096, 32, 14336, kv_heads=8, **_llama31),  # 8,030,261,248
    "mistral-7b-v0.3": Preset(32, 4096, 32, 14336, kv_heads=8, **_mistral),  # 7,248,023,552
    "qwen2.5-0.5b": Preset(24, 896, 14, 4864, kv_heads=2, **_qwen2),  # 494,032,768
    "qwen2.5-1.5b": Preset(28, 1536, 12, 8960, kv_heads=2, **_qwen2_long),  # 1,543,714,304
    "qwen2.5-3b": Preset(36, 2048, 16, 11008, kv_heads=2, **_qwen2),  # 3,085,938,688
    "qwen2.5-7b": Preset(28, 3584, 28, 18944, kv_heads=4, **_qwen25_7b),  # 7,615,616,512
    "qwen3-0.6b": Preset(28, 1024, 16, 3072, kv_heads=8, **_qwen3),  # 596,049,920
    "qwen3-1.7b": Preset(28, 2048, 16, 6144, kv_heads=8, **_qwen3),  # 1,720,574,976
    "qwen3-4b": Preset(36, 2560, 32, 9728, kv_heads=8, **_qwen3),  # 4,022,468,096
    "qwen3-8b": Preset(36, 4096, 32, 12288, kv_heads=8, **_qwen3_8b),  # 8,190,735,360
    "gemma-2b": Preset(18, 2048, 8, 16384, kv_heads=1, **_gemma),  # 2,506,172,416
    "gemma-7b": Preset(28, 3072, 16, 24576, **_gemma),  # 8,537,680,896
  }
)


def get_preset(name: str) -> Preset:
  if name not in PRESETS:
    raise ValueError(f"model.preset={name!r} is unknown; allowed: {sorted(PRESETS)}")
  return PRESETS[name]


def param_counts(p: Preset) -> dict[str, int]:
  """Exact parameter counts of `model.Transformer` built from `p`.

  `embedding` counts the token (and learned position) tables; `head` the untied output
  matrix; `non_embedding` everything else (the usual N of scaling laws), including the
  embedding LayerNorm and the projections of a narrower token embedding.
  """
  d, f, b, e = p.d_model, p.d_ff, int(p.use_bias), p.token_dim
  q, kv, qkv_b = p.q_dim, p.kv_dim, int(p.use_bias or p.qkv_bias)
  norm = 2 * d if p.norm == "layernorm" else d  # scale (+ bias)
  attention = (
    d * (q + 2 * kv)  # query, key, value
    + qkv_b * (q + 2 * kv)
    + q * d  # out
    + b * d
    + (2 * p.head_dim if p.qk_norm else 0)
  )
  up = 2 if p.mlp == "gated" else 1  # wi (and gate)
  mlp = up * (d * f + b * f) + f * d + b * d
  per_layer = 2 * norm + attention + mlp
  positions = (p.max_len + p.pos_offset) * d if p.positions == "learned" else 0
  embedding = p.vocab_size * e + positions
  head = 0 if p.tie_embeddings else e * p.vocab_size  # the head never has a bias
  non_embedding = (
    p.num_layers * per_layer
    + (0 if p.post_norm else norm)  # final norm
    + (norm if p.embed_norm else 0)
    + (2 * e * d if e != d else 0)
  )  # projections in and out
  return dict(
    embedding=embedding,
    head=head,
    non_embedding=non_embedding,
    total=embedding + head + non_embedding,
  )

"""The model-size table: preset name -> architecture, and exact parameter counts.

Tiny `s*` presets train on the embedded corpus on a laptop CPU (vocab = the shipped
tokenizer's 4096 pieces). The `*m`/`*b` presets follow Pythia's published shapes
(GPT-NeoX tokenizer, vocab padded to 50304, rotary positions, untied head) so that grids
and ahead-of-time checks can name the sizes of the k-bit study. The `gpt2*`, `opt-*`,
`pythia-*` and `bloom-*` presets are the pretrained families of the study exactly as
their Hugging Face checkpoints are built (`kbit_jax/convert` imports them; an import
records the name of the preset its config.json equals). `tests/test_presets.py` checks
`param_counts` against `jax.eval_shape` for every entry without allocating.
"""

from __future__ import annotations

import dataclasses

POSITIONS = ("learned", "rotary", "alibi")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


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

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

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
  layer_norm = 2 * d  # scale + bias
  attention = 4 * (d * d + b * d)  # q, k, v, out
  mlp = d * f + b * f + f * d + b * d
  per_layer = 2 * layer_norm + attention + mlp
  positions = (p.max_len + p.pos_offset) * d if p.positions == "learned" else 0
  embedding = p.vocab_size * e + positions
  head = 0 if p.tie_embeddings else e * p.vocab_size  # the head never has a bias
  non_embedding = (
    p.num_layers * per_layer
    + (0 if p.post_norm else layer_norm)  # final LayerNorm
    + (layer_norm if p.embed_norm else 0)
    + (2 * e * d if e != d else 0)
  )  # projections in and out
  return dict(
    embedding=embedding,
    head=head,
    non_embedding=non_embedding,
    total=embedding + head + non_embedding,
  )

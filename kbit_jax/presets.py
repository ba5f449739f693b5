"""The model-size table: preset name -> architecture, and exact parameter counts.

Tiny `s*` presets train on the embedded corpus on a laptop CPU (vocab = the shipped
tokenizer's 4096 pieces). The `*m`/`*b` presets follow Pythia's published shapes
(GPT-NeoX tokenizer, vocab padded to 50304, rotary positions, untied head) so that grids
and ahead-of-time checks can name the sizes of the k-bit study. `tests/test_presets.py`
checks `param_counts` against `jax.eval_shape` for every entry without allocating.
"""
from __future__ import annotations

import dataclasses

POSITIONS = ("learned", "rotary")
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
  positions: str = "learned"     # one of POSITIONS
  tie_embeddings: bool = True    # head shares the token embedding
  use_bias: bool = True          # biases on every linear layer (GPT-2 / Pythia style)
  rotary_pct: float = 1.0        # share of each head's dims that rotate (Pythia: 0.25)
  activation: str = "gelu"       # one of ACTIVATIONS

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


TOKENIZER_VOCAB = 4096   # the embedded corpus's SentencePiece model, see data.py
PYTHIA_VOCAB = 50304

_tiny = dict(vocab_size=TOKENIZER_VOCAB, max_len=512, positions="learned", tie_embeddings=True)
_pythia = dict(vocab_size=PYTHIA_VOCAB, max_len=2048, positions="rotary", tie_embeddings=False,
               rotary_pct=0.25)

PRESETS: dict[str, Preset] = {
    # name: Preset(layers, d_model, heads, d_ff, ...)    # params (exact, param_counts)
    "s0": Preset(1, 16, 2, 64, **_tiny),                   # 77,040
    "s1": Preset(2, 32, 2, 128, **_tiny),                  # 172,928
    "s2": Preset(2, 64, 4, 256, **_tiny),                  # 395,008
    "s3": Preset(3, 96, 4, 384, **_tiny),                  # 778,080
    "s4": Preset(4, 128, 4, 512, **_tiny),                 # 1,383,168
    "s5": Preset(4, 192, 6, 768, **_tiny),                 # 2,664,576
    "s6": Preset(6, 256, 8, 1024, **_tiny),                # 5,918,720
    "s7": Preset(8, 320, 5, 1280, **_tiny),                # 11,338,880
    # Pythia shapes; totals equal the published Pythia parameter counts.
    "70m": Preset(6, 512, 8, 2048, **_pythia),             # 70,426,624
    "160m": Preset(12, 768, 12, 3072, **_pythia),          # 162,322,944
    "410m": Preset(24, 1024, 16, 4096, **_pythia),         # 405,334,016
    "1b": Preset(16, 2048, 8, 8192, **_pythia),            # 1,011,781,632
    "1.4b": Preset(24, 2048, 16, 8192, **_pythia),         # 1,414,647,808
    "2.8b": Preset(32, 2560, 32, 10240, **_pythia),        # 2,775,208,960
    "6.9b": Preset(32, 4096, 32, 16384, **{**_pythia, "vocab_size": 50432}),  # 6,857,302,016
}


def get_preset(name: str) -> Preset:
  if name not in PRESETS:
    raise ValueError(f"model.preset={name!r} is unknown; allowed: {sorted(PRESETS)}")
  return PRESETS[name]


def param_counts(p: Preset) -> dict[str, int]:
  """Exact parameter counts of `model.Transformer` built from `p`.

  `embedding` counts the token (and learned position) tables; `head` the untied output
  matrix; `non_embedding` everything else (the usual N of scaling laws).
  """
  d, f, b = p.d_model, p.d_ff, int(p.use_bias)
  layer_norm = 2 * d                                    # scale + bias
  attention = 4 * (d * d + b * d)                       # q, k, v, out
  mlp = d * f + b * f + f * d + b * d
  per_layer = 2 * layer_norm + attention + mlp
  embedding = p.vocab_size * d + (p.max_len * d if p.positions == "learned" else 0)
  head = 0 if p.tie_embeddings else d * p.vocab_size   # the head never has a bias
  non_embedding = p.num_layers * per_layer + layer_norm  # + final LayerNorm
  return dict(embedding=embedding, head=head, non_embedding=non_embedding,
              total=embedding + head + non_embedding)

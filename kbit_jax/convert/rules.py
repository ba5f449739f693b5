"""What every family is made of: the `Family` and `Rule` records, config.json readers
that name what they refuse, and the tensor rules shared by the families (families.py:
GPT-2, GPT-NeoX, OPT, BLOOM; llama.py: Llama, Mistral, Qwen2, Qwen3, Gemma).

A rule is one checkpoint tensor (its name without the family's prefix and its torch
shape) and the parameters it becomes, each through a transform of the stored array to
our layout: (in, out) kernels for `nn.Dense`, fused projections split.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import numpy as np

from kbit_jax.model.presets import Preset

Path = tuple[str, ...]  # a parameter's path in our params tree
Transform = Callable[[np.ndarray], np.ndarray]
REQUIRED = object()
# HF activation name -> ours. gelu_new, gelu_fast and gelu_pytorch_tanh are all the tanh
# approximation of GELU (BLOOM's bloom_gelu is too); "gelu" is the exact erf form;
# silu (= swish) is SwiGLU's.
ACTIVATIONS = {
  "gelu": "gelu",
  "gelu_new": "gelu_tanh",
  "gelu_fast": "gelu_tanh",
  "gelu_pytorch_tanh": "gelu_tanh",
  "relu": "relu",
  "silu": "silu",
  "swish": "silu",
}
HEAD = "lm_head.weight"


@dataclasses.dataclass(frozen=True)
class Rule:
  """One checkpoint tensor (name without the family's prefix, torch shape) and the
  parameters it becomes, each through a transform of the stored array."""

  source: str
  shape: tuple[int, ...]
  targets: tuple[tuple[Path, Transform], ...]


@dataclasses.dataclass(frozen=True)
class Family:
  name: str  # config.json model_type
  architecture: str  # config.json architectures[0]
  prefixes: tuple[str, ...]  # where the base model's tensors may live
  heads: tuple[str, ...]  # names of the output matrix (never prefixed); the
  # first is the hub's, later ones what other tools write
  ignored: str  # regex: buffers some checkpoints store (masks, ...)
  preset_from_config: Callable[[dict[str, Any]], Preset]
  rules: Callable[[Preset], list[Rule]]


def is_ignored(family: Family, name: str) -> bool:
  return re.fullmatch(family.ignored, name) is not None


# ----------------------------------------------------------------------------- config


def config_value(cfg: dict[str, Any], *keys: str, default: Any = REQUIRED) -> Any:
  """The value of the first of `keys` present in config.json (HF renamed some keys)."""
  for key in keys:
    if key in cfg and cfg[key] is not None:
      return cfg[key]
  if default is REQUIRED:
    raise ValueError(
      f"config.json has no {' / '.join(map(repr, keys))}; the "
      f"{cfg.get('model_type')!r} family needs it"
    )
  return default


def require(cfg: dict[str, Any], key: str, supported: Any, default: Any) -> None:
  value = cfg.get(key, default)
  if value is None:
    value = default
  if value != supported:
    raise ValueError(f"config.json {key}={value!r} is not supported; supported: {supported!r}")


def config_activation(cfg: dict[str, Any], *keys: str, default: Any = REQUIRED) -> str:
  name = config_value(cfg, *keys, default=default)
  if name not in ACTIVATIONS:
    raise ValueError(
      f"config.json {keys[0]}={name!r} is not supported; allowed: {sorted(ACTIVATIONS)}"
    )
  return ACTIVATIONS[name]


# ----------------------------------------------------------------------------- tensors


def same(w: np.ndarray) -> np.ndarray:
  return w


def transposed(w: np.ndarray) -> np.ndarray:
  return w.T


def linear(
  source: str, target: Path, d_in: int, d_out: int, bias: bool, conv1d: bool = False
) -> list[Rule]:
  """torch Linear, weight (out, in); or GPT-2's Conv1D, weight (in, out)."""
  shape, transform = ((d_in, d_out), same) if conv1d else ((d_out, d_in), transposed)
  rules = [Rule(f"{source}.weight", shape, ((target + ("kernel",), transform),))]
  if bias:
    rules.append(Rule(f"{source}.bias", (d_out,), ((target + ("bias",), same),)))
  return rules


def untied_head(p: Preset, name: str) -> list[Rule]:
  """The output matrix (vocab, in) as our (in, vocab) head kernel; none when tied."""
  if p.tie_embeddings:
    return []
  return [Rule(name, (p.vocab_size, p.token_dim), ((("head", "kernel"), transposed),))]

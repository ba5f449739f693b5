"""`QuantSpec`: the validated `config.quant`, and which parameters it quantizes.

`QuantSpec.from_config(config.quant)` checks every key before anything is traced or
compiled; each error is a ValueError naming the key, the bad value and what is allowed.
The spec is a frozen (hashable) dataclass, so it can be a static jit argument.

Targets name parameter groups of `model.Transformer`: `attn` (query/key/value/out
kernels), `mlp` (wi/wo kernels, and gate in a gated MLP), `head` (the untied output
kernel), `embed` (the token embedding table). Biases, LayerNorms/RMSNorms (Qwen3's q/k
norms too) and position tables are never quantized.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import jax
import numpy as np
from flax.core import meta

from kbit_jax.quant import blockwise, codebooks, outliers

UNQUANTIZED_BITS = 16
WEIGHT_BITS = codebooks.BITS + (UNQUANTIZED_BITS,)
ACT_BITS = codebooks.BITS + (UNQUANTIZED_BITS,)
TARGETS = ("attn", "mlp", "head", "embed")
MODES = ("ptq", "qat")
DOUBLE_QUANT_DTYPES = ("nf",)  # QLoRA's combination; others are not in the study


def _fail(key: str, value: Any, allowed: str) -> None:
  raise ValueError(f"quant.{key}={value!r} is not allowed; allowed: {allowed}")


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _parse_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
  items = targets.split(",") if isinstance(targets, str) else list(targets)
  items = tuple(t.strip() for t in items if t.strip())
  bad = [t for t in items if t not in TARGETS]
  if bad or not items or len(set(items)) != len(items):
    _fail(
      "targets", targets, f"a comma list of distinct names from {list(TARGETS)}, e.g. 'attn,mlp'"
    )
  return items


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """Weight (and matmul-input) quantization of one run. `bits=16` quantizes nothing."""

  bits: int = UNQUANTIZED_BITS
  dtype: str = "int"
  exponent_bits: int = 0  # float only; 0 on input = study default, resolved here
  blocksize: int = 64
  outlier_share: float = 0.0
  double_quant: bool = False
  targets: tuple[str, ...] = ("attn", "mlp")
  act_bits: int = UNQUANTIZED_BITS
  mode: str = "ptq"

  def __post_init__(self):
    if not _is_int(self.bits) or self.bits not in WEIGHT_BITS:
      _fail("bits", self.bits, f"{list(codebooks.BITS)} or {UNQUANTIZED_BITS}")
    if self.dtype not in codebooks.DTYPES:
      _fail("dtype", self.dtype, str(list(codebooks.DTYPES)))
    if not _is_int(self.exponent_bits) or self.exponent_bits < 0:
      _fail("exponent_bits", self.exponent_bits, "0 (study default) or 1..bits-1")
    if self.exponent_bits and self.dtype != "float":
      _fail("exponent_bits", self.exponent_bits, f"0 with dtype={self.dtype!r} (float only)")
    if self.dtype == "float" and self.quantized:
      allowed = codebooks.exponent_bits_range(self.bits)
      if self.exponent_bits and self.exponent_bits not in allowed:
        _fail(
          "exponent_bits",
          self.exponent_bits,
          f"0 (study default) or {list(allowed)} for bits={self.bits}",
        )
      object.__setattr__(
        self, "exponent_bits", self.exponent_bits or codebooks.study_exponent_bits(self.bits)
      )
    if not _is_int(self.blocksize) or self.blocksize not in (
      blockwise.BLOCKSIZES + (blockwise.PER_TENSOR, blockwise.PER_CHANNEL)
    ):
      _fail(
        "blocksize",
        self.blocksize,
        f"{list(blockwise.BLOCKSIZES)}, 0 (per tensor) or -1 (per output channel)",
      )
    if (
      not isinstance(self.outlier_share, (int, float))
      or isinstance(self.outlier_share, bool)
      or not 0.0 <= self.outlier_share < 1.0
    ):
      _fail("outlier_share", self.outlier_share, "a share p with 0 <= p < 1")
    if not isinstance(self.double_quant, bool):
      _fail("double_quant", self.double_quant, "True or False")
    if self.double_quant and self.dtype not in DOUBLE_QUANT_DTYPES:
      _fail(
        "double_quant",
        self.double_quant,
        f"False with dtype={self.dtype!r}; True only with dtype in {list(DOUBLE_QUANT_DTYPES)}",
      )
    object.__setattr__(self, "targets", _parse_targets(self.targets))
    if not _is_int(self.act_bits) or self.act_bits not in ACT_BITS:
      _fail("act_bits", self.act_bits, f"{list(codebooks.BITS)} or {UNQUANTIZED_BITS}")
    if self.mode not in MODES:
      _fail("mode", self.mode, str(list(MODES)))
    object.__setattr__(self, "outlier_share", float(self.outlier_share))

  @classmethod
  def from_config(cls, quant: Mapping[str, Any]) -> "QuantSpec":
    """From `config.quant` (a ConfigDict or dict); keys not named here are ignored."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: quant[k] for k in fields if k in quant})

  @property
  def quantized(self) -> bool:
    return self.bits != UNQUANTIZED_BITS

  def key_fields(self) -> dict[str, Any]:
    """The quantization part of a result record's key (grid cells and `kbit harness`
    alike): the resolved spec, with neutral values for the 16-bit model (no data type
    or block size, so it is never repeated per dtype). act_bits is added by the callers,
    only when < 16."""
    q = self.quantized
    return dict(
      bits=self.bits,
      dtype=self.dtype if q else "none",
      exponent_bits=self.exponent_bits if q else 0,
      blocksize=self.blocksize if q else None,
      outlier_share=self.outlier_share if q else 0.0,
      targets=",".join(self.targets) if q else "none",
      double_quant=self.double_quant,
    )

  @property
  def centered(self) -> bool:
    return self.dtype == "int_centered"

  @property
  def data_dependent(self) -> bool:
    return self.dtype in codebooks.DATA_DTYPES

  def codebook(self) -> np.ndarray:
    """The normalised codes of a data-free type (raises for 'quantile' and 16 bits)."""
    return codebooks.codebook(
      self.dtype, self.bits, self.exponent_bits if self.dtype == "float" else 0
    )


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _is_box(x: Any) -> bool:
  return isinstance(x, meta.AxisMetadata)


def named_leaves(params: Any) -> tuple[list[tuple[str, ...]], list[Any], Any]:
  """(names, leaves, treedef) of a params tree; a top-level 'params' key is dropped from
  the names, and flax `Partitioned` boxes are leaves (unbox with `unboxed`)."""
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)
  names = []
  for path, _ in with_paths:
    parts = tuple(_key_name(k) for k in path)
    names.append(parts[1:] if parts[:1] == ("params",) else parts)
  return names, [leaf for _, leaf in with_paths], treedef


def unboxed(leaf: Any) -> Any:
  return leaf.unbox() if _is_box(leaf) else leaf


def reboxed(leaf: Any, value: Any) -> Any:
  return leaf.replace_boxed(value) if _is_box(leaf) else value


def target_of(names: tuple[str, ...]) -> str | None:
  """Which target group a parameter belongs to, or None if never quantized."""
  if not names:
    return None
  if names[-1] == "kernel":
    if "attn" in names:
      return "attn"
    if "mlp" in names:
      return "mlp"
    if names[0] == "head":
      return "head"
  if names == ("embed", "embedding"):
    return "embed"
  return None


def is_quantized(names: tuple[str, ...], spec: QuantSpec) -> bool:
  return spec.quantized and target_of(names) in spec.targets


def check_targets_exist(params_shapes: Any, spec: QuantSpec) -> None:
  """Raises if a requested target names no tensor of the model (e.g. `head` when the
  embeddings are tied), or if outliers are asked of a tensor without a proxy that fits
  (outliers.check_proxy_shapes). Works on `jax.eval_shape` output."""
  names, leaves, _ = named_leaves(params_shapes)
  outliers.check_proxy_shapes(
    {n: tuple(unboxed(leaf).shape) for n, leaf in zip(names, leaves)},
    spec.outlier_share if spec.quantized else 0.0,
    {n: is_quantized(n, spec) for n in names},
  )
  present = {target_of(n) for n in names} - {None}
  missing = [t for t in spec.targets if t not in present]
  if missing:
    _fail(
      "targets",
      ",".join(spec.targets),
      f"targets the model has: {sorted(present)} (no tensor for {missing}; `head` "
      "exists only with tie_embeddings=False)",
    )

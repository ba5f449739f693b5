"""k-bit entity and relation tables: the quant core's fake quantization, and their bits.

Each table is quantized as stored with `reference.fake_quant_tensor` (blockwise absmax,
any data type, k and block size of `QuantSpec`): flattened row-major, so a block of B
values lies within one entity's row when B divides D, and spans B/D consecutive entities
when D < B; B = -1 gives one scale per embedding column, B = 0 one per table.

What is quantized, and why:
- TransE: both tables as they are (unit-norm entity rows, relation vectors).
- RotatE: the entity table's real and imaginary parts (the stored (E, D) floats), and the
  relation table as stored, i.e. the *phases* (scaled angles), not cos/sin. A quantized
  phase is still a rotation, so |r_i| = 1 stays exact at any k, and a phase costs one
  value where (cos, sin) would cost two; absmax on phases in about [-pi, pi] with the int
  type is a uniform grid of angles.

Bits follow quant/bits.py: a quantized table of n values costs n k + its block constants
(`bits.constant_bits`: 16 per block, 32 for int_centered, QLoRA's for double_quant) +
2^k 16 for a quantile codebook; an unquantized table n 16. With n a multiple of B that
is k + 16/B per value. Outlier rows (no proxy source here), activation bits (no matmul
inputs are quantized) and QAT do not apply: a spec asking for them raises.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import numpy as np

from kbit_jax.quant import bits, blockwise, reference
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec

TABLES = ("entity", "relation")


def check_spec(spec: QuantSpec, tables: Sequence[str] = TABLES) -> None:
  """Raises ValueError naming the key and the allowed values."""
  if spec.outlier_share != 0.0:
    raise ValueError(
      f"quant.outlier_share={spec.outlier_share!r} is not supported for "
      "knowledge-graph tables; allowed: 0.0"
    )
  if spec.act_bits != UNQUANTIZED_BITS:
    raise ValueError(
      f"quant.act_bits={spec.act_bits!r} is not supported for "
      f"knowledge-graph tables; allowed: {UNQUANTIZED_BITS}"
    )
  if spec.mode != "ptq":
    raise ValueError(
      f"quant.mode={spec.mode!r} is not supported for knowledge-graph tables; allowed: 'ptq'"
    )
  bad = [t for t in tables if t not in TABLES]
  if bad or not tables or len(set(tables)) != len(tables):
    raise ValueError(
      f"tables={list(tables)!r} is not allowed; allowed: distinct names from {list(TABLES)}"
    )


def _fake_quant(
  params: dict[str, Any], spec: QuantSpec, tables: tuple[str, ...], codebook_C: jax.Array | None
) -> dict[str, Any]:
  return {
    name: reference.fake_quant_tensor(w, spec, None, codebook_C) if name in tables else w
    for name, w in params.items()
  }


@functools.lru_cache(maxsize=None)
def _compiled(spec: QuantSpec, tables: tuple[str, ...]):
  return jax.jit(functools.partial(_fake_quant, spec=spec, tables=tables))


def quantize_tables(
  params: dict[str, Any], spec: QuantSpec, tables: Sequence[str] = TABLES
) -> dict[str, Any]:
  """params with `tables` fake-quantized under `spec` (unchanged at 16 bits).

  Compiled once per block layout: the data-free codebook is a traced argument
  (`reference.layout_spec` / `spec_codebook`), so every k and data type of one layout
  share one program.
  """
  tables = tuple(tables)
  check_spec(spec, tables)
  if not spec.quantized:
    return params
  return _compiled(reference.layout_spec(spec), tables)(
    params, codebook_C=reference.spec_codebook(spec)
  )


def table_bits(shape: Sequence[int], spec: QuantSpec, quantized: bool = True) -> int:
  """Bits to store one table of `shape` under `spec` (quant/bits.py's accounting)."""
  n = math.prod(shape)
  if not (quantized and spec.quantized):
    return n * UNQUANTIZED_BITS
  codebook = 2**spec.bits * UNQUANTIZED_BITS if spec.data_dependent else 0
  return (
    n * spec.bits
    + codebook
    + bits.constant_bits(blockwise.num_blocks(tuple(shape), spec.blocksize), spec)
  )


def bits_report(
  params: dict[str, Any], spec: QuantSpec, tables: Sequence[str] = TABLES
) -> dict[str, Any]:
  """params, total_bits, bits_per_param, quantized_params, quantized_bits_per_param."""
  check_spec(spec, tables)
  shapes = {name: tuple(np.shape(w)) for name, w in params.items()}
  rows = {name: table_bits(s, spec, name in tables) for name, s in shapes.items()}
  total_params = sum(math.prod(s) for s in shapes.values())
  q_params = sum(math.prod(s) for n, s in shapes.items() if n in tables) if spec.quantized else 0
  q_bits = sum(rows[n] for n in tables) if spec.quantized else 0
  return dict(
    params=total_params,
    total_bits=sum(rows.values()),
    bits_per_param=sum(rows.values()) / total_params,
    quantized_params=q_params,
    quantized_bits_per_param=q_bits / q_params if q_params else float("nan"),
  )

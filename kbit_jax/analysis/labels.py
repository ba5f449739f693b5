"""Labels of the analysis and the choice of the main method: what every figure, table and
report names, and the one quantization method they show (`main_method`, decided once here
so that figures and tables cannot disagree).

    labels.method_label("int", 64, 0.0, False, "gptq")   # 'int B64 gptq'
    main = labels.main_method(cells)                       # MainMethod('nf B64', 'nf', 64.0)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

BASELINE_BITS = 16
BASELINE_METHOD = "16-bit"
RTN = "rtn"
# The main method's data type: the first present (the study's recommended types first).
MAIN_DTYPES = ("float", "quantile", "nf", "int", "dynamic", "int_centered")


def blocksize_label(b: Any) -> str:
  if b is None or (isinstance(b, float) and math.isnan(b)):
    return "-"
  return {0: "tensor", -1: "channel"}.get(int(b), str(int(b)))


def blocksize_order(b: Any) -> float:
  """Blocks from small to large, then per channel, then per tensor."""
  return {0: 1e9, -1: 1e8}.get(int(b), float(b))


def method_label(
  dtype: str, blocksize: Any, outlier_share: float, double_quant: bool, quant_method: str = RTN
) -> str:
  """e.g. 'int B64', 'nf+dq B64', 'float Btensor p0.02', 'int B64 gptq' (rtn unnamed)."""
  label = f"{dtype}{'+dq' if double_quant else ''} B{blocksize_label(blocksize)}"
  label += f" p{outlier_share:g}" if outlier_share else ""
  return label + (f" {quant_method}" if quant_method != RTN else "")


def quant_method_of(cells: pd.DataFrame) -> pd.Series:
  """Each cell's quantization method (rtn for frames made before the column existed)."""
  if "quant_method" in cells:
    return cells["quant_method"]
  return pd.Series(RTN, index=cells.index)


def base_label(cells: pd.DataFrame, method: str) -> str:
  """A method's label without its quantization method: what rtn / gptq / awq share."""
  rows = quant_method_of(cells)[cells["method"] == method]
  qm = rows.iloc[0] if len(rows) else RTN
  return method.removesuffix(f" {qm}") if qm != RTN else method


def quant_methods(cells: pd.DataFrame) -> list[str]:
  """The quantization methods of the quantized cells: rtn first, then by name."""
  present = set(quant_method_of(cells)[cells["k"] != BASELINE_BITS])
  return sorted(present, key=lambda m: (m != RTN, m))


def main_quant_method(cells: pd.DataFrame) -> str:
  """rtn if any quantized cell has it (the study's method), else the first present."""
  methods = quant_methods(cells)
  return methods[0] if methods else RTN


def curve_k(curve: str) -> int:
  """'k4' or 'k4 e2' -> 4."""
  return int(curve.split()[0][1:])


def by_count(values: pd.Series) -> list[Any]:
  """The distinct values, most frequent first, then by name."""
  counts = values.value_counts()
  return sorted(counts.index, key=lambda v: (-counts[v], str(v)))


@dataclasses.dataclass(frozen=True)
class MainMethod:
  """The one quantization method the figures, the extra axes' tables and the report show."""

  label: str  # the cells' `method`, e.g. "nf B64"
  dtype: str
  blocksize: float
  quant_method: str = RTN  # rtn when present (quant_methods: the others are compared)


def main_method(cells: pd.DataFrame) -> MainMethod | None:
  """The main method of `cells`, from its weights-only quantized cells without outliers:
  block size 64 if present, else the most common; then the first of MAIN_DTYPES present
  (else the first data type by name); then, of that type's methods at that block size
  (with and without double quantization), the one with the most cells. None without
  such cells. Activation-quantized cells do not count, so a store's checked cells (the
  figures, the report) and its extra axes' cells agree unless check_cells leaves out
  quantized cells of other targets or parameter counts. Of several quantization methods
  the main one is `main_quant_method`'s (rtn when present)."""
  q = cells[
    (cells["k"] != BASELINE_BITS)
    & (cells["outlier_share"] == 0)
    & (cells["act_bits"] == BASELINE_BITS)
  ]
  qm = main_quant_method(q)
  q = q[quant_method_of(q) == qm]
  blocks = q["blocksize"].dropna()
  if blocks.empty:
    return None
  blocksize = 64.0 if (blocks == 64).any() else float(blocks.mode().iloc[0])
  q = q[q["blocksize"] == blocksize]
  dtypes = set(q["dtype"])
  dtype = next((d for d in MAIN_DTYPES if d in dtypes), min(dtypes))
  return MainMethod(by_count(q.loc[q["dtype"] == dtype, "method"])[0], dtype, blocksize, qm)


def tokens_label(t: float) -> str:
  if not np.isfinite(t):
    return "D=?"
  for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if t >= scale:
      return f"D={t / scale:.3g}{unit}"
  return f"D={t:g}"


def family_order(label: str) -> tuple[float, str]:
  """Sort key of a training-family label: 'D=328k' < 'D=1.31M', 'D/N=16' < 'D/N=130'
  (by value, not as text); other labels after them, by name."""
  scales = {"k": 1e3, "M": 1e6, "B": 1e9}
  for prefix in ("D/N=", "D="):
    if label.startswith(prefix):
      value = label[len(prefix) :]
      try:
        return float(value[:-1]) * scales[value[-1]] if value[-1] in scales else float(value), ""
      except ValueError:
        break
  return float("inf"), label

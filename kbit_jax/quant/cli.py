"""Text for the `kbit codebook` and `kbit bits` commands (flags live in `main.py`).

  kbit codebook --dtype nf --bits 4 [--exponent_bits 0] [--json]
  kbit bits [--method awq] [--presets s4,70m]   # total-bits table, k = 3, 4, 8

kbit_jax/commands/codebook.py and bits.py print them.
"""

from __future__ import annotations

import json
from typing import Iterable

from kbit_jax.quant import bits as bits_lib
from kbit_jax.quant import codebooks


def codebook_text(dtype: str, bits: int, exponent_bits: int = 0, as_json: bool = False) -> str:
  """The normalised codes of a data type, one per line under a title (or a JSON list)."""
  values = [float(v) for v in codebooks.codebook(dtype, bits, exponent_bits)]
  if as_json:
    return json.dumps(values)
  e = exponent_bits or codebooks.study_exponent_bits(bits)
  title = f"# {dtype}, k={bits}" + (f", e={e}" if dtype == "float" else "")
  return "\n".join([f"{title}: {len(values)} codes"] + [f"{v:+.8f}" for v in values])


def bits_table_text(
  presets: Iterable[str] | None = None,
  bits: Iterable[int] = (3, 4, 8),
  blocksize: int = 64,
  dtype: str = "int",
  method: str = "rtn",
) -> str:
  """Total model bits per preset at 16 and k bits (targets attn,mlp); `method` awq adds
  its unfolded scales (rtn and gptq store the same codes and constants: one table)."""
  table = bits_lib.bits_table(presets, bits, blocksize, dtype, method=method)
  title = (
    f"# total model bits, dtype={dtype}, B={blocksize}, targets attn,mlp; "
    f"quantized tensors cost k + 16/B bits per parameter, the rest 16"
  )
  if method == "awq":
    title += (
      "; awq: + 16 bits per input channel of each scale that does not fold into "
      "the layer before (included in total bits, listed as awq scales)"
    )
  return title + "\n" + bits_lib.format_bits_table(table)

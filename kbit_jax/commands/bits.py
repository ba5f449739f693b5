"""Prints total model bits and bits per parameter of every preset at 16 bits and at
k = 3, 4, 8 (int, B = 64, targets attn,mlp: k + 16/B per quantized parameter).

    kbit bits                              # rtn and gptq (same storage)
    kbit bits --method awq                 # + AWQ's scales that do not fold
    kbit bits --presets s4,70m --method awq
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FlagValues()
METHOD = flags.DEFINE_enum(
  "method",
  "rtn",
  ["rtn", "gptq", "awq"],
  "quantization method: rtn and gptq store the same codes and constants; awq adds its "
  "unfolded scales (16 bits per input channel)",
  flag_values=FLAGS,
)
PRESETS = flags.DEFINE_list(
  "presets", [], "presets to list (default: all of kbit_jax/model/presets.py)", flag_values=FLAGS
)
ERRORS = ((ValueError, "invalid flag"),)


def main() -> None:
  from kbit_jax.quant import cli

  print(cli.bits_table_text(PRESETS.value or None, method=METHOD.value))

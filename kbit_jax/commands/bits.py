"""Prints total model bits and bits per parameter of every preset at 16 bits and at
k = 3, 4, 8 (int, B = 64, targets attn,mlp: k + 16/B per quantized parameter).

    kbit bits
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FlagValues()


def main() -> None:
  from kbit_jax.quant import cli

  print(cli.bits_table_text())

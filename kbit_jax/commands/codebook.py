"""Prints a data type's normalised code values (kbit_jax/quant/codebooks.py).

kbit codebook --dtype nf --bits 4 [--json]
kbit codebook --dtype float --bits 4 --exponent_bits 2
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FlagValues()
DTYPE = flags.DEFINE_string(
  "dtype", "nf", "data type: int, int_centered, float, dynamic, nf", flag_values=FLAGS
)
BITS = flags.DEFINE_integer("bits", 4, "bits k (2..8)", flag_values=FLAGS)
EXPONENT_BITS = flags.DEFINE_integer(
  "exponent_bits", 0, "float exponent bits (0 = the study's default for k)", flag_values=FLAGS
)
JSON = flags.DEFINE_bool("json", False, "print a JSON list", flag_values=FLAGS)
ERRORS = ((ValueError, "invalid flag"),)


def main() -> None:
  from kbit_jax.quant import cli

  print(cli.codebook_text(DTYPE.value, BITS.value, EXPONENT_BITS.value, JSON.value))

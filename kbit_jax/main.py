"""The `kbit` command: parse flags, call one function.

    kbit train --config configs/lm.py:size=s2 --workdir /tmp/kbit/s2
    kbit codebook --dtype nf --bits 4 [--json]
    kbit bits                       # total-bits table of the presets at k = 3, 4, 8, B = 64
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "codebook", "bits")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. "
                                          "configs/lm.py:size=s2", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and results go here.")
_DTYPE = flags.DEFINE_string("dtype", "nf", "codebook: data type.")
_BITS = flags.DEFINE_integer("bits", 4, "codebook: bits k.")
_EXPONENT_BITS = flags.DEFINE_integer("exponent_bits", 0, "codebook: float exponent bits "
                                      "(0 = the study's default).")
_JSON = flags.DEFINE_bool("json", False, "codebook: print a JSON list.")


def _need(flag, name: str, command: str):
  if flag.value is None:
    raise app.UsageError(f"`kbit {command}` needs --{name}")
  return flag.value


def _validated(check, *args):
  """Bad input ends the program with one clear line, before anything is compiled."""
  try:
    check(*args)
  except ValueError as e:
    sys.exit(f"kbit: invalid config: {e}")


def main(argv):
  if not flags.FLAGS["verbosity"].present:   # Orbax logs every file it writes at INFO
    logging.set_verbosity(logging.WARNING)
  command = argv[1] if len(argv) > 1 else "train"
  if command not in COMMANDS or len(argv) > 2:
    raise app.UsageError(f"unknown command {' '.join(argv[1:])!r}; allowed: {COMMANDS}")
  if command == "train":
    from kbit_jax import config_lib, train  # pylint: disable=g-import-not-at-top
    config, workdir = _need(_CONFIG, "config", command), _need(_WORKDIR, "workdir", command)
    _validated(config_lib.validate, config)
    train.train_and_evaluate(config, workdir)
  elif command == "codebook":
    from kbit_jax.quant import cli  # pylint: disable=g-import-not-at-top
    cli.codebook_main(_DTYPE.value, _BITS.value, _EXPONENT_BITS.value, _JSON.value)
  elif command == "bits":
    from kbit_jax.quant import cli  # pylint: disable=g-import-not-at-top
    cli.bits_table_main()


def run():
  app.run(main)


if __name__ == "__main__":
  run()

"""Trains one language model, resuming from the checkpoints in --workdir.

kbit train --config configs/lm.py:runlocal --workdir /tmp/kbit/smoke
kbit train --config configs/lm.py:size=s4,steps=2000 --workdir /tmp/kbit/s4
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from kbit_jax.commands import host_setup
from kbit_jax.train import checkpoint

FLAGS = flags.FlagValues()
CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "config file and argument, e.g. configs/lm.py:size=s2; override any "
  "key with --config.section.key=value",
  flag_values=FLAGS,
  lock_config=True,
)
WORKDIR = flags.DEFINE_string(
  "workdir", None, "checkpoints, logs and metrics go here", flag_values=FLAGS
)
CACHE, RETAIN = host_setup.define_flags(FLAGS)
REQUIRED = ("config", "workdir")
ERRORS = (
  (checkpoint.WorkdirError, "invalid workdir"),
  (checkpoint.CheckpointWriteError, "cannot write the workdir"),
  (FloatingPointError, "training diverged"),
  (ValueError, "invalid config"),
)


def main() -> None:
  from kbit_jax.train import loop

  host_setup.prepare(CACHE, RETAIN)
  loop.train_and_evaluate(CONFIG.value, WORKDIR.value)

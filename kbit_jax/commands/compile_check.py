"""Compiles a config's real train step for a target topology's device count on fake CPU
devices and reports memory per device against the target's HBM (an estimate for TPU).

    kbit compile_check --config configs/lm.py:size=1b,dtype=bfloat16,batch=64 \\
        --topology v5e-16 --config.mesh.fsdp=16
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FlagValues()
CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "config file and argument, e.g. configs/lm.py:size=1b,dtype=bfloat16",
  flag_values=FLAGS,
  lock_config=True,
)
TOPOLOGY = flags.DEFINE_string(
  "topology", "v5e-16", "target, e.g. v5e-16, v5p-32, h100-8", flag_values=FLAGS
)
NUM_DEVICES = flags.DEFINE_integer(
  "num_devices", 0, "a device count instead of --topology", flag_values=FLAGS
)
REQUIRED = ("config",)
ERRORS = ((ValueError, "invalid config"),)


def main() -> None:
  from kbit_jax.train import compile_check

  compile_check.main(CONFIG.value, TOPOLOGY.value, NUM_DEVICES.value)

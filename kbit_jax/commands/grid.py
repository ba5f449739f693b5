"""Plans a grid (every cell validated first), trains each size once, then quantizes and
evaluates every cell and writes one record per cell; rerunning resumes.

    kbit grid --config configs/grid.py --workdir workdirs/local/grid
    kbit grid --config configs/grid.py:runlocal --workdir /tmp/kbit/smoke
    kbit grid --config configs/grid_pretrained.py:families=gpt2,runlocal --workdir W --dry_run
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
  "grid config file and argument, e.g. configs/grid.py:runlocal; override "
  "any key with --config.section.key=value",
  flag_values=FLAGS,
  lock_config=True,
)
WORKDIR = flags.DEFINE_string(
  "workdir", None, "models/, results/ (one JSON per cell) go here", flag_values=FLAGS
)
DRY_RUN = flags.DEFINE_bool(
  "dry_run", False, "print the plan, its time and TPU cost; run nothing", flag_values=FLAGS
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
  from kbit_jax.grid import driver

  host_setup.prepare(CACHE, RETAIN)
  driver.plan_and_run(CONFIG.value, WORKDIR.value, DRY_RUN.value)

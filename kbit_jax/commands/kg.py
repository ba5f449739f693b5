"""Plans a knowledge-graph grid (every cell validated first), trains each model once,
then quantizes and evaluates every cell and writes one record per cell; rerunning resumes.

    kbit kg --config configs/kg.py --workdir workdirs/kg [--dry_run]
    kbit kg --config configs/kg.py:runlocal --workdir /tmp/kbit/kg
    kbit kg --config experiments/kg_embeddings/config.py --workdir workdirs/kg_embeddings

`kbit report --results W/results --out W/report` then fits and draws the store.
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
  "kg grid config file and argument, e.g. configs/kg.py:runlocal; override any key with "
  "--config.section.key=value",
  flag_values=FLAGS,
  lock_config=True,
)
WORKDIR = flags.DEFINE_string(
  "workdir", None, "models/, results/ (one JSON per cell) go here", flag_values=FLAGS
)
DRY_RUN = flags.DEFINE_bool(
  "dry_run", False, "print the plan and its estimated time; run nothing", flag_values=FLAGS
)
CACHE, RETAIN = host_setup.define_flags(FLAGS)
REQUIRED = ("config", "workdir")
ERRORS = (
  (checkpoint.WorkdirError, "invalid workdir"),
  (FileNotFoundError, "invalid config"),
  (ValueError, "invalid config"),
)


def main() -> None:
  from kbit_jax.kg import grid

  host_setup.prepare(CACHE, RETAIN)
  grid.plan_and_run(CONFIG.value, WORKDIR.value, DRY_RUN.value)

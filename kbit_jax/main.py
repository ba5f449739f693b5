"""The `kbit` command: parse flags, call one function.

kbit train --config configs/lm.py:size=s2 --workdir /tmp/kbit/s2
kbit grid --config configs/grid.py --workdir /tmp/kbit/grid [--dry_run]
kbit fit --results /tmp/kbit/grid/results --out /tmp/kbit/report
kbit report --results /tmp/kbit/grid/results --out /tmp/kbit/report
kbit import --hf_dir ~/models/pythia-70m --workdir /tmp/kbit/pythia-70m
kbit compile_check --config configs/lm.py:size=1b,dtype=bfloat16 --topology v5e-16
kbit codebook --dtype nf --bits 4 [--json]
kbit bits                       # total-bits table of the presets at k = 3, 4, 8, B = 64
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "grid", "fit", "report", "import", "compile_check", "codebook", "bits")

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/lm.py:size=s2", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and results go here.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "grid: print the plan and its cost, run nothing.")
_RESULTS = flags.DEFINE_string("results", None, "fit/report: the grid's results directory.")
_OUT = flags.DEFINE_string("out", None, "fit/report: where tables, figures and the report go.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 200, "fit/report: bootstrap replicates.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "import: a local Hugging Face model directory.")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e-16", "compile_check: target, e.g. v5e-16.")
_NUM_DEVICES = flags.DEFINE_integer(
  "num_devices", 0, "compile_check: device count instead of --topology."
)
_DTYPE = flags.DEFINE_string("dtype", "nf", "codebook: data type.")
_BITS = flags.DEFINE_integer("bits", 4, "codebook: bits k.")
_EXPONENT_BITS = flags.DEFINE_integer(
  "exponent_bits", 0, "codebook: float exponent bits (0 = the study's default)."
)
_JSON = flags.DEFINE_bool("json", False, "codebook: print a JSON list.")
_COMPILE_CACHE = flags.DEFINE_string(
  "compile_cache",
  None,
  "train/grid: persistent XLA compilation cache, a directory or "
  "gs:// path ('' turns it off; default $JAX_COMPILATION_CACHE_DIR or "
  "~/.cache/kbit_jax/xla). Reruns and resumed grids load compiles from it.",
)
_RETAIN_HOST_MEMORY = flags.DEFINE_bool(
  "retain_host_memory",
  True,
  "train/grid without an accelerator backend installed: keep "
  "freed host memory for reuse (kbit_jax/host_memory.py), so XLA:CPU's per-step "
  "temporaries stop page-faulting; the process holds its peak host memory.",
)


def _need(flag, command: str):
  if flag.value is None:
    raise app.UsageError(f"`kbit {command}` needs --{flag.name}")
  return flag.value


def _validated(check, *args):
  """Bad input ends the program with one clear line, before anything is compiled."""
  try:
    return check(*args)
  except ValueError as e:
    sys.exit(f"kbit: invalid config: {e}")


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # Orbax logs every file it writes at INFO
    logging.set_verbosity(logging.WARNING)
  command = argv[1] if len(argv) > 1 else "train"
  if command not in COMMANDS or len(argv) > 2:
    raise app.UsageError(f"unknown command {' '.join(argv[1:])!r}; allowed: {COMMANDS}")

  if command in ("train", "grid"):
    from kbit_jax.train import compile_cache, host_memory

    # Before jax starts its backend and its threads; CPU-only installs (host_memory.py).
    if _RETAIN_HOST_MEMORY.value and not host_memory.accelerator_installed():
      host_memory.retain_freed_memory()
    compile_cache.enable(
      compile_cache.DEFAULT_DIR if _COMPILE_CACHE.value is None else _COMPILE_CACHE.value
    )
  if command == "train":
    from kbit_jax.config import checks
    from kbit_jax.train import checkpoint, loop

    config, workdir = _need(_CONFIG, command), _need(_WORKDIR, command)
    _validated(checks.validate, config)
    try:  # checks the workdir's checkpoints (checkpoint.check_workdir) before any work
      loop.train_and_evaluate(config, workdir)
    except checkpoint.WorkdirError as e:
      sys.exit(f"kbit: invalid config: {e}")
  elif command == "grid":
    from kbit_jax.grid import driver
    from kbit_jax.grid import plan as grid_plan
    from kbit_jax.train import checkpoint

    config, workdir = _need(_CONFIG, command), _need(_WORKDIR, command)
    driver.initialize_distributed(config)  # before make_plan asks jax for the devices
    plan = _validated(grid_plan.make_plan, config, not _DRY_RUN.value)  # dry run: says missing
    try:  # checks the models' checkpoints (driver.check_workdirs) before any work
      driver.run(plan, workdir, _DRY_RUN.value)
    except checkpoint.WorkdirError as e:
      sys.exit(f"kbit: invalid config: {e}")
  elif command == "fit":
    from kbit_jax.analysis import scaling

    scaling.fit_main(_need(_RESULTS, command), _need(_OUT, command), n_boot=_BOOTSTRAP.value)
  elif command == "report":
    from kbit_jax.analysis import report

    report.report_main(_need(_RESULTS, command), _need(_OUT, command), n_boot=_BOOTSTRAP.value)
  elif command == "import":
    from kbit_jax.convert import importer

    try:
      importer.import_main(_need(_HF_DIR, command), _need(_WORKDIR, command))
    except (ValueError, FileNotFoundError, FileExistsError) as e:
      sys.exit(f"kbit import: {e}")
  elif command == "compile_check":
    from kbit_jax.train import compile_check

    num_devices, hbm = _validated(compile_check.target, _TOPOLOGY.value, _NUM_DEVICES.value)
    compile_check.fake_devices(num_devices)  # before jax starts its CPU backend
    report = _validated(compile_check.compile_check, _need(_CONFIG, command), num_devices, hbm)
    print(compile_check.format_report(report))
  elif command == "codebook":
    from kbit_jax.quant import cli

    cli.codebook_main(_DTYPE.value, _BITS.value, _EXPONENT_BITS.value, _JSON.value)
  elif command == "bits":
    from kbit_jax.quant import cli

    cli.bits_table_main()


def run():
  app.run(main)


if __name__ == "__main__":
  run()

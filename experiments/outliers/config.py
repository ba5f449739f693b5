"""Outlier-dependent (proxy) quantization: does keeping the p% most variable hidden
units in 16 bits beat plain quantization, and does it beat small blocks?

    kbit grid --config experiments/outliers/config.py --workdir workdirs/outliers
    kbit report --results workdirs/outliers/results --out workdirs/outliers/report
    kbit grid --config experiments/outliers/config.py:runlocal --workdir /tmp/kbit/ol

A variant of configs/grid.py: k in {3, 4} plus the 16-bit model; data types int and
float; outlier shares 0, 1% and 2% (each costs p (16 - k) bits per parameter); block
sizes 64 (the small-block alternative) and 1024 (large blocks, where outliers should
matter most). Default: 4 sizes x (1 + 2 k x 2 types x 2 blocks x 3 shares) = 100 cells
per seed.

Arguments: seeds, tokens, runlocal (s0 only, one type, B=1024: seconds).
"""

import pathlib

from kbit_jax.config import files

grid_config = files.load_module(pathlib.Path(__file__).parents[2] / "configs" / "grid.py")


def get_config(arg=None):
  a = files.parse_arg(arg, seeds=1, tokens=1_000_000, runlocal=False)
  c = grid_config.get_config(f"runlocal={a.runlocal},seeds={a.seeds},tokens={a.tokens}")
  c.grid.bits = (3, 4, 16)
  c.grid.dtypes = ("int",) if a.runlocal else ("int", "float")
  c.grid.blocksizes = (1024,) if a.runlocal else (64, 1024)
  c.grid.outlier_shares = (0.0, 0.01, 0.02)
  return c

"""Bit-width sweep: at a fixed total-bits budget, which k gives the best model?

    kbit grid --config experiments/bitwidth_sweep/config.py --workdir workdirs/bitwidth_sweep
    kbit report --results workdirs/bitwidth_sweep/results --out workdirs/bitwidth_sweep/report
    kbit grid --config experiments/bitwidth_sweep/config.py:runlocal --workdir /tmp/kbit/bw  # smoke

A variant of configs/grid.py (same training recipe per size, same evaluation): every k
from 3 to 8 plus the 16-bit model, one data type at block size 64, no outliers.
Default: 4 sizes (s1..s4) x (1 + 6 k) = 28 cells per seed; seeds=3 gives the fits three
replicate checkpoints per size.

Arguments: dtype (float | int | nf | quantile | dynamic; float uses the study's exponent
bits), blocksize, seeds, tokens (training tokens per size), runlocal (s0 only, k in
{3, 4, 16}: seconds).
"""

import pathlib

from kbit_jax.config import files

grid_config = files.load_module(pathlib.Path(__file__).parents[2] / "configs" / "grid.py")


def get_config(arg=None):
  a = files.parse_arg(arg, dtype="float", blocksize=64, seeds=1, tokens=1_000_000, runlocal=False)
  c = grid_config.get_config(f"runlocal={a.runlocal},seeds={a.seeds},tokens={a.tokens}")
  c.grid.bits = (3, 4, 16) if a.runlocal else (3, 4, 5, 6, 7, 8, 16)
  c.grid.dtypes = (a.dtype,)
  c.grid.blocksizes = (a.blocksize,)
  c.grid.outlier_shares = (0.0,)
  return c

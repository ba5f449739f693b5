"""Block size and data type at 3 and 4 bits: which quantization recipe is best per bit?

    kbit grid --config experiments/blocksize_dtype/config.py --workdir workdirs/blocksize_dtype
    kbit report --results workdirs/blocksize_dtype/results --out workdirs/blocksize_dtype/report
    kbit grid --config experiments/blocksize_dtype/config.py:runlocal --workdir /tmp/kbit/bd

A variant of configs/grid.py: k in {3, 4} plus the 16-bit model; data types int, float,
quantile, nf and dynamic; block sizes 32, 64, 128, 256, 1024 and per tensor (0); no
outliers. The block constants cost 16/B bits per parameter, so each cell sits at its
own total bits. Default: 4 sizes x (1 + 2 k x 5 types x 6 blocks) = 244 cells per seed.

Arguments: seeds, tokens, runlocal (s0 only, int/nf at B in {64, 0}: seconds).
"""

import pathlib

from kbit_jax.config import files

grid_config = files.load_module(pathlib.Path(__file__).parents[2] / "configs" / "grid.py")


def get_config(arg=None):
  a = files.parse_arg(arg, seeds=1, tokens=1_000_000, runlocal=False)
  c = grid_config.get_config(f"runlocal={a.runlocal},seeds={a.seeds},tokens={a.tokens}")
  c.grid.bits = (3, 4, 16)
  c.grid.dtypes = ("int", "nf") if a.runlocal else ("int", "float", "quantile", "nf", "dynamic")
  c.grid.blocksizes = (64, 0) if a.runlocal else (32, 64, 128, 256, 1024, 0)
  c.grid.outlier_shares = (0.0,)
  return c

"""k-bit probes x activation bits x training tokens: how many bits of a 2^k-way answer
does a k-bit model recover, and does PTQ hurt more the longer a model was trained?

    kbit grid --config experiments/kbit_probes/config.py --workdir workdirs/kbit_probes
    kbit report --results workdirs/kbit_probes/results --out workdirs/kbit_probes/report
    kbit grid --config experiments/kbit_probes/config.py:runlocal --workdir /tmp/kbit/kp  # smoke

A variant of configs/grid.py: sizes s1..s3, two training-token budgets per size
(separate runs, W/models/<size>-seed0-D<tokens>/), weight bits k in {3, 4, 8, 16} (float,
the study's exponent bits, block size 64), activation bits a in {8, 16} (AQT per-token
int on the inputs of the attn and mlp matmuls), built-in probes k = 1..4 (32 items
each) beside the four zero-shot tasks: 3 sizes x 2 budgets x 2 a x (1 + 3 k) = 48 cells.

Arguments: tokens (the larger budget; the smaller is a quarter of it), probe_items,
runlocal (s0 and s1, 20-step budgets, k in {4, 16}, probes 1,2: a minute).
"""

import pathlib

from kbit_jax.config import files

grid_config = files.load_module(pathlib.Path(__file__).parents[2] / "configs" / "grid.py")


def get_config(arg=None):
  a = files.parse_arg(arg, tokens=1_000_000, probe_items=32, runlocal=False)
  c = grid_config.get_config(f"runlocal={a.runlocal}")
  c.grid.sizes = ("s1", "s2", "s3")
  c.grid.bits = (3, 4, 8, 16)
  c.grid.dtypes = ("float",)
  c.grid.blocksizes = (64,)
  c.grid.outlier_shares = (0.0,)
  c.grid.act_bits = (8, 16)
  c.grid.tokens = (a.tokens // 4, a.tokens)
  c.eval.probes = "1,2,3,4"
  c.eval.probe_items = a.probe_items
  if a.runlocal:
    c.grid.sizes = ("s0", "s1")
    c.grid.bits = (4, 16)
    c.grid.tokens = (2560, 5120)
    c.eval.probes = "1,2"
    c.eval.probe_items = 4
    c.per_size.s1 = c.per_size.s0
  return c

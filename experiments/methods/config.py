"""Calibrated post-training quantization: does GPTQ (or AWQ) move the bit-optimal k?

    kbit grid --config experiments/methods/config.py --workdir W
    kbit report --results W/results --out W/report

A variant of configs/grid.py: the CPU sizes s1..s4 trained on `tokens` of the embedded
corpus each (lr and batch as configs/grid.py), k in {3, 4, 5, 8, 16}, data types int,
nf and float, B = 64, targets attn, mlp and the tied embedding (configs/grid.py says
why), every quantized cell under rtn, gptq and awq (grid.methods); the 16-bit cell once:
4 sizes x (1 + 4 k x 3 types x 3 methods) = 148 cells. GPTQ and AWQ calibrate in fast
mode on `sequences` windows of 128 tokens of the corpus' train split (the evaluation
scores the validation split and the test-split tasks), statistics once per model.

Arguments: tokens (training tokens per size), seeds, sequences (calibration), task_items
(items per zero-shot task), runlocal (s1 only, k in {3, 16}, int: seconds).
"""

import pathlib

from kbit_jax.config import files

grid_config = files.load_module(pathlib.Path(__file__).parents[2] / "configs" / "grid.py")


def get_config(arg=None):
  a = files.parse_arg(arg, tokens=500_000, seeds=1, sequences=64, task_items=25, runlocal=False)
  c = grid_config.get_config(f"tokens={a.tokens},seeds={a.seeds}")
  c.grid.bits = (3, 4, 5, 8, 16)
  c.grid.dtypes = ("int", "nf", "float")
  c.grid.blocksizes = (64,)
  c.grid.methods = ("rtn", "gptq", "awq")
  c.calibration.sequences = a.sequences
  c.eval.items_per_task = a.task_items
  if a.runlocal:
    c.grid.sizes = ("s1",)
    c.grid.bits = (3, 16)
    c.grid.dtypes = ("int",)
    c.per_size.s1.train.update(dict(steps=20, warmup_steps=5, eval_every=20))
  return c

"""Training length: does the bit-optimal k rise with tokens per parameter, and does the
quantization-induced degradation grow with D as Ouyang et al. (2024) found?

    kbit grid --config experiments/training_length/config.py --workdir workdirs/training_length
    kbit report --results workdirs/training_length/results --out workdirs/training_length/report
    kbit grid --config experiments/training_length/config.py:runlocal --workdir /tmp/kbit/tl

A variant of configs/grid.py: sizes s0, s1, s2 (3,312, 25,472 and 100,096 non-embedding
parameters), each trained once to `tokens` (default 5,242,880: 1,280 steps of 32 x 128
tokens, cosine) and evaluated at 5 checkpoints along the run (grid.checkpoints: 1/16,
1/8, 1/4, 1/2 and all of it: D = 328k .. 5.2M, D/N from 3.3 (s2 at 1/16) to 1,583 (s0 at
the end); s0 and s1 end past D/N = 200, s2 at 52); k in {3, 4, 5, 6, 8, 16}, data types
int, nf and float at block size 64: 3 x 5 x 16 = 240 cells. The evaluation is perplexity
only, on 16k validation tokens (4 batches of 32 rows): the zero-shot tasks carry no
signal at these sizes (the default grid's report marks them flat), and QiD and the
bit-optimal k are read from perplexity.

Arguments: tokens (the run's length), schedule (cosine | wsd: WSD cool-down branches
instead of intermediate checkpoints, each budget a finished run), runlocal (s0 only, 2
checkpoints, k in {4, 16}: seconds).
"""

import pathlib

import ml_collections

from kbit_jax.config import files

grid_config = files.load_module(pathlib.Path(__file__).parents[2] / "configs" / "grid.py")

SIZES = ("s0", "s1", "s2")
CHECKPOINTS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def get_config(arg=None):
  a = files.parse_arg(arg, tokens=5_242_880, schedule="cosine", runlocal=False)
  c = grid_config.get_config(f"runlocal={a.runlocal}")
  c.grid.sizes = ("s0",) if a.runlocal else SIZES
  c.grid.bits = (4, 16) if a.runlocal else (3, 4, 5, 6, 8, 16)
  c.grid.dtypes = ("int",) if a.runlocal else ("int", "nf", "float")
  c.grid.blocksizes = (64,)
  c.grid.checkpoints = (0.5, 1.0) if a.runlocal else CHECKPOINTS
  c.base.train.schedule = a.schedule
  batch, seq_len = 32, c.base.data.seq_len
  steps = 20 if a.runlocal else max(1, round(a.tokens / (batch * seq_len)))
  c.per_size = ml_collections.ConfigDict()
  for size in c.grid.sizes:
    c.per_size[size] = ml_collections.ConfigDict(
      {
        "train": dict(
          lr=3e-3,
          batch_size=8 if a.runlocal else batch,
          steps=steps,
          warmup_steps=2 if a.runlocal else 20,  # before the first checkpoint (step 80)
          eval_every=steps,
          checkpoint_every=100,
          keep_checkpoints=1,
        )
      }
    )
  c.eval.tasks = ""
  c.eval.items_per_task = 4 if a.runlocal else 25  # unused without tasks; pinned, so the
  # evaluation fingerprint (cell keys) does not follow configs/grid.py's default
  c.eval.ppl_max_batches = 1 if a.runlocal else 4
  return c

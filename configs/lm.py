"""Train one language model on the embedded corpus (or a TFDS data set).

    kbit train --config configs/lm.py --workdir /tmp/kbit/lm
    kbit train --config configs/lm.py:size=s4,steps=2000 --workdir /tmp/kbit/s4
    kbit train --config configs/lm.py:runlocal --workdir /tmp/kbit/smoke     # seconds on CPU

Arguments: size (a preset of kbit_jax/model/presets.py), steps, batch, seq_len, lr, seed,
dtype (float32 | bfloat16), runlocal (a tiny smoke run).
"""

from kbit_jax.config import defaults, files


def get_config(arg=None):
  a = files.parse_arg(
    arg,
    size="s2",
    steps=600,
    batch=32,
    seq_len=128,
    lr=3e-3,
    seed=0,
    dtype="float32",
    runlocal=False,
  )
  c = defaults.base_config()
  c.model.preset = a.size
  c.model.dtype = a.dtype
  c.train.steps = a.steps
  c.train.batch_size = a.batch
  c.train.lr = a.lr
  c.train.seed = a.seed
  c.data.seq_len = a.seq_len
  if a.runlocal:
    c.model.preset = "s0"
    c.train.steps = 20
    c.train.batch_size = 8
    c.train.warmup_steps = 5
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.checkpoint_every = 10
    c.data.seq_len = 32
  return c

"""The knowledge-graph embedding grid: models x embedding dims x training triples x seeds,
each trained once, then its entity and relation tables quantized at every (k, data type,
block size) and evaluated by filtered link prediction; one record per cell.

    kbit kg --config configs/kg.py --workdir workdirs/kg --dry_run        # plan + estimate
    kbit kg --config configs/kg.py --workdir workdirs/kg                  # the grid below
    kbit kg --config configs/kg.py:runlocal --workdir /tmp/kbit/kg        # a smoke run
    kbit report --results workdirs/kg/results --out workdirs/kg/report    # fits + figures
    kbit kg --config configs/kg.py --config.grid.models=rotate --config.train.steps=500 ...

Arguments: `runlocal` (both models at D in {8, 16}, 2 data sizes, k in {4, 16}, 20 steps:
8 trainings, 16 cells, about a minute on a 2-core CPU), `steps` (training steps).

Sections: `grid` (the axes; `models`, `dtypes` accept one comma list; num_train 0 = all
training triples, other values nested subsamples, kg/data.subsample_train), `data`
(graph_dir: a WN18RR-style directory of train/valid/test triples, '' = the shipped
WordNet graph, kbit_jax/kg/assets/WORDNET.md), `model` (TransE's norm, RotatE's gamma),
`train` (kbit_jax/kg/train.py's training section: steps, batch, negatives, lr, seed is
set per grid.seeds), `eval` (the split ranked, its batch size).

The default grid: TransE and RotatE at D in {16, 32, 64, 128} on 10,000 and all 42,054
training triples, k in {2, 3, 4, 8, 16}, int at B = 64: 16 trainings, 80 cells; about 22
minutes on a 2-core CPU at 1,000 steps by the --dry_run estimate (not run as a whole;
experiments/kg_embeddings/ runs D in {8, 16, 32, 64} and measured 11m36s).
"""

import ml_collections

from kbit_jax.config import files
from kbit_jax.kg import train


def get_config(arg=None):
  a = files.parse_arg(arg, runlocal=False, steps=1000)
  c = ml_collections.ConfigDict()
  c.grid = ml_collections.ConfigDict(
    dict(
      models=("transe", "rotate"),
      dims=(16, 32, 64, 128),
      num_train=(10_000, 0),
      seeds=(0,),
      bits=(2, 3, 4, 8, 16),
      dtypes=("int",),
      blocksizes=(64,),
      tables="entity,relation",
    )
  )
  c.data = ml_collections.ConfigDict(dict(graph_dir=""))
  defaults = train.default_config()
  c.model = ml_collections.ConfigDict(dict(norm=defaults.model.norm, gamma=defaults.model.gamma))
  c.train = defaults.train
  c.train.steps = a.steps
  c.train.checkpoint_every = a.steps
  c.train.keep_checkpoints = 1
  c.eval = ml_collections.ConfigDict(dict(split="test", batch_size=64))
  if a.runlocal:
    c.grid.dims = (8, 16)
    c.grid.num_train = (5_000, 0)
    c.grid.bits = (4, 16)
    c.train.update(dict(steps=20, log_every=10, checkpoint_every=20))
  return c

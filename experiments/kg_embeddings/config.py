"""k-bit knowledge-graph embeddings: link-prediction quality against total bits (planned).

Phase 1 (now) ships the pieces: `kbit_jax/kg/` trains one (model, dim, training triples)
and evaluates it at any quantization specs (`experiment.run_cell`, records shaped like
the results store's). Phase 2 will run this grid through the results store and the
report's fits; the command it is meant to become:

    kbit grid --config experiments/kg_embeddings/config.py --workdir workdirs/kg_embeddings

Until then one cell family runs as (see README.md for what it measured):

    python -m kbit_jax.kg.experiment --model rotate --dim 64 --num_train 0 --steps 1000 \
        --bits 16,2,3,4,8 --out workdirs/kg_embeddings/records.jsonl

The grid: 2 models x 4 dims x 2 training-set sizes = 16 trainings, each evaluated at
k in {2, 3, 4, 8, 16} (int, B = 64): 80 cells. Sized from the CPU measurements in
README.md (2 cores): see there for the time per training and per evaluation.
"""

import ml_collections

from kbit_jax.kg import train


def get_config(arg=None):
  del arg  # no variants yet
  c = ml_collections.ConfigDict()
  c.models = ("transe", "rotate")
  c.dims = (16, 32, 64, 128)
  c.num_train = (10_000, 0)  # nested subsamples of the shipped graph's train; 0 = all
  c.bits = (2, 3, 4, 8, 16)
  c.dtype = "int"
  c.blocksize = 64
  c.split = "test"
  c.train = train.default_config().train
  c.train.steps = 1000
  return c

"""k-bit knowledge-graph embeddings: link-prediction quality against total bits, sized to
run on a 2-core CPU in well under 20 minutes (README.md has the measured run: 11m36s).

    kbit kg --config experiments/kg_embeddings/config.py --workdir workdirs/kg_embeddings
    kbit report --results workdirs/kg_embeddings/results --out workdirs/kg_embeddings/report

A variant of configs/kg.py: TransE and RotatE at D in {8, 16, 32, 64} on 10,000 and all
42,054 training triples of the shipped WordNet graph, 1,000 training steps each (16
trainings), every model evaluated on the 1,090 test triples at k in {2, 3, 4, 8, 16}
(int, B = 64, entity and relation tables): 80 cells. D = 128 is left out for time (it
would add about 11 minutes by the cost model: its trainings and evaluations cost about
as much as all of D <= 64).

Arguments: steps (training steps), dims ('+'-separated, since commas separate the
arguments: dims=4+8+16+32), runlocal (D in {4, 8}, 10 steps, k in {2, 16}: the same code
path in about a minute).
"""

import pathlib

from kbit_jax.config import files

kg_config = files.load_module(pathlib.Path(__file__).parents[2] / "configs" / "kg.py")


def get_config(arg=None):
  a = files.parse_arg(arg, steps=1000, dims="8+16+32+64", runlocal=False)
  c = kg_config.get_config(f"steps={a.steps}")
  c.grid.dims = tuple(int(d) for d in a.dims.split("+"))
  if a.runlocal:
    c.grid.dims, c.grid.bits = (4, 8), (2, 16)
    c.train.update(dict(steps=10, log_every=10, checkpoint_every=10))
  return c

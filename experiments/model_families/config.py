"""GPT-style against Llama-style at equal total parameters: does the architecture change
bit-level scaling (perplexity against total model bits, per k)?

    kbit grid --config experiments/model_families/config.py:family=gpt --workdir W/gpt
    kbit grid --config experiments/model_families/config.py:family=llama --workdir W/llama
    kbit report --results W/gpt/results --out W/gpt/report      # and W/llama/...
    python experiments/model_families/compare.py W/gpt/results W/llama/results

A variant of configs/grid.py: the sizes s1..s3 (GPT-style: LayerNorm, GELU MLP, learned
positions, biases) or l1..l3 (Llama-style: RMSNorm, SwiGLU, grouped-query attention with
kv_heads = heads / 2, rotary, no biases), each l_i with s_i's layers, width, heads and
total parameters (kbit_jax/model/presets.py), trained alike (s_i's lr and batch) on the
same `tokens` of the embedded corpus; k in {3, 4, 6, 8, 16}, data types int and nf,
B = 64, targets attn, mlp and the tied embedding (configs/grid.py explains why). One
family per workdir, so that `kbit report` fits each family's curves on its own sizes:
3 sizes x (1 + 4 k x 2 types) = 27 cells per family.

Arguments: family (gpt | llama), tokens (training tokens per size), seeds, runlocal (the
smallest size of the family, 3 cells: seconds).
"""

import pathlib

from kbit_jax.config import files

grid_config = files.load_module(pathlib.Path(__file__).parents[2] / "configs" / "grid.py")

FAMILIES = {"gpt": ("s1", "s2", "s3"), "llama": ("l1", "l2", "l3")}


def get_config(arg=None):
  a = files.parse_arg(arg, family="gpt", tokens=500_000, seeds=1, runlocal=False)
  if a.family not in FAMILIES:
    raise ValueError(f"family={a.family!r} is unknown; allowed: {sorted(FAMILIES)}")
  c = grid_config.get_config(f"tokens={a.tokens},seeds={a.seeds}")
  sizes = FAMILIES[a.family]
  for gpt, size in zip(FAMILIES["gpt"], sizes):
    c.per_size[size] = c.per_size[gpt]  # l_i trains with s_i's lr, batch and steps
  for size in list(c.per_size):
    if size not in sizes:
      del c.per_size[size]
  c.grid.sizes = sizes
  c.grid.bits = (3, 4, 6, 8, 16)
  c.grid.dtypes = ("int", "nf")
  c.grid.blocksizes = (64,)
  if a.runlocal:
    c.grid.sizes = sizes[:1]
    c.grid.bits = (4, 16)
    c.grid.dtypes = ("nf",)
    c.per_size[sizes[0]].train.update(dict(steps=20, warmup_steps=5, eval_every=20))
  return c

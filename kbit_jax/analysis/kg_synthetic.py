"""Synthetic knowledge-graph stores from a known law, for tests and demos of the KG fits.

    records = kg_records(law=lambda n, d, k, bits: ..., dims=(8, 16, 32, 64))
    synthetic.write_store(results_dir, records)        # then `kbit report` reads them

Each record has the shape kbit_jax/kg/experiment.py writes (key with task = TASK, model,
bits and metrics groups, metrics/unleaked), so a synthetic store exercises the same
adapter (kg_cells.py) as a real one. A cell's metric is law(N, D, k, total bits) (N =
dim x entities, D = training triples) + normal noise of sd `noise`, clipped to [0, 1],
reported with standard error `stderr`; the unleaked MRR follows `unleaked_law`
(default: a flat 0.02, a metric that does not move). Hits@10 is min(1, 1.3 MRR).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from kbit_jax.analysis.kg_cells import TASK

Law = Callable[[float, float, int, float], float]
BLOCKSIZE = 64


def kg_bits(params: int, k: int, blocksize: int = BLOCKSIZE) -> int:
  """k + 16/B bits per value (B | params) at k < 16, else 16 (quant/bits.py's rule)."""
  return 16 * params if k >= 16 else params * k + 16 * (-(-params // blocksize))


def _metrics(mrr: float, stderr: float, triples: int) -> dict[str, float]:
  hits = min(1.0, 1.3 * mrr)
  return {
    "mrr": mrr,
    "mrr_stderr": stderr,
    "hits@10": hits,
    "hits@10_stderr": stderr,
    "num_triples": triples,
  }


def kg_records(
  law: Law,
  models: Sequence[str] = ("rotate",),
  dims: Sequence[int] = (8, 16, 32, 64, 128),
  triples: Sequence[int] = (10_000, 40_000),
  bits: Sequence[int] = (2, 3, 4, 8, 16),
  seeds: Sequence[int] = (0,),
  num_entities: int = 20_000,
  num_relations: int = 11,
  noise: float = 0.0,
  stderr: float = 0.01,
  unleaked_law: Law | None = None,
  unleaked_noise: float = 0.001,
  unleaked_stderr: float = 0.004,
  seed: int = 0,
  graph: str = "synthetic-kg",
  eval_id: str = "test-filtered-realistic-v1",
) -> list[dict[str, Any]]:
  """One record per model x dim x training triples x seed x k (int, B = 64 below 16)."""
  rng = np.random.default_rng(seed)
  unleaked_law = unleaked_law or (lambda n, d, k, b: 0.02)
  records = []
  for model in models:
    for dim in dims:
      for d in triples:
        for s in seeds:
          for k in bits:
            q = k < 16
            n = num_entities * dim
            rel = num_relations * (dim // 2 if model == "rotate" else dim)
            params = n + rel
            tb = kg_bits(n, k) + kg_bits(rel, k)
            mrr = float(np.clip(law(n, d, k, tb) + rng.normal(0, noise), 0, 1))
            unleaked = float(
              np.clip(unleaked_law(n, d, k, tb) + rng.normal(0, unleaked_noise), 0, 1)
            )
            metrics = _metrics(mrr, stderr, 1000)
            metrics["unleaked"] = _metrics(unleaked, unleaked_stderr, 400)
            key = dict(
              task=TASK,
              graph=graph,
              model=model,
              dim=dim,
              norm=1 if model == "transe" else None,
              gamma=6.0 if model == "rotate" else None,
              train_triples=d,
              train_steps=1000,
              seed=s,
              bits=k,
              dtype="int" if q else "none",
              exponent_bits=0,
              blocksize=BLOCKSIZE if q else None,
              double_quant=False,
              targets="entity,relation" if q else "none",
              eval_id=eval_id,
            )
            quant = f"k{k} int B{BLOCKSIZE}" if q else "k16"
            records.append(
              dict(
                key=key,
                name=f"{model} d{dim} n{d} {quant}",
                git_commit="synthetic",
                created="2026-01-01T00:00:00+00:00",
                model=dict(
                  params=params,
                  entity_params=n,
                  relation_params=rel,
                  num_entities=num_entities,
                  num_relations=num_relations,
                  train_batch_size=512,
                  train_negatives=64,
                  train_lr=1e-2,
                  train_loss=0.1,
                ),
                bits=dict(total_bits=tb, bits_per_param=tb / params),
                metrics=metrics,
                time=dict(train_s=1.0, quantize_s=0.0, eval_s=1.0),
              )
            )
  return records

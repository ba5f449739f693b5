"""Filtered link-prediction ranks, MRR and Hits@k, computed on device in batches.

The standard protocol (Bordes et al. 2013, "filt."): each evaluation triple (h, r, t) is
two queries, (h, r, ?) and (?, r, t). A query's candidates are all entities, scored by
the model; every other entity that completes a known true triple (train, valid or test)
is removed first, the triple itself is kept. rank = 1 + #candidates scoring higher +
#candidates tied / 2: the expected rank under random tie breaking (PyKEEN's "realistic"
rank). Ties matter for quantized tables: an optimistic rank would give a model whose
scores all collapse to one value rank 1 everywhere; this gives it (E + 1) / 2. A NaN
target score ranks last.

`Evaluator` holds one split's queries and filters on device, padded to whole batches with
fixed shapes, and one jitted function of the params: every quantized variant of a model
(same shapes) is ranked by the same compiled program.

Standard errors are over triples (n): the mean of a triple's head and tail values, its
sample standard deviation / sqrt(n), since the two queries of one triple are correlated.

Shape suffixes: B batch, F filtered entities per query (padded), Q queries, E entities.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

HITS_AT = (1, 3, 10)


def filter_lists(all_true_Nx3: np.ndarray, queries_Qx3: np.ndarray, side: str) -> list[np.ndarray]:
  """Per query, the entities to remove: the other true answers of its (h, r, ?) query
  (side 'tail') or (?, r, t) query (side 'head'), the query's own answer excluded."""
  if side not in ("head", "tail"):
    raise ValueError(f"side={side!r} is unknown; allowed: ['head', 'tail']")
  answer, context = (2, (0, 1)) if side == "tail" else (0, (1, 2))
  known = collections.defaultdict(set)
  for triple in all_true_Nx3.tolist():
    known[(triple[context[0]], triple[context[1]])].add(triple[answer])
  return [
    np.asarray(sorted(known[(q[context[0]], q[context[1]])] - {q[answer]}), np.int32)
    for q in queries_Qx3.tolist()
  ]


def _padded(lists: list[np.ndarray], width: int, fill: int) -> np.ndarray:
  out = np.full((len(lists), width), fill, np.int32)
  for i, x in enumerate(lists):
    out[i, : len(x)] = x
  return out


def _rank(scores_BxE: jax.Array, answer_B: jax.Array, filter_BxF: jax.Array) -> jax.Array:
  """Realistic filtered ranks (float32); filter entries equal to E are padding."""
  rows_B = jnp.arange(scores_BxE.shape[0])
  target_B = scores_BxE[rows_B, answer_B]
  scores_BxE = scores_BxE.at[rows_B[:, None], filter_BxF].set(-jnp.inf, mode="drop")
  higher_B = jnp.sum(scores_BxE > target_B[:, None], axis=-1)
  tied_B = jnp.sum(scores_BxE == target_B[:, None], axis=-1) - 1  # the answer itself
  rank_B = 1.0 + higher_B + tied_B / 2.0
  return jnp.where(jnp.isnan(target_B), float(scores_BxE.shape[1]), rank_B)


def rank_batch(
  params: Any, batch: dict[str, jax.Array], *, model: nn.Module
) -> tuple[jax.Array, jax.Array]:
  """(tail ranks, head ranks) of a batch of triples, each (B,)."""
  h_B, r_B, t_B = batch["triples_Bx3"][:, 0], batch["triples_Bx3"][:, 1], batch["triples_Bx3"][:, 2]
  variables = {"params": params}
  tail_BxE = model.apply(variables, h_B, r_B, method=type(model).tail_scores)
  head_BxE = model.apply(variables, r_B, t_B, method=type(model).head_scores)
  return (
    _rank(tail_BxE, t_B, batch["tail_filter_BxF"]),
    _rank(head_BxE, h_B, batch["head_filter_BxF"]),
  )


def metrics_from_ranks(tail_Q: np.ndarray, head_Q: np.ndarray) -> dict[str, float]:
  """MRR, Hits@k (both sides pooled), their standard errors over triples, and per side."""
  tail_Q, head_Q = np.asarray(tail_Q, np.float64), np.asarray(head_Q, np.float64)
  n = len(tail_Q)
  values = {"mrr": (1 / tail_Q, 1 / head_Q)}
  values.update(
    {
      f"hits@{k}": ((tail_Q <= k).astype(np.float64), (head_Q <= k).astype(np.float64))
      for k in HITS_AT
    }
  )
  out = {}
  for name, (tail, head) in values.items():
    per_triple = (tail + head) / 2
    out[name] = float(per_triple.mean())
    out[f"{name}_stderr"] = float(per_triple.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    out[f"{name}_tail"], out[f"{name}_head"] = float(tail.mean()), float(head.mean())
  out["mean_rank"] = float(np.concatenate([tail_Q, head_Q]).mean())
  out["num_triples"] = n
  return out


class Evaluator:
  """Filtered metrics of `queries_Qx3` under `model`, for any params of its shapes."""

  def __init__(
    self, model: nn.Module, queries_Qx3: np.ndarray, all_true_Nx3: np.ndarray, batch_size: int = 64
  ):
    if len(queries_Qx3) == 0:
      raise ValueError("no queries to evaluate (the split is empty)")
    self.model, self.num_queries = model, len(queries_Qx3)
    num_entities = model.num_entities
    pad = -len(queries_Qx3) % batch_size  # padding rows repeat query 0, cut after ranking
    queries = np.concatenate([queries_Qx3, np.repeat(queries_Qx3[:1], pad, axis=0)])
    tail = filter_lists(all_true_Nx3, queries, "tail")
    head = filter_lists(all_true_Nx3, queries, "head")
    width = max(1, max(map(len, tail + head)))  # one F for all batches: one compile
    arrays = dict(
      triples_Bx3=queries.astype(np.int32),
      tail_filter_BxF=_padded(tail, width, num_entities),
      head_filter_BxF=_padded(head, width, num_entities),
    )
    num_batches = len(queries) // batch_size
    self.batches = [
      jax.device_put({k: v[i * batch_size : (i + 1) * batch_size] for k, v in arrays.items()})
      for i in range(num_batches)
    ]
    self.rank_fn = jax.jit(functools.partial(rank_batch, model=model))

  def ranks(self, params: Any) -> tuple[np.ndarray, np.ndarray]:
    """(tail ranks, head ranks) of every query, in query order."""
    out = [self.rank_fn(params, batch) for batch in self.batches]  # dispatched async
    tail, head = (np.concatenate(x)[: self.num_queries] for x in zip(*jax.device_get(out)))
    return tail, head

  def evaluate(self, params: Any) -> dict[str, float]:
    return metrics_from_ranks(*self.ranks(params))

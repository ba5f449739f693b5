"""TransE and RotatE in Flax linen: scores of triples, and of every entity at once.

Both models hold two tables, `entity` (E, D) and `relation`, named with logical axes
(`entity`, `relation`, `embed`) so that `nn.logical_axis_rules(RULES)` shards a large
graph's entity table over a mesh. `dim` is D, the real values per entity in both models,
so one `dim` costs the same entity table in either.

- TransE (Bordes et al. 2013): score(h, r, t) = -||h + r - t||_p, p = `norm` (1 or 2).
  Tables start uniform in +-6/sqrt(D); relation rows are then scaled to unit L2 norm and
  entity rows are kept at unit L2 norm throughout (`project`, applied after each update),
  as in the paper: without it the margin loss is lowered by growing the norms.
- RotatE (Sun et al. 2019): entities are D/2 complex numbers (real parts then imaginary
  parts along the row, as in the authors' code), relations D/2 phases, r_i = exp(i phase):
  score = gamma - sum_i |h_i r_i - t_i|. The stored relation parameter is scaled to a
  phase by pi / embedding_range, embedding_range = (gamma + 2) / (D/2), and both tables
  start uniform in +-embedding_range (the authors' code), so phases start in [-pi, pi].
  |r_i| = 1 holds by construction, whatever the stored value.

Shape suffixes: B batch, N negatives, E entities, R relations, D `dim`, K = D/2.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

MODELS = ("transe", "rotate")
NORMS = (1, 2)
ROTATE_EPSILON = 2.0  # embedding_range = (gamma + epsilon) / K, as in the authors' code
# Logical axis -> mesh axis (sharding.MESH_AXES): entity rows over fsdp, the batch of
# triples over data x fsdp; the small relation table and the embedding axis replicated.
RULES = (("entity", "fsdp"), ("relation", None), ("embed", None), ("batch", ("data", "fsdp")))


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _unit_rows(init):
  def unit(key, shape, dtype=jnp.float32):
    x = init(key, shape, dtype)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

  return unit


class TransE(nn.Module):
  num_entities: int
  num_relations: int
  dim: int
  norm: int = 1

  def setup(self):
    init = _uniform(6 / math.sqrt(self.dim))
    self.entity = self.param(
      "entity",
      nn.with_logical_partitioning(_unit_rows(init), ("entity", "embed")),
      (self.num_entities, self.dim),
    )
    self.relation = self.param(
      "relation",
      nn.with_logical_partitioning(_unit_rows(init), ("relation", "embed")),
      (self.num_relations, self.dim),
    )

  def _distance(self, diff_xD: jax.Array) -> jax.Array:
    if self.norm == 1:
      return jnp.sum(jnp.abs(diff_xD), axis=-1)
    return jnp.sqrt(jnp.sum(jnp.square(diff_xD), axis=-1))

  def __call__(self, h: jax.Array, r: jax.Array, t: jax.Array) -> jax.Array:
    """Scores of triples given as broadcastable int arrays (e.g. B x 1 against B x N)."""
    return -self._distance(self.entity[h] + self.relation[r] - self.entity[t])

  def tail_scores(self, h_B: jax.Array, r_B: jax.Array) -> jax.Array:
    """scores_BxE: (h, r, e) for every entity e."""
    q_BxD = self.entity[h_B] + self.relation[r_B]
    return -self._distance(q_BxD[:, None, :] - self.entity[None, :, :])

  def head_scores(self, r_B: jax.Array, t_B: jax.Array) -> jax.Array:
    """scores_BxE: (e, r, t) for every entity e."""
    q_BxD = self.relation[r_B] - self.entity[t_B]
    return -self._distance(self.entity[None, :, :] + q_BxD[:, None, :])


def project(name: str, params: Any) -> Any:
  """The models' constraint after an update: TransE's entity rows back to unit L2 norm."""
  if name != "transe":
    return params
  ent_ExD = params["entity"]
  return {**params, "entity": ent_ExD / jnp.linalg.norm(ent_ExD, axis=-1, keepdims=True)}


class RotatE(nn.Module):
  num_entities: int
  num_relations: int
  dim: int
  gamma: float = 6.0

  @property
  def embedding_range(self) -> float:
    return (self.gamma + ROTATE_EPSILON) / (self.dim // 2)

  def setup(self):
    init = _uniform(self.embedding_range)
    self.entity = self.param(
      "entity",
      nn.with_logical_partitioning(init, ("entity", "embed")),
      (self.num_entities, self.dim),
    )
    self.relation = self.param(
      "relation",
      nn.with_logical_partitioning(init, ("relation", "embed")),
      (self.num_relations, self.dim // 2),
    )

  def rotation(self, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cos, sin) of relation r's phases: the unit complex numbers r_i, ...xK each."""
    phase = self.relation[r] * (math.pi / self.embedding_range)
    return jnp.cos(phase), jnp.sin(phase)

  def _parts(self, e: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(real, imaginary) parts of entities `e`, or of the whole table (E x K each)."""
    x = self.entity if e is None else self.entity[e]
    return x[..., : self.dim // 2], x[..., self.dim // 2 :]

  def _score(self, re_xK: jax.Array, im_xK: jax.Array) -> jax.Array:
    return self.gamma - jnp.sum(jnp.sqrt(jnp.square(re_xK) + jnp.square(im_xK)), axis=-1)

  def __call__(self, h: jax.Array, r: jax.Array, t: jax.Array) -> jax.Array:
    """Scores of triples given as broadcastable int arrays (e.g. B x 1 against B x N)."""
    (re_h, im_h), (re_t, im_t), (cos, sin) = self._parts(h), self._parts(t), self.rotation(r)
    return self._score(re_h * cos - im_h * sin - re_t, re_h * sin + im_h * cos - im_t)

  def tail_scores(self, h_B: jax.Array, r_B: jax.Array) -> jax.Array:
    """scores_BxE: (h, r, e) for every entity e; h o r once, then against every e."""
    (re_h, im_h), (cos, sin) = self._parts(h_B), self.rotation(r_B)
    re_q, im_q = re_h * cos - im_h * sin, re_h * sin + im_h * cos
    re_e, im_e = self._parts()
    return self._score(re_q[:, None] - re_e[None], im_q[:, None] - im_e[None])

  def head_scores(self, r_B: jax.Array, t_B: jax.Array) -> jax.Array:
    """scores_BxE: (e, r, t) for every entity e, as |e - t o conj(r)| (= |e o r - t| since
    |r_i| = 1), so the rotation is applied once per query rather than once per entity."""
    (re_t, im_t), (cos, sin) = self._parts(t_B), self.rotation(r_B)
    re_q, im_q = re_t * cos + im_t * sin, im_t * cos - re_t * sin
    re_e, im_e = self._parts()
    return self._score(re_e[None] - re_q[:, None], im_e[None] - im_q[:, None])


def check_model(name: str, dim: int, norm: int = 1, gamma: float = 6.0) -> None:
  """Raises ValueError naming the key and the allowed values; nothing is traced."""
  if name not in MODELS:
    raise ValueError(f"model.name={name!r} is unknown; allowed: {list(MODELS)}")
  if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
    raise ValueError(f"model.dim={dim!r} is not allowed; allowed: a positive int")
  if name == "rotate" and dim % 2:
    raise ValueError(
      f"model.dim={dim} is odd; RotatE needs an even dim (dim/2 complex "
      "numbers per entity, real then imaginary parts)"
    )
  if name == "transe" and norm not in NORMS:
    raise ValueError(f"model.norm={norm!r} is not allowed; allowed: {list(NORMS)}")
  if name == "rotate" and not gamma > 0:
    raise ValueError(f"model.gamma={gamma!r} is not allowed; allowed: a margin > 0")


def make_model(
  name: str, num_entities: int, num_relations: int, dim: int, *, norm: int = 1, gamma: float = 6.0
) -> nn.Module:
  """The model `name` (see MODELS), after `check_model`."""
  check_model(name, dim, norm, gamma)
  if name == "transe":
    return TransE(num_entities, num_relations, dim, norm)
  return RotatE(num_entities, num_relations, dim, gamma)

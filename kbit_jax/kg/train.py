"""Train TransE or RotatE with negative sampling: config, jitted step, checkpointed loop.

    config -> validate -> subsample -> sharded state -> (resume) -> loop:
      positives of step s -> jitted step (negatives drawn on device) -> loss one step late
      -> checkpoint

Losses: TransE the margin ranking loss of Bordes et al. 2013, mean over positives and
their negatives of max(0, margin - score(pos) + score(neg)); RotatE Sun et al.'s
self-adversarial loss, (-log sigmoid(score(pos)) - sum_n w_n log sigmoid(-score(neg_n))) / 2
with w = softmax(temperature * score(neg)) held constant (no gradient), uniform weights
over positives (their `--uni_weight`). Each positive gets `negatives` corruptions, all of
its head or all of its tail (a fair coin per positive), entities uniform over the graph
and not filtered: a corruption is a true triple with probability about degree / E.
Adam at a constant rate, so a run's steps do not depend on its total length.

Resuming is exact: step s's positives are a function of (seed, s) (a permutation per
epoch), its negatives of fold_in(key(seed), s), and the checkpoint holds step, params and
optimizer state (kbit_jax/checkpoint.py's Checkpointer).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from kbit_jax.kg import data, models
from kbit_jax.train import checkpoint, sharding

# Keys a checkpoint must share with the config resuming it (the others, e.g. train.steps,
# may change: a run can be extended).
RESUME_KEYS = (
  "model.name",
  "model.dim",
  "model.norm",
  "model.gamma",
  "data.graph",
  "data.num_train",
  "train.batch_size",
  "train.negatives",
  "train.lr",
  "train.margin",
  "train.adversarial_temperature",
  "train.seed",
)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    dict(
      name="rotate",  # one of models.MODELS
      dim=64,  # real values per entity (RotatE: dim/2 complex numbers)
      norm=1,  # TransE's distance: L1 or L2
      gamma=6.0,
    )
  )  # RotatE's margin in its score
  c.data = ml_collections.ConfigDict(
    dict(
      graph="",  # the graph's name, set from the Graph trained on
      num_train=0,
    )
  )  # training triples kept (data.subsample_train); 0 = all
  c.train = ml_collections.ConfigDict(
    dict(
      steps=1000,
      batch_size=512,
      negatives=64,
      lr=1e-2,
      margin=2.0,  # TransE's margin ranking loss
      adversarial_temperature=0.5,  # RotatE's self-adversarial alpha
      seed=0,
      checkpoint_every=1000,
      keep_checkpoints=2,
      log_every=100,
    )
  )
  return c


def _positive_int(key: str, value: Any, upper: int | None = None) -> None:
  if (
    not isinstance(value, int)
    or isinstance(value, bool)
    or value < 1
    or (upper is not None and value > upper)
  ):
    allowed = f"1..{upper}" if upper is not None else "a positive int"
    raise ValueError(f"{key}={value!r} is not allowed; allowed: {allowed}")


def validate(config: ml_collections.ConfigDict, graph: data.Graph) -> None:
  """Raises ValueError naming the key and the allowed values, before anything compiles."""
  m, t = config.model, config.train
  models.check_model(m.name, m.dim, m.norm, m.gamma)
  num_train = config.data.num_train or len(graph.train_Nx3)
  _positive_int("data.num_train", num_train, len(graph.train_Nx3))
  for key in ("steps", "negatives", "checkpoint_every", "keep_checkpoints", "log_every"):
    _positive_int(f"train.{key}", t[key])
  _positive_int("train.batch_size", t.batch_size, num_train)
  for key in ("lr", "margin", "adversarial_temperature"):
    if not t[key] > 0:
      raise ValueError(f"train.{key}={t[key]!r} is not allowed; allowed: a value > 0")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


class Positives:
  """Step s's positive triples: epoch s // per_epoch of a permutation drawn from
  (seed, epoch), the remainder of each epoch dropped; a pure function of s."""

  def __init__(self, train_Nx3: np.ndarray, batch_size: int, seed: int):
    self.train_Nx3, self.batch_size, self.seed = train_Nx3, batch_size, seed
    self.per_epoch = len(train_Nx3) // batch_size
    self._epoch, self._perm = -1, None

  def __call__(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.per_epoch)
    if epoch != self._epoch:
      self._epoch = epoch
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_Nx3))
    return self.train_Nx3[self._perm[i * self.batch_size : (i + 1) * self.batch_size]]


def margin_loss(pos_B: jax.Array, neg_BxN: jax.Array, margin: float) -> jax.Array:
  return jnp.mean(jax.nn.relu(margin - pos_B[:, None] + neg_BxN))


def self_adversarial_loss(pos_B: jax.Array, neg_BxN: jax.Array, temperature: float) -> jax.Array:
  weights_BxN = jax.lax.stop_gradient(jax.nn.softmax(temperature * neg_BxN, axis=-1))
  neg = -jnp.mean(jnp.sum(weights_BxN * jax.nn.log_sigmoid(-neg_BxN), axis=-1))
  return (-jnp.mean(jax.nn.log_sigmoid(pos_B)) + neg) / 2


def corrupt(
  key: jax.Array, pos_Bx3: jax.Array, negatives: int, num_entities: int
) -> tuple[jax.Array, jax.Array]:
  """(heads, tails) of the negatives, each BxN: a fair coin per positive picks the side."""
  side_key, entity_key = jax.random.split(key)
  head_side_B = jax.random.bernoulli(side_key, 0.5, pos_Bx3.shape[:1])
  random_BxN = jax.random.randint(entity_key, (pos_Bx3.shape[0], negatives), 0, num_entities)
  h_BxN = jnp.where(head_side_B[:, None], random_BxN, pos_Bx3[:, :1])
  t_BxN = jnp.where(head_side_B[:, None], pos_Bx3[:, 2:], random_BxN)
  return h_BxN, t_BxN


def train_step(
  state: TrainState,
  pos_Bx3: jax.Array,
  base_key: jax.Array,
  *,
  model: nn.Module,
  name: str,
  tx: optax.GradientTransformation,
  train_cfg: ml_collections.ConfigDict,
):
  h_BxN, t_BxN = corrupt(
    jax.random.fold_in(base_key, state.step), pos_Bx3, train_cfg.negatives, model.num_entities
  )
  h_B, r_B, t_B = pos_Bx3[:, 0], pos_Bx3[:, 1], pos_Bx3[:, 2]

  def loss_fn(params):
    pos_B = model.apply({"params": params}, h_B, r_B, t_B)
    neg_BxN = model.apply({"params": params}, h_BxN, r_B[:, None], t_BxN)
    if name == "transe":
      return margin_loss(pos_B, neg_BxN, train_cfg.margin)
    return self_adversarial_loss(pos_B, neg_BxN, train_cfg.adversarial_temperature)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = models.project(name, optax.apply_updates(state.params, updates))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), {"loss": loss}


def single_device_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), sharding.MESH_AXES)


@dataclasses.dataclass
class TrainResult:
  params: Any
  model: nn.Module
  graph: data.Graph  # the subsample trained on
  losses: dict[int, float]  # step -> loss, every log_every steps and the last
  train_s: float  # wall time of this run's steps (compile included)
  resumed_from: int  # 0 when started from scratch (== steps: nothing left)


def check_resumable(ckpt: checkpoint.Checkpointer, config: ml_collections.ConfigDict):
  saved = ckpt.saved_config()
  if saved is None:
    return
  diffs = []
  for key in RESUME_KEYS:
    section, name = key.split(".")
    was, now = saved.get(section, {}).get(name), config[section][name]
    if was != now:
      diffs.append(f"{key}={now!r} but the checkpoint has {was!r}")
  if diffs:
    raise checkpoint.WorkdirError(
      f"{ckpt.directory} holds checkpoints of another run: {'; '.join(diffs)}; use another workdir"
    )


def train(
  config: ml_collections.ConfigDict,
  graph: data.Graph,
  workdir: str | None = None,
  mesh: Mesh | None = None,
  log: Callable[[str], None] = print,
) -> TrainResult:
  """Trains `config` on `graph` (subsampled to data.num_train); with a `workdir`,
  checkpoints there and resumes from its newest checkpoint."""
  validate(config, graph)
  config = ml_collections.ConfigDict(config.to_dict())  # a copy: graph is filled in
  config.data.graph = graph.name
  if config.data.num_train:
    graph = data.subsample_train(graph, config.data.num_train)
  m, tc = config.model, config.train
  model = models.make_model(
    m.name, graph.num_entities, graph.num_relations, m.dim, norm=m.norm, gamma=m.gamma
  )
  tx = optax.adam(tc.lr)
  mesh = mesh or single_device_mesh()
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if tc.batch_size % batch_shards:
    raise ValueError(
      f"train.batch_size={tc.batch_size} is not allowed on mesh "
      f"{dict(mesh.shape)}; allowed: a multiple of data x fsdp = {batch_shards}"
    )

  def init_fn(key):
    ones = jnp.zeros((1,), jnp.int32)
    params = model.init(key, ones, ones, ones)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  init_key, base_key = jax.random.split(jax.random.key(tc.seed))
  abstract = jax.eval_shape(init_fn, init_key)
  state_sharding = sharding.state_shardings(abstract, mesh, models.RULES)
  step_fn = jax.jit(
    functools.partial(train_step, model=model, name=m.name, tx=tx, train_cfg=tc),
    in_shardings=(state_sharding, sharding.batch_sharding(mesh), None),
    out_shardings=(state_sharding, None),
    donate_argnums=0,
  )
  ckpt = checkpoint.Checkpointer(workdir, tc.keep_checkpoints) if workdir else None
  restored = None
  if ckpt is not None:
    check_resumable(ckpt, config)
    target = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      nn.unbox(abstract),
      state_sharding,
    )
    restored = ckpt.restore_latest(target)
  if restored is None:
    state, start = sharding.sharded_init(init_fn, mesh, models.RULES, init_key)[0], 0
  else:
    start, state, _ = restored
    log(f"resumed from step {start} in {ckpt.directory}")

  positives = Positives(graph.train_Nx3, tc.batch_size, tc.seed)
  losses, pending, t0 = {}, None, time.perf_counter()
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(models.RULES):
      for step in range(start, tc.steps):
        batch = sharding.global_batch({"pos": positives(step)}, mesh)["pos"]
        state, step_metrics = step_fn(state, batch, base_key)
        if pending is not None:  # step - 1 has finished (or nearly): fetch its loss now
          _record(losses, *pending, tc, log)
        pending = (step + 1, step_metrics)
        if ckpt is not None and ((step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps):
          _record(losses, *pending, tc, log)  # a NaN must not overwrite a good checkpoint
          pending = None
          ckpt.save(step + 1, state, {"step": step + 1}, config)
      if pending is not None:
        _record(losses, *pending, tc, log)
    params = jax.block_until_ready(state.params)
  finally:  # also on a NaN: finish the saves under way, keep the good checkpoints
    if ckpt is not None:
      ckpt.wait()
      ckpt.close()
  return TrainResult(params, model, graph, losses, time.perf_counter() - t0, start)


def _record(losses: dict[int, float], step: int, step_metrics: dict, tc, log) -> None:
  loss = float(jax.device_get(step_metrics["loss"]))
  if not np.isfinite(loss):
    raise FloatingPointError(f"loss is {loss} at step {step}; lower train.lr={tc.lr}")
  if step % tc.log_every == 0 or step == tc.steps:
    losses[step] = loss
    log(f"step {step}/{tc.steps} loss {loss:.4f}")

"""Train a language model: the recipe, top to bottom.

    config -> mesh -> model -> sharded state -> (resume) -> loop:
      batch -> jitted step -> metrics one step late -> eval -> checkpoint

`train_and_evaluate(config, workdir)` is what `kbit train` runs. Resuming from `workdir`
continues bit-identically: the state, the step and the data iterator's position are all
in the checkpoint, and nothing in a step depends on wall-clock or host state.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from kbit_jax.config import checks
from kbit_jax.model import flops, presets, transformer
from kbit_jax.train import checkpoint, data, metrics, sharding, workdir_lock


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def learning_rate_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to `lr`, then to `lr * min_lr_ratio` at `steps`: by a cosine decay
  (`schedule` "cosine"), or (WSD, "wsd") constant at `lr` until the cool-down, the last
  `decay_fraction` of the steps, decays linearly (Hägele et al. 2024, arXiv 2405.18392).

  A WSD run's learning rate before its cool-down does not depend on `steps`: a run to a
  shorter budget with the same warmup is the same run up to its own cool-down, so a
  cool-down branch from a longer run's stable phase (`train_and_evaluate(...,
  branch_from=...)`) is that shorter run."""
  if train_cfg.schedule == "wsd":
    decay = checks.wsd_decay_steps(train_cfg)
    stable = train_cfg.steps - decay
    warmup = optax.linear_schedule(0.0, train_cfg.lr, max(train_cfg.warmup_steps, 1))
    return optax.join_schedules(
      [
        warmup if train_cfg.warmup_steps else optax.constant_schedule(train_cfg.lr),
        optax.constant_schedule(train_cfg.lr),
        optax.linear_schedule(train_cfg.lr, train_cfg.lr * train_cfg.min_lr_ratio, decay),
      ],
      [train_cfg.warmup_steps, stable],
    )
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=train_cfg.lr,
    warmup_steps=train_cfg.warmup_steps,
    decay_steps=max(train_cfg.steps, train_cfg.warmup_steps + 1),
    end_value=train_cfg.lr * train_cfg.min_lr_ratio,
  )


def decay_mask(params: Any) -> Any:
  """Weight decay on matmul kernels only: not on biases, norms or embedding tables."""

  def is_kernel(path, _):
    return getattr(path[-1], "key", None) == "kernel"

  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.chain(
    optax.clip_by_global_norm(train_cfg.grad_clip),
    optax.adamw(
      learning_rate_schedule(train_cfg),
      b1=train_cfg.b1,
      b2=train_cfg.b2,
      weight_decay=train_cfg.weight_decay,
      mask=decay_mask,
    ),
  )


def make_model(
  config: ml_collections.ConfigDict,
  dot_general_cls=None,
  preset: presets.Preset | None = None,
  scan_layers: bool | None = None,
) -> transformer.Transformer:
  """The net of `config.model`; `preset` overrides the table entry `model.preset` names
  (an imported model's saved architecture, grid/evaluator.py), `scan_layers` overrides
  model.scan_layers."""
  return transformer.Transformer(
    preset or presets.get_preset(config.model.preset),
    dtype=jnp.dtype(config.model.dtype),
    dot_general_cls=dot_general_cls,
    remat=config.model.remat,
    attention=config.model.attention,
    scan_layers=(config.model.scan_layers if scan_layers is None else scan_layers),
  )


def init_state_fn(net: transformer.Transformer, tx: optax.GradientTransformation, seq_len: int):
  """Returns init(key) building the boxed TrainState (for eval_shape / jit).

  The key is an argument, not a constant inside: a program without inputs is one constant
  expression, which an XLA compiler may try to evaluate while compiling (operand-less RNG
  fusions on GPU, jax-ml/jax#16647). The GPU measurements behind this choice are in
  benchmarks/README.md.
  """

  def init(key: jax.Array):
    params = net.init(key, jnp.zeros((1, seq_len), jnp.int32))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return init


def mean_nll(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """The training loss: mean next-token negative log-likelihood in nats."""
  return transformer.next_token_nll(logits_BxLxV, targets_BxL).mean()


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  net: transformer.Transformer,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
):
  def loss_fn(params):
    return mean_nll(net.apply({"params": params}, batch["inputs"]), batch["targets"])

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), step_metrics


def eval_step(
  params: Any, batch: dict[str, jax.Array], *, net: transformer.Transformer
) -> jax.Array:
  return mean_nll(net.apply({"params": params}, batch["inputs"]), batch["targets"])


class Trainer:
  """The compiled pieces of one training run on one mesh; `train_and_evaluate` drives it."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config, self.mesh = config, mesh
    self.rules = sharding.logical_rules(config.mesh)
    dot_general_cls = None
    if config.quant.mode == "qat":  # quantization-aware training: k-bit forward, STE backward
      from kbit_jax.quant import aqt, spec

      dot_general_cls = aqt.make_dot_general_cls(spec.QuantSpec.from_config(config.quant))
    self.net = make_model(config, dot_general_cls)
    self.tx = make_optimizer(config.train)
    self.schedule = learning_rate_schedule(config.train)
    self.init_fn = init_state_fn(self.net, self.tx, config.data.seq_len)
    self.init_key = jax.random.key(config.train.seed)
    self.abstract_boxed = jax.eval_shape(self.init_fn, self.init_key)
    self.state_sharding = sharding.state_shardings(self.abstract_boxed, mesh, self.rules)
    batch_sharding = sharding.batch_sharding(mesh)
    self._train_step = jax.jit(
      functools.partial(train_step, net=self.net, tx=self.tx, schedule=self.schedule),
      in_shardings=(self.state_sharding, batch_sharding),
      out_shardings=(self.state_sharding, None),
      donate_argnums=0,
    )
    self._eval_step = jax.jit(
      functools.partial(eval_step, net=self.net),
      in_shardings=(self.state_sharding.params, batch_sharding),
    )

  def abstract_state(self) -> TrainState:
    """ShapeDtypeStructs carrying this mesh's shardings (restore target)."""
    return jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      nn.unbox(self.abstract_boxed),
      self.state_sharding,
    )

  def init(self) -> TrainState:
    return sharding.sharded_init(self.init_fn, self.mesh, self.rules, self.init_key)[0]

  def step(self, state: TrainState, batch: dict[str, np.ndarray]):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self._train_step(state, sharding.global_batch(batch, self.mesh))

  def evaluate(self, params: Any, batches: list[dict[str, np.ndarray]]) -> float:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      losses = [self._eval_step(params, sharding.global_batch(b, self.mesh)) for b in batches]
    return float(np.mean(jax.device_get(losses)))


def host_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous share of a global batch."""
  n, i = jax.process_count(), jax.process_index()
  return {k: np.split(v, n)[i] for k, v in batch.items()}


class _Profiler:
  """A jax.profiler trace of `num_steps` steps from `first_step` (0 steps: off)."""

  def __init__(self, workdir: str, first_step: int, num_steps: int):
    self.logdir = f"{workdir}/profile"
    self.first, self.last = first_step, first_step + num_steps - 1
    self.enabled = num_steps > 0 and jax.process_index() == 0

  def before(self, step: int):
    if self.enabled and step == self.first:
      jax.profiler.start_trace(self.logdir)

  def after(self, step: int, state: TrainState):
    if self.enabled and step == self.last:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      print(f"profile of steps {self.first}-{self.last} written to {self.logdir}", flush=True)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, branch_from: tuple[str, int] | None = None
) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if a checkpoint is there); returns final metrics.

  The workdir is locked for the run (workdir_lock.py: a second run on it is refused), and
  a workdir holding another model's checkpoints is refused (checkpoint.check_workdir),
  both before anything is compiled or written.

  `branch_from` = (trunk workdir, step): a run without checkpoints of its own starts from
  the trunk's state and data position at that step instead of step 0 (a WSD cool-down
  branch: the trunk's stable phase is this run's own, see learning_rate_schedule). The
  trunk must be this model but for its length (its identity but train.steps)."""
  checks.validate(config)
  if config.mesh.distributed and not jax.distributed.is_initialized():
    sharding.initialize_distributed(config.mesh)
  mesh = sharding.make_mesh(config.mesh)
  checks.validate_for_devices(config, mesh)
  with workdir_lock.hold(workdir, "kbit train"):
    checkpoint.check_workdir(config, workdir)
    if branch_from is not None:
      checkpoint.check_workdir(config, branch_from[0], allowed=("train.steps",))
    return _train(config, workdir, mesh, branch_from)


class _Guard:
  """The NaN guard: what the FloatingPointError names is a checkpoint that exists and
  whose parameters were checked (their loss finite) before they were saved."""

  def __init__(self, directory, start: int):
    self.directory, self.good = directory, start  # a resumed step was checked when saved

  def stop(self, what: str):
    where = (
      f"The last good checkpoint is step {self.good} in {self.directory}"
      if self.good
      else f"No checkpoint was saved in {self.directory}; nothing to resume from"
    )
    raise FloatingPointError(f"{what}; stopping. {where}")


def _train(
  config: ml_collections.ConfigDict, workdir: str, mesh, branch_from: tuple[str, int] | None
) -> dict[str, float]:
  tc = config.train
  trainer = Trainer(config, mesh)
  ckpt = checkpoint.Checkpointer(workdir, tc.keep_checkpoints, keep_steps=tuple(tc.keep_steps))
  train_iter = data.make_train_iterator(
    config.data, tc.batch_size, tc.seed, jax.process_index(), jax.process_count()
  )
  val_batches = [
    host_rows(b)
    for b in data.eval_batches(config.data, "validation", tc.batch_size, tc.eval_batches)
  ]

  restored = ckpt.restore_latest(trainer.abstract_state())
  if restored is None and branch_from is not None:
    trunk, start = branch_from
    with checkpoint.read_only(trunk, tc.keep_checkpoints) as source:
      state, data_state = source.restore_step(start, trainer.abstract_state())
    train_iter.set_state(data_state)
    print(f"branching from step {start} of {source.directory}", flush=True)
  elif restored is None:
    state, start = trainer.init(), 0
  else:
    start, state, data_state = restored
    train_iter.set_state(data_state)
    print(f"resumed from step {start} in {ckpt.directory}", flush=True)
  if start >= tc.steps:
    print(
      f"already trained: step {start} of train.steps={tc.steps} is saved in "
      f"{ckpt.directory}; nothing to do",
      flush=True,
    )
    ckpt.close()
    return {}

  p = presets.get_preset(config.model.preset)
  tokens_per_step = tc.batch_size * config.data.seq_len
  flops_per_step = flops.flops_per_token(p, config.data.seq_len) * tokens_per_step
  mfu = metrics.MfuMeter(flops.peak_flops(config.model.dtype) * jax.device_count())
  logger = metrics.MetricsLogger(workdir, tc.steps, start)
  print(
    f"model {config.model.preset}: {presets.param_counts(p)['total']:,} params; "
    f"mesh {dict(mesh.shape)}; logs: {logger.logdir}  metrics: {logger.jsonl_path}  "
    f"checkpoints: {ckpt.directory}",
    flush=True,
  )

  pending, last = None, {}
  guard, t_last = _Guard(ckpt.directory, start), time.perf_counter()
  profile = _Profiler(workdir, first_step=start + 3, num_steps=tc.profile_steps)
  try:
    for step in range(start + 1, tc.steps + 2):
      if step <= tc.steps:
        profile.before(step)
        batch = next(train_iter)
        state, step_metrics = trainer.step(state, batch)
        profile.after(step, state)
      # Step `step - 1` has finished by now (or soon): fetch its metrics, never this step's.
      if pending is not None:
        done_step, done = pending[0], jax.device_get(pending[1])
        if not np.isfinite(done["loss"]):
          ckpt.wait()
          guard.stop(f"loss is {done['loss']} at step {done_step}")
        if done_step % tc.log_every == 0 or done_step == tc.steps:
          now = time.perf_counter()
          steps_done = done_step - (last.get("step", start))
          seconds = now - t_last
          done["tokens_per_s"] = steps_done * tokens_per_step / seconds
          done["mfu"] = mfu(steps_done * flops_per_step / seconds)
          done["perplexity"] = float(np.exp(done["loss"]))
          logger.write(done_step, done)
          logger.progress(done_step, done)
          last.update(step=done_step, **done)
          t_last = now
      if step > tc.steps:
        break
      pending = (step, step_metrics)
      checked = None  # the loss of state.params, the parameters a save would write
      if step % tc.eval_every == 0 or step == tc.steps:
        val_loss = checked = trainer.evaluate(state.params, val_batches or [batch])
        logger.write(step, {"loss": val_loss, "perplexity": float(np.exp(val_loss))}, "val")
        logger.progress(step, {"val_loss": val_loss})
        last["val_loss"] = val_loss
      if step % tc.checkpoint_every == 0 or step == tc.steps or step in tc.keep_steps:
        # The step's loss is that of the parameters before its update: the ones a save
        # writes are checked on this step's batch first, so a blow-up is never saved.
        if checked is None:
          checked = trainer.evaluate(state.params, [batch])
        if not np.isfinite(checked):
          ckpt.wait()
          guard.stop(
            f"the parameters after step {step} give loss {checked} on step {step}'s "
            "batch; not saving them"
          )
        ckpt.save(step, state, train_iter.get_state(), config)
        guard.good = step
    ckpt.wait()
  finally:
    ckpt.close()
    logger.close()
  logging.info("finished %d steps", tc.steps)
  return last

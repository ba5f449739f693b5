"""Config validation: every bad value is reported with its key and the allowed values,
before any array is allocated or any function compiled."""

from __future__ import annotations

import ml_collections

from kbit_jax.config import defaults, eval_section
from kbit_jax.model import presets, transformer
from kbit_jax.train import sharding

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "wsd")  # train.schedule (train/loop.py: learning_rate_schedule)


def _check_keys(
  config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = ""
):
  for key, value in config.items():
    name = f"{prefix}{key}"
    if key not in reference:
      raise ValueError(
        f"config key {name!r} is unknown; allowed under "
        f"{prefix.rstrip('.') or 'the top level'}: {sorted(reference.keys())}"
      )
    if isinstance(value, ml_collections.ConfigDict):
      _check_keys(value, reference[key], name + ".")


def _positive(config, *names):
  for name in names:
    section, key = name.split(".")
    value = config[section][key]
    if not value > 0:
      raise ValueError(f"{name}={value!r} must be > 0")


def _model(
  config: ml_collections.ConfigDict, arch: presets.Preset | None
) -> tuple[presets.Preset, str]:
  """The architecture the checks apply to, and how errors name it: model.preset's table
  entry, or `arch`, the architecture an imported model brought (grid/plan.py)."""
  if arch is not None:
    return arch, "the imported model"
  return presets.get_preset(config.model.preset), f"model.preset={config.model.preset!r}"


def validate(config: ml_collections.ConfigDict, arch: presets.Preset | None = None) -> None:
  """Checks everything that does not need the devices. Raises ValueError."""
  _check_keys(config, defaults.base_config())
  p, name = _model(config, arch)
  if p.d_model % p.num_heads and not p.head_width:  # an explicit head width needs none
    raise ValueError(f"{name}: num_heads={p.num_heads} does not divide d_model={p.d_model}")
  if config.model.dtype not in DTYPES:
    raise ValueError(f"model.dtype={config.model.dtype!r} is unknown; allowed: {DTYPES}")
  if config.model.attention not in transformer.ATTENTION_IMPLS:
    raise ValueError(
      f"model.attention={config.model.attention!r} is unknown; allowed: "
      f"{transformer.ATTENTION_IMPLS}"
    )
  if config.model.attention == "cudnn" and config.model.dtype == "float32":
    raise ValueError(
      "model.attention='cudnn' needs model.dtype bfloat16 or float16 (cuDNN's "
      "flash attention has no float32 kernel); use 'einsum' or 'xla' for float32"
    )
  _positive(
    config,
    "train.steps",
    "train.lr",
    "train.batch_size",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "data.seq_len",
  )
  if config.train.profile_steps < 0:
    raise ValueError(f"train.profile_steps={config.train.profile_steps} must be >= 0")
  if config.train.warmup_steps < 0:
    raise ValueError(f"train.warmup_steps={config.train.warmup_steps} must be >= 0")
  _schedule(config.train)
  if p.positions == "learned" and config.data.seq_len > p.max_len:
    raise ValueError(
      f"data.seq_len={config.data.seq_len} exceeds {name}'s learned "
      f"positions (max_len={p.max_len}); use data.seq_len <= {p.max_len}"
    )
  if config.mesh.rules not in sharding.RULE_SETS:
    raise ValueError(
      f"mesh.rules={config.mesh.rules!r} is unknown; allowed: {sorted(sharding.RULE_SETS)}"
    )
  from kbit_jax.quant import spec as quant_spec
  from kbit_jax.train import data

  data.validate(config.data)
  eval_section.validate(config.eval, config.data)
  quant_spec.QuantSpec.from_config(config.quant)


def _schedule(train: ml_collections.ConfigDict) -> None:
  """train.schedule, the WSD cool-down and train.keep_steps."""
  if train.schedule not in SCHEDULES:
    raise ValueError(f"train.schedule={train.schedule!r} is unknown; allowed: {SCHEDULES}")
  if train.schedule == "wsd":
    if not 0 < train.decay_fraction <= 1:
      raise ValueError(
        f"train.decay_fraction={train.decay_fraction!r}: the WSD cool-down's share of "
        "train.steps; allowed: 0 < decay_fraction <= 1"
      )
    decay = wsd_decay_steps(train)
    if train.warmup_steps > train.steps - decay:
      raise ValueError(
        f"train.warmup_steps={train.warmup_steps} runs into the WSD cool-down, which "
        f"starts at step {train.steps - decay} (train.steps={train.steps}, "
        f"decay_fraction={train.decay_fraction}); allowed: warmup_steps <= "
        f"{train.steps - decay}"
      )
  bad = [s for s in train.keep_steps if isinstance(s, bool) or not isinstance(s, int)]
  bad += [s for s in train.keep_steps if s not in bad and not 1 <= s <= train.steps]
  if bad:
    raise ValueError(
      f"train.keep_steps={tuple(train.keep_steps)!r}: {bad[0]!r} is not a step of the "
      f"run; allowed: ints in [1, train.steps={train.steps}]"
    )


def wsd_decay_steps(train: ml_collections.ConfigDict) -> int:
  """The WSD cool-down's length in steps: decay_fraction of train.steps, at least 1."""
  return max(1, round(train.decay_fraction * train.steps))


def validate_for_devices(
  config: ml_collections.ConfigDict, mesh, arch: presets.Preset | None = None
) -> None:
  """Checks that need the mesh: the model's dims must split over the model axes, and the
  training batch over the batch axes and hosts (not for an imported `arch`: nothing is
  trained)."""
  import jax

  p, name = _model(config, arch)
  for axis, dim, dim_name in (
    ("tensor", p.num_heads, "num_heads"),
    ("tensor", p.d_ff, "d_ff"),
    ("fsdp", p.d_model, "d_model"),
  ):
    if mesh.shape[axis] > 1 and dim % mesh.shape[axis]:
      raise ValueError(f"mesh.{axis}={mesh.shape[axis]} does not divide {name}'s {dim_name}={dim}")
  if arch is not None:
    return
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.train.batch_size % batch_shards:
    raise ValueError(
      f"train.batch_size={config.train.batch_size} is not divisible by the "
      f"mesh's data*fsdp={batch_shards}; use a multiple of {batch_shards}"
    )
  if config.train.batch_size % jax.process_count():
    raise ValueError(
      f"train.batch_size={config.train.batch_size} is not divisible by the "
      f"{jax.process_count()} processes"
    )

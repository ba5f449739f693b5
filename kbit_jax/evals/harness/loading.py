"""A kbit-jax model directory as the harness bridge evaluates it: net, (k-bit) params,
tokenizer. Imports neither lm_eval nor torch.

    model = loading.load(ModelArgs(model_dir=W, bits=4, dtype="nf"))
    model.net, model.params, model.tokenizer, model.spec, model.max_len

Two kinds of directory:
  * imported (`kbit import`): architecture.json + checkpoints/0 + tokenizer/;
    `convert.importer.load_imported`, the import's tokenizer.
  * trained (`kbit train --workdir W`, or a grid's `W/models/<name>`): checkpoints/ with
    the config saved beside each step; restored as grid/driver.py restores a cell's model
    (the newest readable step, or `step`), a `model.scan_layers` model unrolled, with
    the tokenizer its `data.tokenizer` names.
The quantization arguments build the grid's `QuantSpec` and are checked against the
model's tensors as grid/plan.py checks a cell (the same messages), before any parameter
is read; the parameters are then fake-quantized by the grid's one jitted
`reference.fake_quant_params` (`reference.compile_args`: layout static, the codebook and a
quantile cell's k arguments), so a k-bit
evaluation here sees exactly the weights a grid cell with that spec sees.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kbit_jax.config import defaults
from kbit_jax.convert import importer
from kbit_jax.model import presets, transformer
from kbit_jax.quant import aqt, reference
from kbit_jax.quant import bits as quant_bits
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec, check_targets_exist
from kbit_jax.train import checkpoint, data, loop, sharding

DEFAULT_BATCH_SIZE = 32


@dataclasses.dataclass(frozen=True)
class ModelArgs:
  """`--model_args` of `lm_eval --model kbit` (and the flags of `kbit harness`)."""

  model_dir: str = ""
  bits: int = UNQUANTIZED_BITS
  dtype: str = "int"
  exponent_bits: int = 0
  blocksize: int = 64
  outlier_share: float = 0.0
  double_quant: bool = False
  targets: str = "attn,mlp"  # in --model_args: attn+mlp (commas separate the args)
  act_bits: int = UNQUANTIZED_BITS
  batch_size: int = DEFAULT_BATCH_SIZE
  max_length: int = 0  # 0: the model's max_len
  fsdp: int = 1
  tensor: int = 1
  step: int = -1  # trained models: the checkpoint step; -1 = the newest readable
  add_bos_token: bool | None = None  # None: as the tokenizer's config says
  prefix_token_id: int | None = None  # None: bos if the tokenizer has one, else eos
  max_gen_toks: int = 256
  # scoring batches: lengths a multiple of this (scoring.pack_requests); 0 = powers of two
  bucket_step: int = 32
  # several requests per row, each shared prefix (a choice task's context) run once
  # (evals/shared_prefix.py); False: one request per row
  share_prefixes: bool = True
  compile_cache: str | None = None  # None: kbit's default (~/.cache/kbit_jax/xla); "" off
  retain_host_memory: bool = True  # CPU: keep freed host memory (train/host_memory.py)

  @classmethod
  def from_kwargs(cls, kwargs: dict[str, Any]) -> "ModelArgs":
    """From lm_eval's parsed model_args; an unknown key is named with the allowed ones."""
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
      raise ValueError(f"kbit model_args: {unknown[0]!r} is unknown; allowed: {fields}")
    if not kwargs.get("model_dir"):
      raise ValueError("kbit model_args: model_dir is required, e.g. model_dir=W,bits=4,dtype=nf")
    return cls(**kwargs)

  def spec(self) -> QuantSpec:
    """The grid's QuantSpec of these arguments; its ValueError names the key (quant.*)."""
    targets = self.targets.replace("+", ",") if isinstance(self.targets, str) else self.targets
    return QuantSpec(
      bits=self.bits,
      dtype=self.dtype,
      exponent_bits=self.exponent_bits,
      blocksize=self.blocksize,
      outlier_share=self.outlier_share,
      double_quant=self.double_quant,
      targets=targets,
      act_bits=self.act_bits,
    )


@dataclasses.dataclass
class LoadedModel:
  args: ModelArgs
  kind: str  # "imported" | "trained"
  preset: presets.Preset
  net: transformer.Transformer
  float_params: Any
  params: Any  # fake-quantized under spec (float_params when bits=16)
  spec: QuantSpec
  tokenizer: Any  # data.Tokenizer or convert.tokenizer.HFTokenizer
  max_len: int  # the longest scored sequence
  step: int  # the checkpoint step restored
  config: ml_collections.ConfigDict | None = None  # trained: the saved training config
  source: dict[str, Any] = dataclasses.field(default_factory=dict)  # architecture.json

  @property
  def name(self) -> str:
    """The preset the model equals, or its directory's name."""
    if self.kind == "trained":
      return self.config.model.preset
    return self.source.get("preset") or pathlib.Path(self.args.model_dir).name


def _int_at_least(args: ModelArgs, key: str, low: int) -> None:
  value = getattr(args, key)
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"kbit model_args: {key}={value!r} must be an int >= {low}")


def check_args(args: ModelArgs) -> QuantSpec:
  """Every argument that needs no model; returns the spec (grid's messages)."""
  try:
    spec = args.spec()
  except ValueError as e:
    raise ValueError(f"kbit model_args: {e}") from None
  for key, low in (("batch_size", 1), ("max_length", 0), ("fsdp", 1), ("tensor", 1)):
    _int_at_least(args, key, low)
  _int_at_least(args, "step", -1)
  _int_at_least(args, "max_gen_toks", 1)
  _int_at_least(args, "bucket_step", 0)
  if args.share_prefixes not in (True, False):
    raise ValueError(
      f"kbit model_args: share_prefixes={args.share_prefixes!r}; allowed: True, False"
    )
  if args.add_bos_token not in (None, True, False):
    raise ValueError(
      f"kbit model_args: add_bos_token={args.add_bos_token!r}; allowed: True, False or "
      "None (as the tokenizer's config says)"
    )
  return spec


def model_kind(model_dir: str) -> str:
  """'imported' or 'trained'; FileNotFoundError naming what a model directory holds."""
  path = pathlib.Path(model_dir).expanduser()
  if (path / importer.ARCHITECTURE_FILE).exists():
    return "imported"
  if (path / "checkpoints").is_dir():
    return "trained"
  raise FileNotFoundError(
    f"kbit model_args: model_dir={model_dir!r} holds no checkpoint: expected "
    f"{importer.ARCHITECTURE_FILE} (a `kbit import` directory) or checkpoints/ (a "
    "`kbit train` workdir or a grid's W/models/<name>)"
  )


def eval_mesh(args: ModelArgs, p: presets.Preset) -> jax.sharding.Mesh:
  """This process's first fsdp x tensor devices, no data axis (as the grid evaluates)."""
  local = jax.local_devices()
  if args.fsdp * args.tensor > len(local):
    raise ValueError(
      f"kbit model_args: fsdp={args.fsdp} x tensor={args.tensor} devices; this process "
      f"has {len(local)}"
    )
  for key, size, dim, name in (
    ("tensor", args.tensor, p.num_heads, "num_heads"),
    ("tensor", args.tensor, p.d_ff, "d_ff"),
    ("fsdp", args.fsdp, p.d_model, "d_model"),
  ):
    if dim % size:
      raise ValueError(f"kbit model_args: {key}={size} does not divide the model's {name}={dim}")
  cfg = ml_collections.ConfigDict(dict(data=1, fsdp=args.fsdp, tensor=args.tensor))
  return sharding.make_mesh(cfg, local[: args.fsdp * args.tensor])


def saved_config(model_dir: str) -> ml_collections.ConfigDict:
  """The training config saved with the newest readable step, over today's defaults
  (keys an older checkpoint lacks read their default, as check_workdir does)."""
  with checkpoint.read_only(model_dir, 1) as ckpt:
    saved = ckpt.saved_config()
  if saved is None:
    raise FileNotFoundError(
      f"kbit model_args: model_dir={model_dir!r} has checkpoints/ but no readable "
      "step with a saved config"
    )
  config = defaults.base_config()
  for section, values in saved.items():
    if isinstance(values, dict) and section in config:
      config[section].update({k: v for k, v in values.items() if k in config[section]})
  return config


def _abstract_params(net: transformer.Transformer, mesh, rules) -> Any:
  boxed = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  shardings = sharding.state_shardings(boxed["params"], mesh, rules)
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    nn.unbox(boxed["params"]),
    shardings,
  )


def _restore_trained(args: ModelArgs, config, mesh, rules) -> tuple[Any, int]:
  net = loop.make_model(config)  # as trained: stacked when model.scan_layers
  with checkpoint.read_only(args.model_dir, config.train.keep_checkpoints) as ckpt:
    steps = ckpt.steps()
    step = steps[-1] if args.step == -1 and steps else args.step
    if step not in steps:
      raise FileNotFoundError(
        f"kbit model_args: step={args.step} is not a checkpoint of {args.model_dir}; "
        f"allowed: {steps} or -1 (the newest)"
      )
    params = ckpt.restore_params(_abstract_params(net, mesh, rules), step=step)
  return transformer.unstack_layers(params), step


def _act_net(preset, dtype, config, spec: QuantSpec) -> transformer.Transformer:
  """The float net, or with act_bits < 16 the grid's activation-quantized one."""
  cls = None
  if spec.act_bits != UNQUANTIZED_BITS:
    targets = tuple(t for t in spec.targets if t != "embed") or ("attn", "mlp")
    act_spec = QuantSpec(bits=UNQUANTIZED_BITS, act_bits=spec.act_bits, targets=targets)
    cls = aqt.make_dot_general_cls(act_spec)
  if config is not None:
    return loop.make_model(config, cls, scan_layers=False)
  return transformer.Transformer(preset, dtype=dtype, dot_general_cls=cls)


def quantize(params: Any, spec: QuantSpec) -> Any:
  """The grid's fake quantization of a cell (driver.CellEvaluator.quantized)."""
  if not spec.quantized:
    return params
  fn = jax.jit(
    reference.fake_quant_params,
    static_argnums=1,
    out_shardings=jax.tree.map(lambda x: x.sharding, params),
  )
  return jax.block_until_ready(fn(params, *reference.compile_args(spec)))


def prepare_host(args: ModelArgs) -> None:
  """What `kbit train` and `kbit grid` set up first (commands/host_setup.py), when jax's
  backend has not started yet (the `lm_eval` and `kbit harness` processes): on CPU keep
  freed host memory (XLA:CPU's temporaries, e.g. a batch's logits, stop page-faulting),
  and the persistent compilation cache, so a rerun loads its executables."""
  try:
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
      return
  except (ImportError, AttributeError):  # a jax without it: leave the process as it is
    return
  from kbit_jax.train import compile_cache, host_memory

  if args.retain_host_memory and not host_memory.accelerator_installed():
    host_memory.retain_freed_memory()
  cache = compile_cache.DEFAULT_DIR if args.compile_cache is None else args.compile_cache
  compile_cache.enable(cache)


def load(args: ModelArgs) -> LoadedModel:
  """Checks everything (arguments, directory, targets, mesh) before reading a tensor."""
  spec = check_args(args)
  prepare_host(args)
  kind = model_kind(args.model_dir)
  config, source = None, {}
  if kind == "imported":
    path = pathlib.Path(args.model_dir).expanduser() / importer.ARCHITECTURE_FILE
    source = json.loads(path.read_text())
    p = importer.read_architecture(args.model_dir)
  else:
    config = saved_config(args.model_dir)
    p = presets.get_preset(config.model.preset)
  try:
    check_targets_exist(quant_bits.preset_shapes(p), spec)
  except ValueError as e:
    raise ValueError(f"kbit model_args: {e}") from None
  max_len = args.max_length or p.max_len
  if p.positions == "learned" and max_len > p.max_len:
    raise ValueError(
      f"kbit model_args: max_length={args.max_length} exceeds the model's learned "
      f"positions (max_len={p.max_len})"
    )
  mesh = eval_mesh(args, p)
  rules = sharding.RULE_SETS["megatron"]
  if kind == "imported":
    tokenizer = data.load_tokenizer(str(pathlib.Path(args.model_dir).expanduser()))
    with checkpoint.quiet_orbax():
      p, params = importer.load_imported(args.model_dir, mesh, rules)
    step, dtype = importer.STEP, jnp.float32
  else:
    tokenizer = data.load_tokenizer(config.data.tokenizer)
    with checkpoint.quiet_orbax():
      params, step = _restore_trained(args, config, mesh, rules)
    dtype = jnp.dtype(config.model.dtype)
  if tokenizer.vocab_size > p.vocab_size:
    raise ValueError(
      f"the tokenizer has {tokenizer.vocab_size} pieces but the model's vocab_size is "
      f"{p.vocab_size}"
    )
  return LoadedModel(
    args=args,
    kind=kind,
    preset=p,
    net=_act_net(p, dtype, config, spec),
    float_params=params,
    params=quantize(params, spec),
    spec=spec,
    tokenizer=tokenizer,
    max_len=max_len,
    step=step,
    config=config,
    source=source,
  )

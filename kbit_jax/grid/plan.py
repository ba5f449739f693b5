"""Plan a post-training-quantization grid: expand the axes into cells and validate every
cell before any work.

    plan = grid_plan.make_plan(config)       # configs/grid.py; ValueError names a bad cell

A grid is models x quantization cells. A model is one (size, training seed), trained
once with `base` + `per_size[size]`; with a `grid.tokens` axis, one per (size, seed,
token budget D), each a separate run whose steps are D / (batch x seq_len). Its cells
are every (k, dtype, block size, outlier share) with k < 16, plus one 16-bit cell (the
float model itself: no data type or block size, so it is never repeated per dtype), all
of it once per `grid.act_bits` a (matmul-input bits; 16, the default, is weights-only
and adds nothing to cell keys). Every cell's `QuantSpec` is built here and its targets
checked against the model's parameter shapes, so a bad cell is reported with its name
and the bad key before anything is trained.

A cell's key (keys.py) names the model (its training identity `train_id`), the resolved
quantization and a fingerprint of the eval section, so rerunning a grid finds its finished
cells. The model's directory is `W/models/<name>-<train_id>/` (models.py); names stay
readable (`s1-seed0 k4 int B64 p0`).

Quantization methods (`grid.methods`, default ("rtn",)): every quantized (k, dtype, block
size, outlier share) cell is made once per method of rtn (round to nearest, the study),
gptq and awq (kbit_jax/quant/methods.py); the 16-bit cell once, whatever the methods.
A gptq or awq cell's key adds `method` and `calib_id`, the fingerprint of the grid's
`calibration` section as that method reads it (kbit_jax/config/calibration_section.py), so
rtn keys are those of a grid without the axis and changing the calibration re-runs only
the calibrated cells it affects. Every (method, cell) is checked here (methods.check_method:
e.g. AWQ with activation bits < 16 is refused), and so is the calibration section.

A pretrained grid's model (pretrained.py) is named by its size (no seed, no token budget;
cell keys add `hub_id` and have train_tokens 0; a hub revision of `pretrained.revisions`
is the model "<size>@<revision>", its keys add `revision` and its training tokens), has
the architecture its import saved and
its own tokenizer (`data.tokenizer` = the import dir), and costs no training. A missing
import is an error naming the size, the path and the `kbit import` command: at plan time
with `make_plan(config, require_imports=True)`, else when the work starts
(`ModelRun.check_import`); a dry run works without the imports.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterable

import ml_collections

from kbit_jax.analysis import results
from kbit_jax.config import calibration_section, checks, eval_section
from kbit_jax.evals import scoring
from kbit_jax.grid import along, keys, plan_methods
from kbit_jax.grid.keys import RTN
from kbit_jax.grid.pretrained import (
  Pretrained,
  missing_imports_message,
  pretrained_sources,
  read_import,
)
from kbit_jax.model import presets
from kbit_jax.quant import bits as quant_bits
from kbit_jax.quant import methods as quant_methods
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec, check_targets_exist
from kbit_jax.train import data, identity, sharding

AXES = ("sizes", "seeds", "bits", "dtypes", "blocksizes", "outlier_shares")
QUANT_AXES = ("dtypes", "blocksizes", "outlier_shares")  # unused by the 16-bit cell
# Axes added later; a grid section without one reads its default, which adds nothing to
# the cells' keys, names or model directories (the default grid is unchanged):
# act_bits: matmul-input bits a of every cell, 16 = weights-only (the study);
# tokens: training-token budgets D per size, () = the one budget of per_size's steps;
# checkpoints: points along each run (token counts or fractions of it) to evaluate, () =
# its end (along.py); methods: quantization methods (quant/methods.py), rtn = the
# study's round to nearest.
OPTIONAL_AXES = {
  "act_bits": (UNQUANTIZED_BITS,),
  "tokens": (),
  "checkpoints": (),
  "methods": ("rtn",),
}
GRID_KEYS = AXES + tuple(OPTIONAL_AXES) + ("targets",)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One evaluation: a model under one quantization spec."""

  model: str  # ModelRun.name
  key: tuple[tuple[str, Any], ...]
  spec: QuantSpec
  method: str = RTN  # quant/methods.py: rtn, gptq, awq (the 16-bit cell: rtn)

  @property
  def key_dict(self) -> dict[str, Any]:
    return dict(self.key)

  @property
  def id(self) -> str:
    return results.cell_id(self.key_dict)

  @property
  def name(self) -> str:
    s = self.spec
    a = f" a{s.act_bits}" if s.act_bits != UNQUANTIZED_BITS else ""
    if not s.quantized:
      return f"{self.model} k16{a}"
    e = f"e{s.exponent_bits}" if s.dtype == "float" else ""
    m = f" {self.method}" if self.method != RTN else ""
    return f"{self.model} k{s.bits} {s.dtype}{e} B{s.blocksize} p{s.outlier_share:g}{a}{m}"

  @property
  def layout(self) -> tuple:
    """What the compiled quantizer depends on besides the codebook (see evaluator.py);
    a calibrated method's quantizers are its own (compiled per kernel shape too)."""
    s = self.spec
    m = (self.method,) if self.method != RTN else ()
    return (s.blocksize, s.outlier_share, s.centered, s.double_quant, s.targets) + m


@dataclasses.dataclass(eq=False)
class ModelRun:
  """One (size, seed, token budget) to train, or one imported model, and its cells."""

  preset: str
  seed: int
  config: ml_collections.ConfigDict  # the full training config
  cells: list[Cell]
  tokens_axis: bool = False  # trained for a grid.tokens budget: "-D<tokens>"
  pretrained: Pretrained | None = None  # evaluated from this import, never trained
  arch: presets.Preset | None = None  # the import's architecture (None: missing)
  bos: bool = False  # scoring prepends BOS (evals/scoring.py prepends_bos, eval.bos)
  # Along training (grid.checkpoints, along.py): the trunk whose run this model is a
  # point of: its step `step` (cosine: a kept checkpoint of the trunk's directory), or
  # with train.schedule=wsd a cool-down branch of its own directory whose config is
  # trained from the trunk's kept step `branch_start`. None: a run of its own.
  trunk: ModelRun | None = None
  step: int = 0  # a checkpoint of the trunk's run; 0 = the end of `config`'s run
  branch_start: int = 0  # a WSD branch starts from this step of the trunk's run

  @property
  def architecture(self) -> presets.Preset:
    """The net's shapes: what the import saved, else the table preset `preset`."""
    return self.arch or presets.get_preset(self.preset)

  @property
  def name(self) -> str:
    if self.pretrained:
      return self.pretrained.name
    if self.trunk is not None:
      return f"{self.trunk.name}-{'wsd' if self.branch_start else 'step'}{self.final_step}"
    d = f"-D{self.train_tokens}" if self.tokens_axis else ""
    return f"{self.preset}-seed{self.seed}{d}"

  @property
  def train_id(self) -> str:
    """8 hex digits of the training identity (train/identity.py); "" for an import."""
    return "" if self.pretrained else identity.train_id(self.config)

  @property
  def dir_name(self) -> str:
    """Its training run's directory under W/models/: `<name>-<train_id>` (trained runs
    only); a cosine checkpoint along a run (grid.checkpoints) is read from its trunk's."""
    if self.trunk is not None and not self.branch_start:
      return self.trunk.dir_name
    return f"{self.name}-{self.train_id}"

  @property
  def final_step(self) -> int:
    """The training step whose parameters this model is."""
    return self.step or self.config.train.steps

  @property
  def train_tokens(self) -> int:
    if self.pretrained:
      return self.pretrained.tokens  # not trained here: what the hub revision saw, or 0
    t = self.config.train
    return self.final_step * t.batch_size * self.config.data.seq_len

  @property
  def trained_steps(self) -> int:
    """Steps this model's own training adds: a checkpoint of a trunk none, a branch its
    cool-down, a run (or a trunk) all of them; an import none."""
    if self.pretrained or (self.trunk is not None and not self.branch_start):
      return 0
    return self.config.train.steps - self.branch_start

  def check_import(self) -> None:
    """Raises ValueError (size, path, `kbit import` command) if this run's import was
    missing when the grid was planned; nothing for trained runs."""
    if self.pretrained and self.arch is None:
      raise ValueError(self.pretrained.missing_message())


@dataclasses.dataclass(eq=False)
class Plan:
  config: ml_collections.ConfigDict  # the grid config
  models: list[ModelRun]
  # The calibration section with its defaults (calibration_section.with_defaults).
  calibration: ml_collections.ConfigDict = dataclasses.field(
    default_factory=lambda: calibration_section.with_defaults(None)
  )

  @property
  def methods(self) -> tuple[str, ...]:
    return axis_values(self.config.grid, "methods")

  @property
  def cells(self) -> list[Cell]:
    return [c for m in self.models for c in m.cells]

  @property
  def missing_imports(self) -> list[Pretrained]:
    return [m.pretrained for m in self.models if m.pretrained and m.arch is None]


def axis_values(grid: ml_collections.ConfigDict, name: str) -> tuple:
  """An axis as a tuple; string items may hold comma lists (`--config.grid.sizes=s1,s2`)."""
  value = grid[name] if name in grid else OPTIONAL_AXES[name]
  items = value if isinstance(value, (tuple, list)) else (value,)
  out = []
  for item in items:
    out.extend(p.strip() for p in item.split(",") if p.strip()) if isinstance(
      item, str
    ) else out.append(item)
  if len(set(out)) != len(out):
    raise ValueError(f"grid.{name}={value!r} repeats a value")
  return tuple(out)


def _check_grid_keys(config: ml_collections.ConfigDict) -> None:
  for section in ("grid", "base", "per_size", "eval"):
    if section not in config:
      raise ValueError(
        f"the grid config has no {section!r} section; it needs "
        "grid, base, per_size and eval (see configs/grid.py)"
      )
  unknown = sorted(set(config.grid.keys()) - set(GRID_KEYS))
  if unknown:
    raise ValueError(f"grid.{unknown[0]} is unknown; allowed: {list(GRID_KEYS)}")


def model_config(
  config: ml_collections.ConfigDict, size: str, seed: int, tokens: int = 0
) -> ml_collections.ConfigDict:
  """`base` + `per_size[size]`, with the preset and the training seed set; `tokens` > 0
  rescales the steps (and warmup, eval and checkpoint intervals) to that token budget at
  the size's batch size: a separate run per budget, with its own cosine schedule."""
  c = ml_collections.ConfigDict(config.base.to_dict())
  if size in config.per_size:
    overrides = config.per_size[size].to_dict()
    for section, values in overrides.items():
      if section not in c or not isinstance(values, dict):
        raise ValueError(
          f"per_size.{size}.{section} is unknown; allowed: sections of base "
          f"{sorted(c.keys())}, each a dict of overrides"
        )
      bad = sorted(set(values) - set(c[section].keys()))
      if bad:
        raise ValueError(
          f"per_size.{size}.{section}.{bad[0]} is unknown; allowed: {sorted(c[section].keys())}"
        )
      c[section].update(values)
  c.model.preset = size
  c.train.seed = seed
  if tokens:
    t = c.train
    steps = max(1, round(tokens / (t.batch_size * c.data.seq_len)))
    t.warmup_steps = max(1, round(t.warmup_steps * steps / t.steps))
    t.eval_every, t.checkpoint_every, t.steps = steps, min(t.checkpoint_every, steps), steps
  return c


def _specs(grid: dict[str, tuple], targets: str) -> Iterable[tuple[str, dict[str, Any]]]:
  """(cell label, QuantSpec kwargs): per activation bits a, 16 bits once, then layouts x
  dtypes x k."""
  for a in grid["act_bits"]:
    label = "" if a == UNQUANTIZED_BITS else f" a{a}"
    if UNQUANTIZED_BITS in grid["bits"]:
      yield f"k16{label}", dict(bits=UNQUANTIZED_BITS, targets=targets, act_bits=a)
    for b in grid["blocksizes"]:
      for p in grid["outlier_shares"]:
        for dtype in grid["dtypes"]:
          for k in grid["bits"]:
            if k != UNQUANTIZED_BITS:
              yield (
                f"k{k} {dtype} B{b} p{p:g}{label}",
                dict(
                  bits=k, dtype=dtype, blocksize=b, outlier_share=p, targets=targets, act_bits=a
                ),
              )


def _check_devices(
  run_cfg: ml_collections.ConfigDict, where: str, arch: presets.Preset | None = None
) -> None:
  """config_lib's checks of one model of the grid (against `arch` for an import)."""
  try:
    checks.validate(run_cfg, arch)
    checks.validate_for_devices(run_cfg, sharding.make_mesh(run_cfg.mesh), arch)
  except ValueError as e:
    raise ValueError(f"grid size {where}: {e}") from None


def _model_run(
  config: ml_collections.ConfigDict, size: str, seed: int, tokens: int, source: Pretrained | None
) -> ModelRun:
  """A validated run: trained (config_lib's checks) or imported (tokenizer = import)."""
  cfg = model_config(config, size, seed, tokens)
  if source is None or not source.present:
    run = ModelRun(size, seed, cfg, [], tokens_axis=bool(tokens), pretrained=source)
    if source and size not in presets.PRESETS:
      raise ValueError(
        f"{source.missing_message()}; planning it needs the import "
        f"({size!r} is no preset of kbit_jax/model/presets.py)"
      )
    _check_devices(run.config, run.name)  # a missing import: the table preset's shapes
    return run
  arch, source = read_import(source)
  cfg.data.tokenizer = source.import_dir  # data.load_tokenizer: the import's tokenizer/
  run = ModelRun(size, seed, cfg, [], pretrained=source, arch=arch)
  _check_devices(cfg, f"{size} (imported {source.import_dir})", arch)
  return run


def _add_cells(run: ModelRun, grid: dict, targets, shapes, fingerprint: str, methods, calib):
  """`run`'s cells: the float cell once, each quantized spec once per method (rtn's
  first); a spec or method the model cannot take is a ValueError naming the cell."""
  calib_ids = {
    m: calibration_section.fingerprint(calib, run.config.data, m) for m in methods if m != RTN
  }
  by_method: dict[str, list[Cell]] = {m: [] for m in methods}
  for label, kwargs in _specs(grid, targets):
    try:
      spec = QuantSpec(**kwargs)
      check_targets_exist(shapes, spec)
    except ValueError as e:
      raise ValueError(f"grid cell {run.name} {label}: {e}") from None
    if not spec.quantized:  # the float model: one cell whatever the methods
      run.cells.append(Cell(run.name, keys.cell_key(run, spec, fingerprint), spec))
      continue
    for m in methods:
      try:
        quant_methods.check_method(
          m, spec, preset=run.architecture, percdamp=calib.percdamp, grid=calib.awq_grid
        )
      except ValueError as e:
        raise ValueError(f"grid cell {run.name} {label} method {m}: {e}") from None
      key = keys.cell_key(run, spec, fingerprint, m, calib_ids.get(m, ""))
      by_method[m].append(Cell(run.name, key, spec, m))
  run.cells += [c for m in methods for c in by_method[m]]  # rtn's cells first


def make_plan(config: ml_collections.ConfigDict, require_imports: bool = False) -> Plan:
  """Expands and validates the grid; raises ValueError naming the bad cell or key. With
  `require_imports`, a missing import of a pretrained grid is an error here too."""
  _check_grid_keys(config)
  grid = {name: axis_values(config.grid, name) for name in AXES + tuple(OPTIONAL_AXES)}
  for d in grid["tokens"]:
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
      raise ValueError(
        f"grid.tokens={config.grid.tokens!r}: {d!r} is not a positive int "
        "token budget; allowed: () (per_size's steps) or ints >= 1"
      )
  needed = (
    AXES
    if any(k != UNQUANTIZED_BITS for k in grid["bits"])
    else (tuple(a for a in AXES if a not in QUANT_AXES))
  )
  empty = [f"grid.{a}" for a in needed if not grid[a]]
  if empty:
    raise ValueError(f"the grid has no cells: {', '.join(empty)} is empty")
  try:
    eval_section.validate(config.eval, config.base.data)
    if eval_section.harness_tasks(config.eval):  # lm_eval's task check, needs the extra
      from kbit_jax.evals.harness import cells as harness_cells

      harness_cells.check(config.eval)
  except ValueError as e:
    raise ValueError(f"grid eval section: {e}") from None
  fingerprint = keys.eval_id(config)
  methods, calib = plan_methods.check_methods(config, grid)
  sources = pretrained_sources(config, grid)
  models = []
  for size in grid["sizes"]:
    shapes = None
    runs = itertools.product(sources.get(size, [None]), grid["seeds"], grid["tokens"] or (0,))
    for source, seed, tokens in runs:
      trunk = _model_run(config, size, seed, tokens, source)
      trunk.bos = scoring.prepends_bos(  # along.expand's models copy it
        data.load_tokenizer(trunk.config.data.tokenizer),
        eval_section.with_defaults(config.eval).bos,
      )
      if shapes is None:  # one architecture per size: its seeds and budgets share it
        shapes = quant_bits.preset_shapes(trunk.architecture)
      for run in along.expand(trunk, grid["checkpoints"], config.grid):
        _add_cells(run, grid, config.grid.targets, shapes, fingerprint, methods, calib)
        models.append(run)
  plan_methods.check_calibration_windows(calib, models, methods)
  plan = Plan(config, models, calib)
  if require_imports and plan.missing_imports:
    raise ValueError(missing_imports_message(plan.missing_imports))
  return plan

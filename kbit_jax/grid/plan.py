"""Plan a post-training-quantization grid: expand the axes into cells, validate every cell
before any work, and estimate what the grid costs.

    plan = grid_plan.make_plan(config)       # configs/grid.py; ValueError names a bad cell
    print(grid_plan.format_plan(plan, grid_plan.estimate(plan), finished_ids))

A grid is models x quantization cells. A model is one (size, training seed), trained
once with `base` + `per_size[size]`; with a `grid.tokens` axis, one per (size, seed,
token budget D), each a separate run whose steps are D / (batch x seq_len). Its cells
are every (k, dtype, block size, outlier share) with k < 16, plus one 16-bit cell (the
float model itself: no data type or block size, so it is never repeated per dtype), all
of it once per `grid.act_bits` a (matmul-input bits; 16, the default, is weights-only
and adds nothing to cell keys). Every cell's `QuantSpec` is built here and its targets
checked against the model's parameter shapes, so a bad cell is reported with its name
and the bad key before anything is trained.

A cell's key (results.py) names the model (preset, seed, training tokens), the
resolved quantization (float exponent bits included) and a fingerprint of the eval
section, so rerunning a grid finds its finished cells and a changed evaluation does not.

Pretrained grids (a `pretrained` section, configs/grid_pretrained.py): each size is the
`kbit import` workdir `pretrained.import_root/<size>` of the hub model `pretrained.repos`
names, evaluated instead of trained. Its architecture (shapes, parameter counts, the net)
is the one the import saved, not the table preset of the same name, and it is evaluated
with its own tokenizer (`data.tokenizer` = the import dir). Such a model is named by its
size (no seed, no token budget; cell keys add `hub_id` and have train_tokens 0) and
costs no training. An import dir that is missing is listed by `format_plan` (with the
`kbit import` command that creates it), and is an error naming the size, the path and
that command: at plan time with `make_plan(config, require_imports=True)`, else when
grid.py starts the work (`check_import`); a dry run works without the imports.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
from typing import Any, Iterable, Sequence

import jax
import ml_collections

from kbit_jax.analysis import results
from kbit_jax.config import checks, eval_section
from kbit_jax.evals import evaluate, scoring
from kbit_jax.model import flops, presets
from kbit_jax.quant import bits as quant_bits
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec, check_targets_exist
from kbit_jax.train import data, sharding

AXES = ("sizes", "seeds", "bits", "dtypes", "blocksizes", "outlier_shares")
QUANT_AXES = ("dtypes", "blocksizes", "outlier_shares")  # unused by the 16-bit cell
# Axes added later; a grid section without one reads its default, which adds nothing to
# the cells' keys, names or model directories (the default grid is unchanged):
# act_bits: matmul-input bits a of every cell, 16 = weights-only (the study);
# tokens: training-token budgets D per size, () = the one budget of per_size's steps.
OPTIONAL_AXES = {"act_bits": (UNQUANTIZED_BITS,), "tokens": ()}
GRID_KEYS = AXES + tuple(OPTIONAL_AXES) + ("targets",)
PRETRAINED_KEYS = ("hf_root", "import_root", "repos", "device_gib")  # device_gib: optional
ARCHITECTURE_FILE = "architecture.json"  # convert/importer.py: written last by an import
# Time model of `estimate`: FLOPs at an assumed share of the measured matmul peak, plus
# fixed costs (Python, host-side task scoring, compiles), calibrated with the default CPU
# grid on 2 shared CPU cores (load ~6; f32, tiny presets, where the fixed costs dominate).
TRAIN_MFU = 0.3
EVAL_MFU = 0.4
MODEL_OVERHEAD_S = 10.0  # compile the train step, restore, evaluation compiles
STEP_OVERHEAD_S = 0.15
CELL_OVERHEAD_S = 1.0
QUANTILE_COMPILE_S = 1.5  # `quantile` compiles its quantizer once per (layout, k)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One evaluation: a model under one quantization spec."""

  model: str  # ModelRun.name
  key: tuple[tuple[str, Any], ...]
  spec: QuantSpec

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
    return f"{self.model} k{s.bits} {s.dtype}{e} B{s.blocksize} p{s.outlier_share:g}{a}"

  @property
  def layout(self) -> tuple:
    """What the compiled quantizer depends on besides the codebook (see grid.py)."""
    s = self.spec
    return (s.blocksize, s.outlier_share, s.centered, s.double_quant, s.targets)


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Where a pretrained size comes from: a hub model, downloaded and `kbit import`ed."""

  size: str
  hub_id: str
  import_dir: str  # pretrained.import_root/<size> (absolute)
  hf_dir: str  # pretrained.hf_root/<size>: the download the import reads
  family: str = ""  # from the import's architecture.json
  table_preset: str = ""  # the kbit_jax/presets.py entry the import equals, or ""

  @property
  def present(self) -> bool:
    return (pathlib.Path(self.import_dir) / ARCHITECTURE_FILE).exists()

  @property
  def commands(self) -> tuple[str, str]:
    """The download and the import that create `import_dir` (convert/README.md)."""
    return (
      f"hf download {self.hub_id} --local-dir {self.hf_dir} --include '*.json' "
      "'*.safetensors' merges.txt",
      f"kbit import --hf_dir {self.hf_dir} --workdir {self.import_dir}",
    )

  def missing_message(self) -> str:
    return (
      f"grid size {self.size}: its imported model {self.import_dir} "
      f"(pretrained.import_root/{self.size}) is missing (no {ARCHITECTURE_FILE}); "
      f"create it with `{self.commands[1]}` after downloading {self.hub_id} "
      f"(`{self.commands[0]}`)"
    )


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

  @property
  def architecture(self) -> presets.Preset:
    """The net's shapes: what the import saved, else the table preset `preset`."""
    return self.arch or presets.get_preset(self.preset)

  @property
  def name(self) -> str:
    if self.pretrained:
      return self.preset
    d = f"-D{self.train_tokens}" if self.tokens_axis else ""
    return f"{self.preset}-seed{self.seed}{d}"

  @property
  def train_tokens(self) -> int:
    if self.pretrained:
      return 0  # not trained here
    t = self.config.train
    return t.steps * t.batch_size * self.config.data.seq_len


@dataclasses.dataclass(eq=False)
class Plan:
  config: ml_collections.ConfigDict  # the grid config
  models: list[ModelRun]

  @property
  def cells(self) -> list[Cell]:
    return [c for m in self.models for c in m.cells]

  @property
  def missing_imports(self) -> list[Pretrained]:
    return [m.pretrained for m in self.models if m.pretrained and m.arch is None]


def _axis(grid: ml_collections.ConfigDict, name: str) -> tuple:
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


def eval_id(config: ml_collections.ConfigDict) -> str:
  """Fingerprint of the evaluation settings (part of every cell key)."""
  return results.cell_id(eval_section.fingerprint_dict(config.eval))[:8]


def cell_key(run: ModelRun, spec: QuantSpec, eval_fingerprint: str) -> tuple:
  """The cell's identity; act_bits only when < 16 and hub_id only for imported models,
  so weights-only keys of trained models are as before."""
  q = spec.quantized
  extra = {} if spec.act_bits == UNQUANTIZED_BITS else {"act_bits": spec.act_bits}
  if run.pretrained:
    extra["hub_id"] = run.pretrained.hub_id
  return tuple(
    dict(
      preset=run.preset,
      seed=run.seed,
      train_tokens=run.train_tokens,
      bits=spec.bits,
      dtype=spec.dtype if q else "none",
      exponent_bits=spec.exponent_bits if q else 0,
      blocksize=spec.blocksize if q else None,
      outlier_share=spec.outlier_share if q else 0.0,
      targets=",".join(spec.targets) if q else "none",
      double_quant=spec.double_quant,
      eval_id=eval_fingerprint,
      **extra,
    ).items()
  )


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


# ----------------------------------------------------------------------------- pretrained


def pretrained_sources(
  config: ml_collections.ConfigDict, grid: dict[str, tuple]
) -> dict[str, Pretrained]:
  """{size: Pretrained} of a grid config with a `pretrained` section, else {}."""
  if "pretrained" not in config:
    return {}
  pc = config.pretrained
  for key in PRETRAINED_KEYS[:3]:
    if key not in pc:
      raise ValueError(
        f"pretrained.{key} is missing; the pretrained section needs "
        f"{list(PRETRAINED_KEYS[:3])} (see configs/grid_pretrained.py)"
      )
  unknown = sorted(set(pc.keys()) - set(PRETRAINED_KEYS))
  if unknown:
    raise ValueError(f"pretrained.{unknown[0]} is unknown; allowed: {list(PRETRAINED_KEYS)}")
  try:
    repos = {str(size): str(hub_id) for size, hub_id in pc.repos}
  except (TypeError, ValueError):
    raise ValueError(f"pretrained.repos={pc.repos!r}: allowed: (size, hub id) pairs") from None
  no_repo = [size for size in grid["sizes"] if size not in repos]
  if no_repo:
    raise ValueError(
      f"grid size {no_repo[0]!r} has no pretrained.repos entry; allowed sizes: {list(repos)}"
    )
  if grid["seeds"] != (0,) or grid["tokens"]:
    raise ValueError(
      f"grid.seeds={grid['seeds']!r}, grid.tokens={grid['tokens']!r}: a "
      "pretrained grid evaluates each imported model once; allowed: "
      "seeds (0,) and tokens ()"
    )

  def root(key):
    return pathlib.Path(pc[key]).expanduser().absolute()

  return {
    size: Pretrained(
      size, repos[size], str(root("import_root") / size), str(root("hf_root") / size)
    )
    for size in grid["sizes"]
  }


def read_import(source: Pretrained) -> tuple[presets.Preset, Pretrained]:
  """The architecture an import saved, and `source` with its family and table name."""
  path = pathlib.Path(source.import_dir) / ARCHITECTURE_FILE
  try:
    record = json.loads(path.read_text())
    arch = presets.Preset(**record["architecture"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(
      f"grid size {source.size}: {path} is unreadable ({type(e).__name__}: "
      f"{e}); redo `{source.commands[1]}` into an empty directory"
    ) from None
  return arch, dataclasses.replace(
    source, family=record.get("family", ""), table_preset=record.get("preset", "")
  )


def check_import(run: ModelRun) -> None:
  """Raises ValueError (size, path, `kbit import` command) if `run`'s import was missing
  when the grid was planned; nothing for trained runs."""
  if run.pretrained and run.arch is None:
    raise ValueError(run.pretrained.missing_message())


def missing_imports_message(missing: Sequence[Pretrained]) -> str:
  return f"{len(missing)} imported model(s) of the grid are missing:\n  " + "\n  ".join(
    m.missing_message() for m in missing
  )


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
        f"({size!r} is no preset of kbit_jax/presets.py)"
      )
    _check_devices(run.config, run.name)  # a missing import: the table preset's shapes
    return run
  arch, source = read_import(source)
  cfg.data.tokenizer = source.import_dir  # data.load_tokenizer: the import's tokenizer/
  run = ModelRun(size, seed, cfg, [], pretrained=source, arch=arch)
  _check_devices(cfg, f"{size} (imported {source.import_dir})", arch)
  return run


# ----------------------------------------------------------------------------- plan


def make_plan(config: ml_collections.ConfigDict, require_imports: bool = False) -> Plan:
  """Expands and validates the grid; raises ValueError naming the bad cell or key. With
  `require_imports`, a missing import of a pretrained grid is an error here too."""
  _check_grid_keys(config)
  grid = {name: _axis(config.grid, name) for name in AXES + tuple(OPTIONAL_AXES)}
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
  except ValueError as e:
    raise ValueError(f"grid eval section: {e}") from None
  fingerprint = eval_id(config)
  sources = pretrained_sources(config, grid)
  models = []
  for size in grid["sizes"]:
    shapes = None
    for seed, tokens in itertools.product(grid["seeds"], grid["tokens"] or (0,)):
      run = _model_run(config, size, seed, tokens, sources.get(size))
      if shapes is None:  # one architecture per size: its seeds and budgets share it
        shapes = quant_bits.preset_shapes(run.architecture)
      for label, kwargs in _specs(grid, config.grid.targets):
        try:
          spec = QuantSpec(**kwargs)
          check_targets_exist(shapes, spec)
        except ValueError as e:
          raise ValueError(f"grid cell {run.name} {label}: {e}") from None
        run.cells.append(Cell(run.name, cell_key(run, spec, fingerprint), spec))
      models.append(run)
  plan = Plan(config, models)
  if require_imports and plan.missing_imports:
    raise ValueError(missing_imports_message(plan.missing_imports))
  return plan


# ----------------------------------------------------------------------------- cost


def _request_pairs(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """(context, continuation) of each log-likelihood request of the eval tasks."""
  return [
    pair
    for items in evaluate.load_items(config.eval).values()
    for item in items
    for pair in item.requests
  ]


def _request_lengths(pairs: list[tuple[str, str]], tokenizer: str) -> list[int]:
  """Tokens of each request (context + continuation) under `tokenizer` (data.tokenizer)."""
  tok = data.load_tokenizer(tokenizer)
  return [len(c) + len(x) for c, x in scoring.encode_requests(tok, pairs)]


def _ppl_tokens(config: ml_collections.ConfigDict, run_cfg: ml_collections.ConfigDict) -> int:
  ec = config.eval
  if not ec.ppl_split:
    return 0
  stream = len(data.token_stream(run_cfg.data, ec.ppl_split)) - 1
  cap = ec.ppl_max_batches * ec.batch_size * run_cfg.data.seq_len
  return min(stream, cap) if cap else stream


def estimate(plan: Plan, peak_flops: float | None = None) -> dict[str, Any]:
  """FLOPs, tokens and seconds per model and in total, from `flops` and the time model
  above; `peak_flops` defaults to this machine's measured f32 matmul peak."""
  if peak_flops is None:
    peak_flops = flops.measure_matmul_peak(n=1024, repeats=3) * jax.device_count()
  pairs = _request_pairs(plan.config)
  lengths: dict[str, list[int]] = {}  # per tokenizer: imported models bring their own
  per_model = {}
  for run in plan.models:
    p, seq_len = run.architecture, run.config.data.seq_len
    cap = plan.config.eval.max_len or p.max_len
    tokenizer = run.config.data.tokenizer
    if tokenizer not in lengths:
      lengths[tokenizer] = _request_lengths(pairs, tokenizer)
    task_tokens = sum(min(n - 1, cap) for n in lengths[tokenizer])
    ppl_tokens = _ppl_tokens(plan.config, run.config)
    train_flops = flops.flops_per_token(p, seq_len) * run.train_tokens
    eval_flops = flops.flops_per_token(p, seq_len, training=False) * (task_tokens + ppl_tokens)
    quantile_cells = sum(c.spec.data_dependent for c in run.cells)
    per_model[run.name] = dict(
      params=presets.param_counts(p),
      train_tokens=run.train_tokens,
      train_flops=train_flops,
      train_s=0.0
      if run.pretrained
      else (
        train_flops / (peak_flops * TRAIN_MFU)
        + run.config.train.steps * STEP_OVERHEAD_S
        + MODEL_OVERHEAD_S
      ),
      eval_tokens_per_cell=task_tokens + ppl_tokens,
      task_tokens=task_tokens,
      ppl_tokens=ppl_tokens,
      cells=len(run.cells),
      cell_s=eval_flops / (peak_flops * EVAL_MFU)
      + CELL_OVERHEAD_S
      + QUANTILE_COMPILE_S * quantile_cells / len(run.cells),
    )
  train_s = sum(m["train_s"] for m in per_model.values())
  eval_s = sum(m["cell_s"] * m["cells"] for m in per_model.values())
  return dict(
    peak_flops=peak_flops,
    requests=len(pairs),
    per_model=per_model,
    train_s=train_s,
    eval_s=eval_s,
    total_s=train_s + eval_s,
  )


# ----------------------------------------------------------------------------- printing


def format_duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m{rem % 60:02d}s" if h else f"{rem // 60}m{rem % 60:02d}s"


def _compact(values: Sequence[Any]) -> str:
  return ",".join(str(v) for v in values)


def _layout_rows(run: ModelRun) -> list[tuple[str, ...]]:
  groups: dict[tuple, list[Cell]] = {}
  for cell in run.cells:
    groups.setdefault(cell.layout if cell.spec.quantized else None, []).append(cell)
  rows = []
  for layout, cells in groups.items():
    ks = sorted({c.spec.bits for c in cells})
    dtypes = list(dict.fromkeys(c.spec.dtype for c in cells))
    if layout is None:
      rows.append((run.name, "16", "-", "-", "-", str(len(cells)), "0"))
      continue
    compiles = int(any(d != "quantile" for d in dtypes)) + len(ks) * ("quantile" in dtypes)
    rows.append(
      (
        run.name,
        _compact(ks),
        _compact(dtypes),
        str(layout[0]),
        f"{layout[1]:g}",
        str(len(cells)),
        str(compiles),
      )
    )
  return rows


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

  def line(r):
    return "  ".join(v.rjust(w) for v, w in zip(r, widths))

  return [line(header), "-" * len(line(header))] + [line(r) for r in rows]


def _model_row(run: ModelRun, m: dict[str, Any]) -> tuple[str, ...]:
  """A row of the models table; an imported model has no training columns."""
  train = (
    ("-", "-", "-", "imported")
    if run.pretrained
    else (
      f"{m['train_tokens']:,}",
      f"{run.config.train.steps}",
      f"{m['train_flops'] / 1e12:.2f}",
      format_duration(m["train_s"]),
    )
  )
  return (
    run.name,
    f"{m['params']['total']:,}",
    f"{m['params']['non_embedding']:,}",
    *train,
    f"{m['eval_tokens_per_cell']:,}",
    f"{m['cell_s']:.1f}s",
    str(m["cells"]),
  )


def _pretrained_lines(plan: Plan) -> list[str]:
  """Where each imported model comes from; the commands that create missing ones."""
  sources = [m.pretrained for m in plan.models if m.pretrained]
  if not sources:
    return []
  missing = plan.missing_imports

  def status(s):
    if s in missing:
      return "MISSING"
    return f"{s.family}, preset {s.table_preset or '- (not in presets.py)'}"

  out = [
    "",
    "pretrained: evaluated from `kbit import` workdirs, not trained; "
    "architecture and tokenizer from each import",
  ]
  out += _table(
    ("size", "hub id", "import dir", "imported as"),
    [(s.size, s.hub_id, s.import_dir, status(s)) for s in sources],
  )
  if missing:
    out += [
      "",
      f"{len(missing)} import(s) missing (estimated above with the table "
      "preset's shapes and the data.tokenizer of base); kbit grid without --dry_run "
      "stops before any work until they exist. Create them (kbit_jax/convert/README.md):",
    ]
    out += [f"  {command}" for s in missing for command in s.commands]
  return out


def format_plan(plan: Plan, cost: dict[str, Any], finished: set[str] = frozenset()) -> str:
  """The plan as text: models and their training cost, cells per layout, totals."""
  g = plan.config.grid
  cells = plan.cells
  done = sum(c.id in finished for c in cells)
  out = [
    f"grid plan: {len(plan.models)} models, {len(cells)} cells ({done} already finished)",
    f"axes: sizes={_compact(_axis(g, 'sizes'))} seeds={_compact(_axis(g, 'seeds'))} "
    f"bits={_compact(_axis(g, 'bits'))} dtypes={_compact(_axis(g, 'dtypes'))} "
    f"blocksizes={_compact(_axis(g, 'blocksizes'))} (0 = per tensor) "
    f"outlier_shares={_compact(_axis(g, 'outlier_shares'))} "
    f"act_bits={_compact(_axis(g, 'act_bits'))} "
    f"tokens={_compact(_axis(g, 'tokens')) or 'per_size'} targets={g.targets}",
    "",
  ]
  rows = [_model_row(run, cost["per_model"][run.name]) for run in plan.models]
  out += _table(
    (
      "model",
      "params",
      "non-emb",
      "train tokens",
      "steps",
      "train TFLOP",
      "est train",
      "eval tok/cell",
      "est/cell",
      "cells",
    ),
    rows,
  )
  out += _pretrained_lines(plan)
  out.append("")
  out += _table(
    ("model", "k", "dtypes", "B", "p", "cells", "quantizer compiles"),
    [r for run in plan.models for r in _layout_rows(run)],
  )
  out += [
    "",
    f"evaluation per cell: {cost['requests']} task requests + perplexity on "
    f"eval.ppl_split={plan.config.eval.ppl_split!r}; tokens above exclude padding",
    f"estimate: matmul peak {cost['peak_flops'] / 1e9:.0f} GFLOP/s (measured here), "
    f"assuming {TRAIN_MFU:.0%} of it in training and {EVAL_MFU:.0%} in evaluation, "
    f"+{MODEL_OVERHEAD_S:g}s per model, +{STEP_OVERHEAD_S:g}s per step, "
    f"+{CELL_OVERHEAD_S:g}s per cell, +{QUANTILE_COMPILE_S:g}s per quantile cell",
    f"estimated time: training {format_duration(cost['train_s'])}, evaluation "
    f"{format_duration(cost['eval_s'])}, total {format_duration(cost['total_s'])} "
    f"(for all {len(cells)} cells)",
  ]
  return "\n".join(out)

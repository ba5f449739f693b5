"""The knowledge-graph grid's plan: its axes expanded into models (one training each)
and cells (one evaluation each), every one validated before anything trains; the rough
cost of each, and the plan as the table `kbit kg --dry_run` prints.

    plan = kg.plan.make_plan(config)        # ValueError naming the bad key or cell
    print(kg.plan.format_plan(plan, workdir, finished_ids))

Axes (config `grid` section, configs/kg.py): models x dims (the size axis) x num_train
(the data axis: nested subsamples of the graph's training triples, 0 = all) x seeds give
the models; each is evaluated at 16 bits (once) and at every k < 16 x data type x block
size, its entity and relation tables quantized (kg/quantize.py). A cell's key is
experiment.cell_key's (graph, model, dim, training triples, steps, seed, quantization,
the evaluation split and protocol), its id the store's hash of it. As in the LM grid
(kbit_jax/grid/plan.py), every model's training config and every cell's QuantSpec is
checked here (a bad model name, an odd RotatE dim, an unknown data type, a num_train
outside the graph ...: ValueError naming the cell, the key and the allowed values).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from kbit_jax.analysis import results
from kbit_jax.kg import data, experiment, quantize, train
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec
from kbit_jax.train import checkpoint

SECTIONS = ("grid", "data", "model", "train", "eval")
GRID_KEYS = ("models", "dims", "num_train", "seeds", "bits", "dtypes", "blocksizes", "tables")
AXES = GRID_KEYS[:-1]
QUANT_AXES = ("dtypes", "blocksizes")  # unused by the 16-bit cell
SECTION_KEYS = {"data": ("graph_dir",), "model": ("norm", "gamma"), "eval": ("split", "batch_size")}
# Rough cost model for --dry_run (seconds), fitted to the measured experiment run of
# experiments/kg_embeddings/README.md (2-core CPU shared with other jobs, load 5-9): a
# training step costs about TRAIN_S_PER_STEP_DIM x dim (batch 512 x 64 negatives), one
# evaluation EVAL_S_PER_SCORE per (test triple x entity x dim), plus a fixed overhead
# (compiles, filters). It predicted that run's 11m36s as 11m44s.
TRAIN_S_PER_STEP_DIM = {"transe": 4e-4, "rotate": 1.0e-3}
EVAL_S_PER_SCORE = 4.5e-9
OVERHEAD_S = {"train": 4.0, "cell": 0.5}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One evaluation: a trained model under one quantization spec."""

  model: str  # Run.name
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
    return experiment.cell_name(self.key_dict)


@dataclasses.dataclass(eq=False)
class Run:
  """One (model, dim, training triples, seed) to train once, and its cells."""

  config: ml_collections.ConfigDict  # train.default_config()'s shape, fully set
  num_train: int  # training triples (resolved: 0 = all of them)
  cells: list[Cell]

  @property
  def name(self) -> str:
    m = self.config.model
    return f"{m.name}-d{m.dim}-n{self.num_train}-seed{self.config.train.seed}"

  @property
  def steps(self) -> int:
    return self.config.train.steps


@dataclasses.dataclass(eq=False)
class Plan:
  config: ml_collections.ConfigDict  # the grid config
  graph: data.Graph
  runs: list[Run]
  tables: tuple[str, ...]

  @property
  def cells(self) -> list[Cell]:
    return [c for r in self.runs for c in r.cells]

  @property
  def split(self) -> str:
    return self.config.eval.split


# ----------------------------------------------------------------------------- plan


def axis_values(grid: ml_collections.ConfigDict, name: str) -> tuple:
  """An axis as a tuple; string items may hold comma lists (`--config.grid.models=transe`)."""
  value = grid[name]
  items = value if isinstance(value, (tuple, list)) else (value,)
  out = []
  for item in items:
    if isinstance(item, str):
      out.extend(p.strip() for p in item.split(",") if p.strip())
    else:
      out.append(item)
  if len(set(out)) != len(out):
    raise ValueError(f"grid.{name}={value!r} repeats a value")
  return tuple(out)


def _check_keys(config: ml_collections.ConfigDict) -> None:
  for section in SECTIONS:
    if section not in config:
      raise ValueError(
        f"the kg grid config has no {section!r} section; it needs {list(SECTIONS)} "
        "(see configs/kg.py)"
      )
  unknown = sorted(set(config.keys()) - set(SECTIONS))
  if unknown:
    raise ValueError(
      f"{unknown[0]!r} is not a section of a kg grid config; allowed: {list(SECTIONS)}"
    )
  for section, allowed in {"grid": GRID_KEYS, **SECTION_KEYS}.items():
    keys = set(config[section].keys())
    bad, missing = sorted(keys - set(allowed)), sorted(set(allowed) - keys)
    if bad:
      raise ValueError(f"{section}.{bad[0]} is unknown; allowed: {list(allowed)}")
    if missing:
      raise ValueError(f"{section}.{missing[0]} is missing; {section} needs {list(allowed)}")
  allowed = set(train.default_config().train.keys())
  bad = sorted(set(config.train.keys()) - allowed)
  if bad:
    raise ValueError(f"train.{bad[0]} is unknown; allowed: {sorted(allowed)}")


def _int(key: str, value: Any, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{key}={value!r} is not allowed; allowed: an int >= {low}")
  return int(value)


def load_graph(config: ml_collections.ConfigDict) -> data.Graph:
  """The graph of `data.graph_dir` ('' = the shipped WordNet graph)."""
  directory = config.data.graph_dir
  return data.load_graph(directory) if directory else data.shipped_graph()


def run_config(
  config: ml_collections.ConfigDict,
  graph: data.Graph,
  name: str,
  dim: int,
  num_train: int,
  seed: int,
) -> ml_collections.ConfigDict:
  """train.default_config() with the grid's model, train sections and this run's axes."""
  c = train.default_config()
  c.model.update(dict(name=name, dim=dim, norm=config.model.norm, gamma=config.model.gamma))
  c.data.update(dict(graph=graph.name, num_train=num_train))
  c.train.update(config.train.to_dict())
  c.train.seed = seed
  return c


def _specs(grid: dict[str, tuple]) -> list[tuple[str, dict[str, Any]]]:
  """(label, QuantSpec kwargs): 16 bits once, then block sizes x data types x k."""
  out = []
  if UNQUANTIZED_BITS in grid["bits"]:
    out.append(("k16", dict(bits=UNQUANTIZED_BITS)))
  for b, dtype, k in itertools.product(grid["blocksizes"], grid["dtypes"], grid["bits"]):
    if k != UNQUANTIZED_BITS:
      out.append((f"k{k} {dtype} B{b}", dict(bits=k, dtype=dtype, blocksize=b)))
  return out


def make_plan(config: ml_collections.ConfigDict, graph: data.Graph | None = None) -> Plan:
  """Expands and validates the grid; raises ValueError naming the bad key or cell before
  anything is trained or compiled. `graph` defaults to the config's (load_graph)."""
  _check_keys(config)
  grid = {name: axis_values(config.grid, name) for name in AXES}
  needed = AXES if any(k != UNQUANTIZED_BITS for k in grid["bits"]) else AXES[:5]
  empty = [f"grid.{a}" for a in needed if not grid[a]]
  if empty:
    raise ValueError(f"the kg grid has no cells: {', '.join(empty)} is empty")
  graph = graph or load_graph(config)
  split = config.eval.split
  if split not in data.SPLITS:
    raise ValueError(f"eval.split={split!r} is unknown; allowed: {list(data.SPLITS)}")
  if not len(graph.split(split)):
    raise ValueError(f"eval.split={split!r}: graph {graph.name!r} has no {split} triples")
  _int("eval.batch_size", config.eval.batch_size, 1)
  tables = tuple(t.strip() for t in str(config.grid.tables).split(",") if t.strip())
  try:
    quantize.check_spec(QuantSpec(bits=UNQUANTIZED_BITS), tables)
  except ValueError as e:
    raise ValueError(f"grid.{e}") from None
  total = len(graph.train_Nx3)
  sizes = []
  for n in grid["num_train"]:
    n = _int("grid.num_train", n, 0)
    if n > total:
      raise ValueError(
        f"grid.num_train={n} is not allowed; allowed: 0 (all) or 1..{total} (the training "
        f"triples of graph {graph.name!r})"
      )
    sizes.append(n or total)
  if len(set(sizes)) != len(sizes):
    raise ValueError(
      f"grid.num_train={grid['num_train']!r} names one training set twice (0 = all {total:,})"
    )
  for seed in grid["seeds"]:
    _int("grid.seeds", seed, 0)
  specs = []
  for label, kwargs in _specs(grid):
    try:
      spec = QuantSpec(**kwargs)
      quantize.check_spec(spec, tables)
    except ValueError as e:
      raise ValueError(f"kg grid cell {label}: {e}") from None
    specs.append(spec)
  runs = []
  for name, dim, num_train, seed in itertools.product(
    grid["models"], grid["dims"], sizes, grid["seeds"]
  ):
    where = f"kg grid model {name} dim {dim!r} num_train {num_train} seed {seed}"
    try:
      cfg = run_config(config, graph, name, dim, num_train, seed)
      train.validate(cfg, graph)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    run = Run(cfg, num_train, [])
    for spec in specs:
      key = experiment.cell_key(cfg, graph, num_train, spec, tables, split)
      run.cells.append(Cell(run.name, tuple(key.items()), spec))
    runs.append(run)
  return Plan(config, graph, runs, tables)


# ----------------------------------------------------------------------------- cost


def estimate(plan: Plan, run: Run) -> dict[str, float]:
  """Rough seconds to train `run` and to evaluate one of its cells (module constants)."""
  m = run.config.model
  scores = 2 * len(plan.graph.split(plan.split)) * plan.graph.num_entities * m.dim
  return dict(
    train_s=OVERHEAD_S["train"] + run.steps * TRAIN_S_PER_STEP_DIM[m.name] * m.dim,
    cell_s=OVERHEAD_S["cell"] + EVAL_S_PER_SCORE * scores / 2,
  )


def format_duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m{rem % 60:02d}s" if h else f"{rem // 60}m{rem % 60:02d}s"


def format_plan(plan: Plan, workdir: str, finished: set[str]) -> str:
  g = plan.config.grid
  cells = plan.cells
  done = sum(c.id in finished for c in cells)
  out = [
    f"kg grid plan: {len(plan.runs)} models, {len(cells)} cells ({done} already finished) on "
    f"graph {plan.graph.name!r} ({plan.graph.num_entities:,} entities, "
    f"{len(plan.graph.train_Nx3):,} training triples, {len(plan.graph.split(plan.split)):,} "
    f"{plan.split} triples)",
    "axes: "
    + " ".join(f"{a}={','.join(map(str, axis_values(g, a)))}" for a in AXES)
    + f" tables={','.join(plan.tables)} (num_train 0 = all)",
    "",
    f"{'model':<30} {'table params':>13} {'steps':>6} {'est train':>10} {'est/cell':>9} "
    f"{'cells':>6} {'todo':>5}  state",
  ]
  train_s = eval_s = 0.0
  for run in plan.runs:
    est = estimate(plan, run)
    todo = sum(c.id not in finished for c in run.cells)
    m = run.config.model
    rel = plan.graph.num_relations * (m.dim // 2 if m.name == "rotate" else m.dim)
    params = plan.graph.num_entities * m.dim + rel
    state = model_state(workdir, run) if todo else "done"
    if todo and state != "trained":
      train_s += est["train_s"]
    eval_s += todo * est["cell_s"]
    out.append(
      f"{run.name:<30} {params:>13,} {run.steps:>6} {format_duration(est['train_s']):>10} "
      f"{est['cell_s']:>8.1f}s {len(run.cells):>6} {todo:>5}  {state}"
    )
  out += [
    "",
    f"estimated time left: training {format_duration(train_s)}, evaluation "
    f"{format_duration(eval_s)}, total {format_duration(train_s + eval_s)} (rough: from "
    "measurements on a 2-core CPU under load, experiments/kg_embeddings/README.md)",
  ]
  return "\n".join(out)


# ----------------------------------------------------------------------------- models


def model_dir(workdir: str, run: Run) -> epath.Path:
  return epath.Path(workdir) / "models" / run.name


def _checkpoint_steps(directory: epath.Path, keep: int) -> list[int]:
  if not (directory / "checkpoints").exists():
    return []
  with checkpoint.read_only(str(directory), keep) as ckpt:
    return ckpt.steps()


def model_state(workdir: str, run: Run) -> str:
  steps = _checkpoint_steps(model_dir(workdir, run), run.config.train.keep_checkpoints)
  if run.steps in steps:
    return "trained"
  return f"resumes at step {steps[-1]}" if steps else "to train"

"""The knowledge-graph grid: plan every cell (validated first), train each model once,
evaluate every cell of it, one record per cell in the results store; rerunning resumes.

    kbit kg --config configs/kg.py --workdir W [--dry_run]         # -> plan_and_run

    W/models/<model>-d<dim>-n<triples>-seed<s>/   its training run (train.py's Orbax
                                                   checkpoints) + train_summary.json
    W/results/<cell id>.json                       one record per finished cell

Axes (config `grid` section, configs/kg.py): models x dims (the size axis) x num_train
(the data axis: nested subsamples of the graph's training triples, 0 = all) x seeds give
the models; each is evaluated at 16 bits (once) and at every k < 16 x data type x block
size, its entity and relation tables quantized (kg/quantize.py). A cell's key is
experiment.cell_key's (graph, model, dim, training triples, steps, seed, quantization,
the evaluation split and protocol), its id the store's hash of it.

Like the LM grid (kbit_jax/grid/driver.py), and for the same reasons: every model's
training config and every cell's QuantSpec is checked before anything trains (a bad
model name, an odd RotatE dim, an unknown data type, a num_train outside the graph ...:
ValueError naming the cell, the key and the allowed values); model directories holding
another run's checkpoints are refused before any work (WorkdirError); a rerun skips the
cells already in W/results and does not touch a model all of whose cells are done; a
model with cells left is restored from its final checkpoint, not retrained (a run cut
short resumes at its newest checkpoint, exactly: kg/train.py); each record is written
atomically as soon as its cell is evaluated, so a `kill -9` loses at most the cell in
flight. The KG grid is its own command rather than a mode of `kbit grid`: its models are
not transformer presets, its data axis is triples not tokens, and its evaluation is
ranking, so sharing the LM planner would put an `if kg:` in each of its files.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
import subprocess
import time
from typing import Any, Callable

import ml_collections
import numpy as np
from etils import epath

from kbit_jax.analysis import results
from kbit_jax.grid import compiles
from kbit_jax.kg import data, experiment, quantize, train
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec
from kbit_jax.train import checkpoint

SECTIONS = ("grid", "data", "model", "train", "eval")
GRID_KEYS = ("models", "dims", "num_train", "seeds", "bits", "dtypes", "blocksizes", "tables")
AXES = GRID_KEYS[:-1]
QUANT_AXES = ("dtypes", "blocksizes")  # unused by the 16-bit cell
SECTION_KEYS = {"data": ("graph_dir",), "model": ("norm", "gamma"), "eval": ("split", "batch_size")}
SUMMARY = "train_summary.json"
# Rough cost model for --dry_run, from experiments/kg_embeddings/README.md's measurements
# on the 2-core development CPU under load (seconds): a training step costs about
# TRAIN_S_PER_STEP_DIM x dim (batch 512 x 64 negatives), one evaluation EVAL_S_PER_SCORE
# per (query x entity x dim) scored, plus a fixed overhead (compiles, filters).
TRAIN_S_PER_STEP_DIM = {"transe": 1.1e-3, "rotate": 1.6e-3}
EVAL_S_PER_SCORE = 8e-9
OVERHEAD_S = {"train": 3.0, "cell": 0.5}


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
    state = _state(workdir, run) if todo else "done"
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


def _state(workdir: str, run: Run) -> str:
  steps = _checkpoint_steps(model_dir(workdir, run), run.config.train.keep_checkpoints)
  if run.steps in steps:
    return "trained"
  return f"resumes at step {steps[-1]}" if steps else "to train"


def check_workdirs(plan: Plan, workdir: str) -> None:
  """WorkdirError, naming the model and the keys, if a model directory holds checkpoints
  of another run (train.RESUME_KEYS differ) or of more steps than the grid asks for."""
  for run in plan.runs:
    directory = model_dir(workdir, run)
    if not (directory / "checkpoints").exists():
      continue
    with checkpoint.read_only(str(directory), run.config.train.keep_checkpoints) as ckpt:
      try:
        train._check_resumable(ckpt, run.config)
      except checkpoint.WorkdirError as e:
        raise checkpoint.WorkdirError(f"kg grid model {run.name}: {e}") from None
      steps = ckpt.steps()
    if steps and steps[-1] > run.steps:
      raise checkpoint.WorkdirError(
        f"kg grid model {run.name}: {directory} holds a training run of {steps[-1]} steps "
        f"but the grid asks for train.steps={run.steps}; use another --workdir"
      )


def _read_summary(directory: epath.Path) -> dict[str, Any]:
  path = directory / SUMMARY
  return json.loads(path.read_text()) if path.exists() else {}


def ensure_trained(
  plan: Plan, run: Run, workdir: str, log: Callable[[str], None]
) -> tuple[train.TrainResult, dict[str, Any]]:
  """Trains `run` (or resumes it from its newest checkpoint, or, when its final step is
  saved, restores it without a step); returns the result and the summary of the run
  that trained it (train_s, the final loss, whether this call trained)."""
  directory = model_dir(workdir, run)
  result = train.train(
    run.config, plan.graph, workdir=str(directory), log=lambda s: log(f"  {run.name}: {s}")
  )
  if result.resumed_from < run.steps:  # trained now (from scratch or resumed)
    losses = {str(k): v for k, v in sorted(result.losses.items())}
    summary = dict(
      steps=run.steps,
      train_s=result.train_s,
      resumed_from=result.resumed_from,
      final_loss=result.losses.get(run.steps),
      losses=losses,
    )
    (directory / SUMMARY).write_text(json.dumps(summary, indent=1))
    return result, dict(summary, trained_now=True)
  return result, dict(_read_summary(directory), trained_now=False)


# ----------------------------------------------------------------------------- run


def run(
  plan: Plan, workdir: str, dry_run: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
  """Prints the plan; unless `dry_run`, trains and evaluates every unfinished cell.
  Returns counts: cells, evaluated (now), trained (models trained or resumed now),
  restored (models loaded from their final checkpoint), skipped (models with no cell
  left), seconds."""
  compiles.start()
  results_dir = epath.Path(workdir) / "results"
  check_workdirs(plan, workdir)
  finished = results.finished_ids(results_dir)
  log(format_plan(plan, workdir, finished))
  log(f"results: {results_dir}")
  todo = {r.name: [c for c in r.cells if c.id not in finished] for r in plan.runs}
  remaining = sum(map(len, todo.values()))
  counts = dict(
    cells=len(plan.cells), todo=remaining, evaluated=0, trained=0, restored=0, skipped=0
  )
  if dry_run:
    return counts
  t_start, c_start, done = (
    time.perf_counter(),
    compiles.compile_count(),
    len(plan.cells) - remaining,
  )
  for r in plan.runs:
    if not todo[r.name]:
      counts["skipped"] += 1
      continue
    log(f"kg: {r.name}: {_state(workdir, r)} ({r.steps} steps) in {model_dir(workdir, r)}")
    result, summary = ensure_trained(plan, r, workdir, log)
    counts["trained" if summary["trained_now"] else "restored"] += 1
    cells = {c.id: c for c in todo[r.name]}
    records = experiment.evaluate_specs(
      r.config,
      plan.graph,
      result,
      [c.spec for c in todo[r.name]],
      plan.split,
      plan.tables,
      plan.config.eval.batch_size,
      log=lambda _: None,
      train_s=summary.get("train_s"),
      train_loss=summary.get("final_loss"),
    )
    c_cell = compiles.compile_count()
    for record in records:
      cell = cells.get(results.cell_id(record["key"]))
      if cell is None:  # the plan's key and the record's must agree, or resuming breaks
        raise RuntimeError(f"record key {record['key']} is no cell of the plan of {r.name}")
      record["time"]["train_reused"] = not summary["trained_now"]
      record["compiles"] = dict(cell=compiles.compile_count() - c_cell)
      record["git_commit"] = git_commit()
      record["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
      results.write(results_dir, record)
      c_cell = compiles.compile_count()
      counts["evaluated"] += 1
      done += 1
      m = record["metrics"]
      elapsed = time.perf_counter() - t_start
      eta = elapsed / counts["evaluated"] * (remaining - counts["evaluated"])
      log(
        f"kg {done}/{len(plan.cells)} {record['name']}: mrr {m['mrr']:.4f} hits@10 "
        f"{m['hits@10']:.4f} unleaked mrr {m.get('unleaked', {}).get('mrr', math.nan):.4f} | "
        f"eval {record['time']['eval_s']:.1f}s | elapsed {format_duration(elapsed)} "
        f"eta ~{format_duration(eta)}"
      )
  counts["seconds"] = time.perf_counter() - t_start
  counts["compiles"] = compiles.compile_count() - c_start
  log(
    f"kg grid done: {len(plan.cells)} cells ({counts['evaluated']} evaluated now, "
    f"{len(plan.cells) - remaining} found finished); models trained {counts['trained']}, "
    f"restored {counts['restored']}, untouched {counts['skipped']}; "
    f"{format_duration(counts['seconds'])}, {counts['compiles']} compiles"
  )
  log(format_results(plan, results_dir))
  return counts


def git_commit() -> str:
  """HEAD of the checkout this module is in ('unknown' outside git); kbit_jax/grid/
  evaluator.py's, not imported from there: that module imports the whole LM stack."""
  try:
    out = subprocess.run(
      ["git", "rev-parse", "HEAD"],
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
      cwd=str(epath.Path(__file__).parent),
    )
    return out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def format_results(plan: Plan, results_dir: epath.Path) -> str:
  """MRR and unleaked MRR of the plan's finished cells: rows (model, triples, dim), k."""
  ids = {c.id for c in plan.cells}
  records = [
    results.read(results_dir / f"{i}{results.SUFFIX}")
    for i in sorted(ids & results.finished_ids(results_dir))
  ]
  if not records:
    return ""
  df = results.frame(records)
  out = []
  for value in ("mrr", "unleaked/mrr"):
    if value in df:
      table = df.pivot_table(
        index=["model", "train_triples", "dim"], columns="bits", values=value, aggfunc="mean"
      )
      out.append(f"{value} (columns: k)\n{table.to_string(float_format=lambda x: f'{x:.4f}')}")
  return "\n\n".join(out)


def plan_and_run(
  config: ml_collections.ConfigDict, workdir: str, dry_run: bool = False
) -> dict[str, Any]:
  """`kbit kg`: the plan with every cell validated, then `run`."""
  return run(make_plan(config), workdir, dry_run)

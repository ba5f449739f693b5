"""The plan as text: its models and their training cost, its cells per block layout, the
imports a pretrained grid reads, the estimated time and the memory per device (what
`kbit grid` prints first)."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from kbit_jax.grid import cost as grid_cost
from kbit_jax.grid import memory as grid_memory
from kbit_jax.grid.plan import OPTIONAL_AXES, Cell, ModelRun, Plan, axis_values

SHOWN_AXES = (
  "sizes",
  "seeds",
  "bits",
  "dtypes",
  "blocksizes",
  "outlier_shares",
  "act_bits",
  "tokens",
  "checkpoints",
)
OPTIONAL_SHOWN = ("methods",)  # shown when not at their default (the default text as before)


def format_duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m{rem % 60:02d}s" if h else f"{rem // 60}m{rem % 60:02d}s"


def _compact(values: Sequence[Any]) -> str:
  return ",".join(str(v) for v in values)


def _layout_rows(run: ModelRun, with_methods: bool = False) -> list[tuple[str, ...]]:
  """Cells per (block layout[, method]) and the quantizer compiles they need: one per
  layout, and one more for its quantile cells (a calibrated method's: one per k and
  distinct kernel shape)."""
  groups: dict[tuple, list[Cell]] = {}
  for cell in run.cells:
    groups.setdefault(cell.layout if cell.spec.quantized else None, []).append(cell)
  shapes = None
  rows = []
  for layout, cells in groups.items():
    ks = sorted({c.spec.bits for c in cells})
    dtypes = list(dict.fromkeys(c.spec.dtype for c in cells))
    method = (cells[0].method,) if with_methods else ()
    if layout is None:
      rows.append(
        (run.name, *(("-",) if with_methods else ()), "16", "-", "-", "-", str(len(cells)), "0")
      )
      continue
    compiles = int(any(d != "quantile" for d in dtypes)) + grid_cost.quantile_compiles(cells)
    if cells[0].method != "rtn":
      if shapes is None:
        shapes = _kernel_shapes(run, cells[0].spec)
      compiles *= shapes
    rows.append(
      (
        run.name,
        *method,
        _compact(ks),
        _compact(dtypes),
        str(layout[0]),
        f"{layout[1]:g}",
        str(len(cells)),
        str(compiles),
      )
    )
  return rows


def _kernel_shapes(run: ModelRun, spec) -> int:
  """Distinct shapes of the kernels `spec` quantizes in `run`'s model."""
  from kbit_jax.quant import bits as quant_bits
  from kbit_jax.quant.spec import is_quantized, named_leaves, unboxed

  names, leaves, _ = named_leaves(quant_bits.preset_shapes(run.architecture))
  return len({tuple(unboxed(x).shape) for n, x in zip(names, leaves) if is_quantized(n, spec)})


def _method_lines(plan: Plan, cost: dict[str, Any]) -> list[str]:
  """The calibration of a grid with gptq / awq cells and what it adds to the estimate."""
  per_model = [(run, cost["per_model"][run.name]["methods"]) for run in plan.models]
  per_model = [(run, m) for run, m in per_model if m["calibrated_cells"]]
  if not per_model:
    return []
  c = plan.calibration
  source = f"text_file={c.text_file}" if c.text_file else f"split={c.split!r}"
  length = c.seq_len or "data.seq_len"
  if c.mode == "sequential":
    when = (
      "sequential mode: PER CELL, block by block on the quantized prefix (L + 1 "
      "calibration passes per cell, included in each cell's estimate)"
    )
  else:
    when = "fast mode: statistics of the float model once per model, reused by every cell"
  out = [
    "",
    f"calibration (gptq, awq): {c.sequences} sequences x {length} tokens of {source} "
    f"(seed {c.seed}), {when}; gptq percdamp={c.percdamp:g} act_order={c.act_order}, "
    f"awq grid={c.awq_grid}",
  ]
  for run, m in per_model:
    methods = ", ".join(f"{k} +{v:.1f}s/cell" for k, v in m["per_cell_s"].items())
    out.append(
      f"  {run.name}: {m['calibrated_cells']} calibrated cells; calibration "
      f"{m['calibration_s']:.1f}s per model; {methods}"
    )
  return out


def _table(header: Sequence[str], rows: list[tuple[str, ...]]) -> list[str]:
  return pd.DataFrame(rows, columns=list(header)).to_string(index=False).split("\n")


def _model_row(run: ModelRun, m: dict[str, Any]) -> tuple[str, ...]:
  """A row of the models table; an imported model has no training columns."""
  train = (
    ("-", "-", "-", "imported")
    if run.pretrained
    else (
      f"{m['train_tokens']:,}",
      f"{run.final_step}",
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
    [(s.name, s.hub_id, s.import_dir, status(s)) for s in sources],
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
    "axes: "
    + " ".join(f"{a}={_compact(axis_values(g, a)) or '-'}" for a in SHOWN_AXES)
    + "".join(
      f" {a}={_compact(axis_values(g, a))}"
      for a in OPTIONAL_SHOWN
      if axis_values(g, a) != OPTIONAL_AXES[a]
    )
    + f" targets={g.targets} (blocksizes 0 = per tensor, tokens - = per_size's steps)",
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
  with_methods = plan.methods != ("rtn",)
  out += _table(
    ("model", *(("method",) if with_methods else ()), "k", "dtypes", "B", "p", "cells")
    + ("quantizer compiles",),
    [r for run in plan.models for r in _layout_rows(run, with_methods)],
  )
  out += _method_lines(plan, cost)
  out += [
    "",
    f"evaluation per cell: {cost['requests']} task requests + perplexity on "
    f"eval.ppl_split={plan.config.eval.ppl_split!r}; tokens above exclude padding",
    f"estimate: matmul peak {cost['peak_flops'] / 1e9:.0f} GFLOP/s (measured here), "
    f"assuming {grid_cost.TRAIN_MFU:.0%} of it in training and {grid_cost.EVAL_MFU:.0%} in "
    f"evaluation, +{grid_cost.MODEL_OVERHEAD_S:g}s per model, +{grid_cost.STEP_OVERHEAD_S:g}s "
    f"per step, +{grid_cost.CELL_OVERHEAD_S:g}s per cell, +{grid_cost.QUANTILE_COMPILE_S:g}s per "
    "quantile compile",
    f"estimated time: training {format_duration(cost['train_s'])}, evaluation "
    f"{format_duration(cost['eval_s'])}, total {format_duration(cost['total_s'])} "
    f"(for all {len(cells)} cells)",
    "",
    grid_memory.plan_memory(plan),
  ]
  return "\n".join(out)

"""The plan as text: its models and their training cost, its cells per block layout, the
imports a pretrained grid reads, and the estimated time (what `kbit grid` prints first)."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from kbit_jax.grid import cost as grid_cost
from kbit_jax.grid.plan import Cell, ModelRun, Plan, axis_values

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
  out += _table(
    ("model", "k", "dtypes", "B", "p", "cells", "quantizer compiles"),
    [r for run in plan.models for r in _layout_rows(run)],
  )
  out += [
    "",
    f"evaluation per cell: {cost['requests']} task requests + perplexity on "
    f"eval.ppl_split={plan.config.eval.ppl_split!r}; tokens above exclude padding",
    f"estimate: matmul peak {cost['peak_flops'] / 1e9:.0f} GFLOP/s (measured here), "
    f"assuming {grid_cost.TRAIN_MFU:.0%} of it in training and {grid_cost.EVAL_MFU:.0%} in "
    f"evaluation, +{grid_cost.MODEL_OVERHEAD_S:g}s per model, +{grid_cost.STEP_OVERHEAD_S:g}s "
    f"per step, +{grid_cost.CELL_OVERHEAD_S:g}s per cell, +{grid_cost.QUANTILE_COMPILE_S:g}s per "
    "quantile cell",
    f"estimated time: training {format_duration(cost['train_s'])}, evaluation "
    f"{format_duration(cost['eval_s'])}, total {format_duration(cost['total_s'])} "
    f"(for all {len(cells)} cells)",
  ]
  return "\n".join(out)

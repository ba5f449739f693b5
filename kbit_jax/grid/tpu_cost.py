"""What a grid would cost on Cloud TPU, from the FLOPs of its dry run.

    kbit grid --config configs/grid.py --workdir W --dry_run     # prints the table last

chip-hours = FLOPs / (peak bf16 FLOP/s per chip x MFU) / 3600 and dollars = chip-hours x
the on-demand price per chip-hour, per TPU type. FLOPs are cost.estimate's: matmul
FLOPs of training (6 per parameter per token, flops.py) and of evaluation (2 per
parameter per scored token, padding excluded) of every cell. The models of a pretrained
grid (configs/grid_pretrained.py) are imported, not trained: no training FLOPs.

Assumptions, stated in the table: the peaks and US on-demand list prices below (as of
PRICES_AS_OF; spot and committed-use prices are lower, other regions differ) and MFU, the
share of the peak reached. This is a lower bound on chip time: it leaves out what does
not scale with FLOPs (compiles, Python and host-side scoring, checkpoint I/O, VM set-up),
which dominates for the tiny CPU presets, and evaluation's padding to bucket lengths.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from kbit_jax.model import flops

# type: (peak dense bf16 FLOP/s per chip, US on-demand $ per chip-hour at PRICES_AS_OF)
TPU_TYPES = {"v5e": (197e12, 1.20), "v5p": (459e12, 4.20), "v6e": (918e12, 2.70)}
PRICES_AS_OF = "2026-11"
MFU = 0.4


def grid_flops(plan: Any, cost: dict[str, Any]) -> dict[str, float]:
  """Training and evaluation FLOPs of every model of `plan` (a grid_plan.Plan; `cost`
  its cost.estimate): {"train": ..., "eval": ...}. Evaluation: forward FLOPs per
  token of the model's architecture x the tokens each cell scores x its cells."""
  train = evaluation = 0.0
  for run in plan.models:
    m = cost["per_model"][run.name]
    per_token = flops.flops_per_token(run.architecture, run.config.data.seq_len, training=False)
    evaluation += per_token * m["eval_tokens_per_cell"] * m["cells"]
    train += m["train_flops"]  # 0 for an imported model (never trained)
  return {"train": train, "eval": evaluation}


def tpu_costs(
  total_flops: float, types: dict[str, tuple[float, float]] | None = None, mfu: float = MFU
) -> list[dict[str, Any]]:
  """Per TPU type: chip-hours and dollars of `total_flops` at `mfu` of the peak."""
  rows = []
  for name, (peak, price) in (TPU_TYPES if types is None else types).items():
    chip_hours = total_flops / (peak * mfu) / 3600
    rows.append(
      dict(type=name, peak=peak, price=price, chip_hours=chip_hours, dollars=chip_hours * price)
    )
  return rows


def format_costs(grid: dict[str, float], mfu: float = MFU) -> str:
  """The table `kbit grid --dry_run` prints: FLOPs, then chip-hours and $ per TPU type."""
  total = grid["train"] + grid["eval"]
  head = (
    f"TPU cost from FLOPs: training {grid['train']:.3g} + evaluation "
    f"{grid['eval']:.3g} = {total:.3g} FLOPs at {mfu:.0%} MFU of the bf16 peak; "
    f"US on-demand list prices of {PRICES_AS_OF} (a lower bound: compiles, host work "
    "and I/O not included)"
  )
  rows = pd.DataFrame(tpu_costs(total, mfu=mfu)).rename(
    columns={
      "type": "TPU",
      "peak": "peak TFLOP/s/chip",
      "price": "$/chip-hour",
      "chip_hours": "chip-hours",
      "dollars": "$",
    }
  )
  table = rows.to_string(
    index=False,
    formatters={
      "peak TFLOP/s/chip": lambda v: f"{v / 1e12:g}",
      "$/chip-hour": "{:.2f}".format,
      "chip-hours": "{:.3g}".format,
      "$": "{:.3g}".format,
    },
  )
  return head + "\n" + table

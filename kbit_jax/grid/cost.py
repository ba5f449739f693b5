"""What a planned grid costs: FLOPs, scored tokens and an estimate of its time here.

    cost = cost.estimate(plan)    # per model and in total; tpu_cost.py prices the FLOPs

The time model: FLOPs at an assumed share of this machine's measured matmul peak, plus
fixed costs (Python, host-side task scoring, compiles), calibrated with the default CPU grid
on 2 shared CPU cores (load ~6; f32, tiny presets, where the fixed costs dominate).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections

from kbit_jax.evals import evaluate, scoring
from kbit_jax.grid.plan import RTN, Cell, Plan
from kbit_jax.model import flops, presets
from kbit_jax.train import data

TRAIN_MFU = 0.3
EVAL_MFU = 0.4
MODEL_OVERHEAD_S = 10.0  # compile the train step, restore, evaluation compiles
STEP_OVERHEAD_S = 0.15
CELL_OVERHEAD_S = 1.0
QUANTILE_COMPILE_S = 1.5  # per compile of `quantile`'s quantizer (quantile_compiles)
# Calibrated methods (grid.methods gptq, awq), measured on the CPU sizes (benchmarks/
# gptq_cost.py and experiments/methods/): the calibration pass's compile, GPTQ's
# sequential column loop per quantized value, AWQ's search per kernel and alpha.
CALIBRATION_OVERHEAD_S = 5.0
GPTQ_S_PER_VALUE = 2e-7
METHOD_KERNEL_S = 0.02  # per kernel and cell: dispatch, the Hessian's factorisation
AWQ_S_PER_ALPHA_KERNEL = 0.004


def quantile_compiles(cells: Sequence[Cell]) -> int:
  """Quantizer compiles the `quantile` cells among `cells` need: one per layout under rtn
  (k is an argument, reference.compile_args), one per (layout, k) under a calibrated
  method (`Cell.layout` holds the method)."""
  return len(
    {(c.layout, None if c.method == RTN else c.spec.bits) for c in cells if c.spec.data_dependent}
  )


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


def _method_cost(plan: Plan, run, seq_len: int, peak_flops: float) -> dict[str, Any]:
  """Seconds the calibrated cells of `run` add: the calibration pass (fast mode: once per
  model; sequential: L + 1 passes per cell) and each method's quantizer per cell."""
  from kbit_jax.config import calibration_section
  from kbit_jax.quant import bits as quant_bits
  from kbit_jax.quant.spec import is_quantized, named_leaves, unboxed

  cells = [c for c in run.cells if c.method != "rtn" and c.spec.quantized]
  out = dict(calibrated_cells=len(cells), calibration_s=0.0, per_cell_s={}, total_s=0.0)
  if not cells:
    return out
  c, p = plan.calibration, run.architecture
  tokens = c.sequences * calibration_section.seq_len(c, run.config.data)
  names, leaves, _ = named_leaves(quant_bits.preset_shapes(p))
  shapes = {n: tuple(unboxed(leaf).shape) for n, leaf in zip(names, leaves)}
  recorded = [s for n, s in shapes.items() if n[-1] == "kernel" and len(s) == 2]
  stats_flops = sum(2 * s[0] ** 2 for s in recorded) * tokens
  one_pass = (flops.flops_per_token(p, seq_len, training=False) * tokens + stats_flops) / (
    peak_flops * EVAL_MFU
  )
  spec = cells[0].spec
  kernels = [s for n, s in shapes.items() if is_quantized(n, spec)]
  values = sum(a * b for a, b in kernels)
  per_cell = {
    "gptq": GPTQ_S_PER_VALUE * values + METHOD_KERNEL_S * len(kernels),
    "awq": AWQ_S_PER_ALPHA_KERNEL * c.awq_grid * len(kernels) + METHOD_KERNEL_S * len(kernels),
  }
  per_cell = {m: s for m, s in per_cell.items() if any(x.method == m for x in cells)}
  if c.mode == "sequential":
    per_cell = {m: s + (p.num_layers + 1) * one_pass for m, s in per_cell.items()}
    out["calibration_s"] = CALIBRATION_OVERHEAD_S
  else:
    out["calibration_s"] = one_pass + CALIBRATION_OVERHEAD_S
  out["per_cell_s"] = per_cell
  out["total_s"] = out["calibration_s"] + sum(per_cell[x.method] for x in cells)
  return out


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
    trained_tokens = run.trained_steps * run.config.train.batch_size * seq_len
    train_flops = flops.flops_per_token(p, seq_len) * trained_tokens
    eval_flops = flops.flops_per_token(p, seq_len, training=False) * (task_tokens + ppl_tokens)
    method = _method_cost(plan, run, seq_len, peak_flops)
    per_model[run.name] = dict(
      params=presets.param_counts(p),
      train_tokens=run.train_tokens,
      train_flops=train_flops,
      train_s=0.0
      if not run.trained_steps  # an import, or a checkpoint of a trunk's run
      else (
        train_flops / (peak_flops * TRAIN_MFU)
        + run.trained_steps * STEP_OVERHEAD_S
        + MODEL_OVERHEAD_S
      ),
      eval_tokens_per_cell=task_tokens + ppl_tokens,
      task_tokens=task_tokens,
      ppl_tokens=ppl_tokens,
      cells=len(run.cells),
      cell_s=eval_flops / (peak_flops * EVAL_MFU)
      + CELL_OVERHEAD_S
      + QUANTILE_COMPILE_S * quantile_compiles(run.cells) / len(run.cells)
      + method["total_s"] / len(run.cells),  # calibrated methods, spread over the cells
      methods=method,
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

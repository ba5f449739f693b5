"""Quantize and evaluate the cells of one model, and make each cell's record.

Compiles do not grow with the number of cells. A model's float parameters are restored
once; each cell's quantized copy comes from one jitted `reference.fake_quant_params` whose
static spec is reduced to the cell's layout (block size, outlier share, centering, double
quantization, targets) while the codebook, padded to 256 codes, is an array argument: one
compile per layout serves every data-free (k, dtype). The data-dependent `quantile` type
estimates its codes from the weights inside the function, with k an array argument too
(`reference.compile_args`), so it also compiles once per layout. The quantized copy
keeps the float parameters' shapes, dtypes and shardings, and the evaluation takes
parameters as jit arguments, so every cell of a model reuses the same evaluation
executables.

Calibrated methods (grid.methods gptq, awq): calibrated.py makes the model's calibration
statistics once (fast mode) and applies the method per cell; their quantizers compile per
(kernel shape, block layout), codebooks again array arguments, so compiles stay bounded by
the model's distinct kernel shapes x layouts, not by cells. The result has the float
parameters' shapes, dtypes and shardings, so the evaluation executables are reused too.
A cell's record then has a `calibration` group and AWQ's unfolded scales in its bits.

Activation quantization (grid.act_bits a < 16): the weights are fake-quantized as above
and the net is built with AQT's dot_general quantizing the inputs of the attn and mlp
matmuls to a bits (`act_quant_net`); one net per a, so compiles grow with the number of
act_bits values, not cells.
"""

from __future__ import annotations

import datetime
import functools
import time
from typing import Any

import jax
import ml_collections

from kbit_jax.analysis import results
from kbit_jax.config import calibration_section, eval_section
from kbit_jax.evals import evaluate
from kbit_jax.grid import along, calibrated, compiles
from kbit_jax.grid import plan as grid_plan
from kbit_jax.model import presets, transformer
from kbit_jax.quant import aqt, reference
from kbit_jax.quant import bits as quant_bits
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec
from kbit_jax.train import data, identity, loop


def act_quant_net(run: grid_plan.ModelRun, act_bits: int):
  """The float net, or for act_bits < 16 the net whose targeted matmuls (attn, mlp: the
  nn.Dense layers) quantize their inputs with AQT's per-token absmax int quantizer to
  act_bits (aqt.make_dot_general_cls); the weights reach it already fake-quantized."""
  if act_bits == UNQUANTIZED_BITS:
    return _net(run)
  targets = tuple(t for t in run.cells[0].spec.targets if t != "embed") or ("attn", "mlp")
  return _net(run, _act_dot_general_cls(act_bits, targets))


def _net(run: grid_plan.ModelRun, dot_general_cls=None) -> transformer.Transformer:
  """loop.make_model's net, with the architecture an import saved for imported runs;
  always unrolled (restore_params unstacks a scan_layers model), so quantization and bit
  accounting see one tree per layer."""
  return loop.make_model(run.config, dot_general_cls, run.architecture, scan_layers=False)


@functools.lru_cache(maxsize=None)
def _act_dot_general_cls(act_bits: int, targets: tuple[str, ...]):
  """One factory per (a, targets): equal nets, so models of one preset share executables."""
  spec = QuantSpec(bits=UNQUANTIZED_BITS, act_bits=act_bits, targets=targets)
  return aqt.make_dot_general_cls(spec)


BITS_FIELDS = ("total_bits", "bits_per_param", "quantized_params", "quantized_bits_per_param")


class CellEvaluator:
  """Quantizes and evaluates the cells of one model; compiles once per layout, and the
  evaluation once per activation bit width (one net per act_bits)."""

  def __init__(
    self,
    run: grid_plan.ModelRun,
    params: Any,
    eval_cfg: ml_collections.ConfigDict,
    calibration_cfg: ml_collections.ConfigDict | None = None,
  ):
    self.run = run
    self.params = params
    self.nets: dict[int, Any] = {}
    self.calibrator = calibrated.Calibrator(
      run, params, calibration_section.with_defaults(calibration_cfg), _net(run)
    )
    self.config = ml_collections.ConfigDict(
      {"data": run.config.data.to_dict(), "eval": eval_cfg.to_dict()}
    )
    self._quantize = jax.jit(
      reference.fake_quant_params,
      static_argnums=1,
      out_shardings=jax.tree.map(lambda x: x.sharding, params),
    )

  def quantized(self, spec: QuantSpec) -> Any:
    if not spec.quantized:
      return self.params
    return jax.block_until_ready(self._quantize(self.params, *reference.compile_args(spec)))

  def quantized_cell(self, cell: grid_plan.Cell) -> tuple[Any, dict[str, Any] | None]:
    """(params, the record's calibration group or None) of a cell under its method."""
    if cell.method == grid_plan.RTN or not cell.spec.quantized:
      return self.quantized(cell.spec), None
    return self.calibrator.quantize(cell)

  def net(self, act_bits: int):
    """The evaluation net for `act_bits` (act_quant_net), built once."""
    if act_bits not in self.nets:
      self.nets[act_bits] = act_quant_net(self.run, act_bits)
    return self.nets[act_bits]

  def evaluate(
    self, params: Any, act_bits: int = UNQUANTIZED_BITS, item_scores: dict | None = None
  ) -> dict[str, Any]:
    return evaluate.evaluate(params, self.net(act_bits), self.config, item_scores)

  def harness(self, params: Any, spec: QuantSpec) -> dict[str, Any]:
    """eval.harness_tasks on this cell's parameters through the lm-evaluation-harness
    bridge (evals/harness/cells.py): metrics "harness/<task>"; {} when unset."""
    if not eval_section.harness_tasks(self.config.eval):
      return {}
    from kbit_jax.evals.harness import cells

    run = self.run
    return cells.cell_metrics(
      params,
      self.net(spec.act_bits),
      data.load_tokenizer(run.config.data.tokenizer),
      self.config.eval,
      spec,
      kind="imported" if run.pretrained else "trained",
      preset=run.architecture,
      import_dir=run.pretrained.import_dir if run.pretrained else "",
    )


def evaluate_cell(
  run: grid_plan.ModelRun,
  cell: grid_plan.Cell,
  evaluator: CellEvaluator,
  train_s: float,
  compiles_start: int,
) -> dict[str, Any]:
  """Quantizes and evaluates one cell; returns its record. A method that fails on this
  cell (e.g. GPTQ's Hessian not positive definite) raises ValueError naming the cell,
  before its record exists."""
  t0, c0 = time.perf_counter(), compiles.compile_count()
  try:
    params, calib = evaluator.quantized_cell(cell)
  except ValueError as e:
    raise ValueError(f"grid cell {cell.name}: {e}") from None
  t1 = time.perf_counter()
  items: dict[str, Any] = {}
  metrics = evaluator.evaluate(params, cell.spec.act_bits, items)
  metrics.update(evaluator.harness(params, cell.spec))
  t2 = time.perf_counter()
  count = dict(cell=compiles.compile_count() - c0, run=compiles.compile_count() - compiles_start)
  timing = dict(quantize_s=t1 - t0, eval_s=t2 - t1, cell_s=t2 - t0, train_s=train_s)
  record = make_record(run, cell, metrics, evaluator.params, timing, count, calib)
  return dict(record, items=items)


def make_record(
  run: grid_plan.ModelRun,
  cell: grid_plan.Cell,
  metrics: dict[str, Any],
  params: Any,
  timing: dict[str, float],
  compiles: dict[str, int],
  calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """The cell's record; a calibrated cell's has its `calibration` group (method,
  calib_id, settings, mode, tokens, seconds, whether the statistics were reused) and, for
  AWQ, the unfolded scales' bits in `bits` (`awq_scale_bits`, part of total_bits and of
  both bits per parameter)."""
  counts = presets.param_counts(run.architecture)
  report = quant_bits.bits_report(params, cell.spec)
  extra_bits = calibrated.scale_bits(params, cell, run.architecture)
  bits = {k: report[k] for k in BITS_FIELDS}
  if extra_bits:  # AWQ: the scales are stored with the quantized tensors
    bits["total_bits"] += extra_bits
    bits["bits_per_param"] = bits["total_bits"] / report["params"]
    bits["quantized_bits_per_param"] += extra_bits / report["quantized_params"]
  if cell.method == "awq":
    bits["awq_scale_bits"] = extra_bits
  extra = {} if calibration is None else {"calibration": calibration}
  return dict(
    key=cell.key_dict,
    model=dict(
      params=counts["total"],
      non_embedding_params=counts["non_embedding"],
      embedding_params=counts["embedding"],
      seq_len=run.config.data.seq_len,
      tokenizer_add_bos=bool(data.load_tokenizer(run.config.data.tokenizer).add_bos),
      **_model_source(run),
    ),
    bits=bits,
    metrics=metrics,
    time=timing,
    compiles=compiles,
    name=cell.name,
    process=jax.process_index(),
    git_commit=results.git_commit(),
    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    **extra,
  )


def _model_source(run: grid_plan.ModelRun) -> dict[str, Any]:
  """A record's training setup, or for an imported model where it came from."""
  if run.pretrained:
    s = run.pretrained
    out = dict(import_dir=s.import_dir, family=s.family, imported_preset=s.table_preset)
    return dict(out, revision=s.revision, run=s.size) if s.revision else out
  t = run.config.train
  out = dict(
    train_steps=t.steps,
    train_batch_size=t.batch_size,
    train_lr=t.lr,
    train_config=identity.identity(run.config),  # its hash is the key's train_id
  )
  if run.trunk is None and t.schedule == "cosine":
    return out  # a run of its own: the records of grids without the checkpoints axis
  non_embedding = presets.param_counts(run.architecture)["non_embedding"]
  return dict(out, **along.record_fields(run, non_embedding))


def headline(metrics: dict[str, Any]) -> str:
  parts = []
  if "mean" in metrics:
    parts.append(f"acc {metrics['mean']['acc']:.3f}")
  if "probe/summary" in metrics:
    parts.append(f"probe bits {metrics['probe/summary']['bits']:.2f}")
  parts += [f"ppl {v['perplexity']:.2f}" for k, v in metrics.items() if k.startswith("ppl/")]
  return " ".join(parts)

"""A model's calibrated cells (grid.methods gptq, awq): calibration tokens, statistics made
once per model and reused, the method applied per cell, and what its record says.

    calibrator = Calibrator(run, params, plan.calibration)    # per model, in evaluator.py
    params_q, info = calibrator.quantize(cell)                 # info -> record "calibration"

Tokens: `calibration.sequences` windows of seq_len tokens drawn (seeded, without
replacement, none overlapping) from the calibration split of the model's data source or
from `calibration.text_file` (read as one document between two eos, as eval.text_file),
tokenized with the model's own tokenizer (an import's for a pretrained grid); batched
(sequences / batch_size, batch_size, seq_len).

Fast mode: `calibration.calibrate` of the float model, once per model on its first
calibrated cell; every later cell of the model (gptq and awq, every k, data type, block
size) reuses it (`calls` counts the computations; the record says `reused`). Sequential
mode: `methods.quantize_sequential` per cell (its statistics depend on the cell's
quantized prefix), L + 1 calibration passes per cell.

Where it runs: the float parameters are on the evaluation mesh (models.restore_params),
so the calibration pass is sharded as the evaluation's forward pass, the tokens
replicated, and each kernel's K x K statistics are laid out by `calibration.row_sharded`: split
along their rows over the mesh's devices when K divides (memory per device: 1/devices of
all kernels' Hessians, 4 (5 D^2 + F^2) bytes per layer in all), else replicated. GPTQ
then runs per kernel with its jitted loop under those shardings (XLA gathers what a
column step needs); AWQ's search likewise. Nothing here is CPU-specific.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import NamedSharding

from kbit_jax.config import calibration_section
from kbit_jax.grid import plan as grid_plan
from kbit_jax.quant import awq, calibration, methods
from kbit_jax.train import data


def calibration_tokens(
  section: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict
) -> np.ndarray:
  """(batches, batch_size, seq_len) int32 tokens (see the module docstring); raises
  ValueError (calibration.sequences, the source's size) if the source is too small."""
  length = calibration_section.seq_len(section, data_cfg)
  if section.text_file:
    tokenizer = data.load_tokenizer(data_cfg.tokenizer)
    eos = [tokenizer.eos_id]
    text = epath.Path(section.text_file).read_text()
    stream = np.array(eos + tokenizer.encode(text) + eos, np.int32)
    where = f"calibration.text_file={section.text_file!r}"
  else:
    stream = data.token_stream(data_cfg, section.split)
    where = f"split {section.split!r}"
  calibration_section.check_windows(section, len(stream), data_cfg, where)
  windows = len(stream) // length
  rng = np.random.default_rng(section.seed)
  starts = np.sort(rng.choice(windows, size=section.sequences, replace=False)) * length
  tokens = stream[starts[:, None] + np.arange(length)[None, :]]
  batch = min(section.batch_size, section.sequences)
  return tokens.reshape(section.sequences // batch, batch, length).astype(np.int32)


def statistics_sharding(params: Any) -> Any:
  """The mesh the float parameters live on, where the statistics are laid out
  (calibration.row_sharded); None on one device or without NamedShardings."""
  for leaf in jax.tree.leaves(params):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
      return sharding.mesh
  return None


class Calibrator:
  """The calibrated methods of one model (see the module docstring)."""

  def __init__(
    self, run: grid_plan.ModelRun, params: Any, section: ml_collections.ConfigDict, net: Any
  ):
    self.run = run
    self.params = params
    self.section = section
    self.net = net  # the float Transformer (unrolled, no dot_general_cls)
    self.calls = 0  # statistics computed (fast mode: at most once per model)
    self._tokens: np.ndarray | None = None
    self._stats: calibration.Calibration | None = None
    self._stats_s = 0.0

  def tokens(self) -> np.ndarray:
    if self._tokens is None:
      self._tokens = calibration_tokens(self.section, self.run.config.data)
    return self._tokens

  def statistics(self) -> tuple[calibration.Calibration, bool, float]:
    """(fast-mode statistics, whether reused, seconds they took when computed)."""
    if self._stats is not None:
      return self._stats, True, self._stats_s
    tokens = self.tokens()
    t0 = time.perf_counter()
    stats = calibration.calibrate(
      self.net, self.params, tokens, out_sharding=statistics_sharding(self.params)
    )
    jax.block_until_ready(stats.kernels)
    self.calls += 1
    self._stats, self._stats_s = stats, time.perf_counter() - t0
    return stats, False, self._stats_s

  def _options(self, method: str) -> dict[str, Any]:
    s = self.section
    return dict(percdamp=s.percdamp, act_order=s.act_order, grid=s.awq_grid)

  def quantize(self, cell: grid_plan.Cell) -> tuple[Any, dict[str, Any]]:
    """(quantized params, the record's `calibration` group) of a calibrated cell."""
    spec, method = cell.spec, cell.method
    info = dict(
      method=method,
      calib_id=cell.key_dict["calib_id"],
      settings=calibration_section.settings(self.section, self.run.config.data, method),
    )
    if self.section.mode == "sequential":
      tokens = self.tokens()
      t0 = time.perf_counter()
      params, stats = methods.quantize_sequential(
        self.net, self.params, spec, method, tokens, **self._options(method)
      )
      self.calls += 1
      info.update(reused=False, calibrate_s=time.perf_counter() - t0)
    else:
      stats, reused, seconds = self.statistics()
      params = methods.quantize_params(
        self.params, spec, method, stats, preset=self.run.architecture, **self._options(method)
      )
      info.update(reused=reused, calibrate_s=0.0 if reused else seconds)
    info.update(mode=stats.mode, sequences=stats.sequences, tokens=stats.tokens)
    return jax.block_until_ready(params), info


def scale_bits(params: Any, cell: grid_plan.Cell, preset: Any) -> int:
  """Extra storage of a cell beyond RTN's layout: AWQ's scales that do not fold."""
  if cell.method != "awq" or not cell.spec.quantized:
    return 0
  return int(awq.scale_bits(params, cell.spec, preset)["total_bits"])

"""The grid's method axis checked before any cell exists: `grid.methods` against
quant/methods.py's methods, the `calibration` section (kbit_jax/config/
calibration_section.py) and, where that is cheap here, whether its source holds enough
calibration windows for every model. plan.py's make_plan calls both.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from kbit_jax.config import calibration_section
from kbit_jax.quant import methods as quant_methods


def check_methods(
  config: ml_collections.ConfigDict, grid: dict[str, tuple]
) -> tuple[tuple[str, ...], ml_collections.ConfigDict]:
  """grid.methods and the calibration section, checked: (methods, calibration)."""
  methods = grid["methods"]
  if not methods:
    raise ValueError(
      f"grid.methods=() is empty; allowed: a tuple of {list(quant_methods.METHODS)}, "
      "default ('rtn',)"
    )
  bad = [m for m in methods if m not in quant_methods.METHODS]
  if bad:
    raise ValueError(
      f"grid.methods={config.grid.methods!r}: {bad[0]!r} is unknown; allowed: "
      f"{list(quant_methods.METHODS)}"
    )
  calibrated = any(m in quant_methods.CALIBRATED for m in methods)
  try:
    calib = calibration_section.with_defaults(config.get("calibration"))
    calibration_section.validate(calib, config.base.data, config.eval, calibrated)
  except ValueError as e:
    raise ValueError(f"grid calibration section: {e}") from None
  return methods, calib


def check_calibration_windows(
  calib: ml_collections.ConfigDict, models: list[Any], methods: tuple[str, ...]
) -> None:
  """Enough calibration windows in the source, where that is cheap to know here (the
  embedded corpus with the embedded tokenizer); imports and files are checked when the
  model's calibration starts (grid/calibrated.py), before anything is compiled."""
  if not any(m in quant_methods.CALIBRATED for m in methods):
    return
  from kbit_jax.train import data

  checked = set()
  for run in models:
    d, arch = run.config.data, run.architecture
    length = calibration_section.seq_len(calib, d)
    if arch.positions == "learned" and length > arch.max_len:
      raise ValueError(
        f"grid calibration section: calibration.seq_len={length} exceeds "
        f"{run.name}'s learned positions (max_len={arch.max_len}); allowed: <= {arch.max_len}"
      )
    if calib.text_file or d.source != "embedded" or d.tokenizer != "embedded":
      continue
    if length not in checked:  # one stream (source, tokenizer) for these models
      checked.add(length)
      stream = data.token_stream(d, calib.split)
      calibration_section.check_windows(calib, len(stream), d, f"split {calib.split!r}")

"""A grid cell's identity: the key its record is stored and found under (analysis/results.py).

A key names the model (preset, seed, training tokens and `train_id`, a hash of the whole
training identity: train/identity.py; an import's hub id and revision instead), the
resolved quantization (float exponent bits included), the method and calibration of a
calibrated cell, and a fingerprint of the eval section, so rerunning a grid finds its
finished cells, and a changed evaluation, or a model trained with another config, does
not. Keys grow only by optional entries, so the cells of older grids keep theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ml_collections

from kbit_jax.analysis import results
from kbit_jax.config import eval_section
from kbit_jax.grid import along
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec

if TYPE_CHECKING:
  from kbit_jax.grid.plan import ModelRun

RTN = "rtn"


def eval_id(config: ml_collections.ConfigDict) -> str:
  """Fingerprint of the evaluation settings (part of every cell key)."""
  return results.cell_id(eval_section.fingerprint_dict(config.eval))[:8]


def cell_key(
  run: ModelRun, spec: QuantSpec, eval_fingerprint: str, method: str = RTN, calib_id: str = ""
) -> tuple:
  """The cell's identity; act_bits only when < 16, hub_id only for imported models,
  train_id only for trained ones (`legacy_key`: the key without it), bos only when
  scoring prepends one (a hub OPT tokenizer under eval.bos="tokenizer"), and method +
  calib_id only for a calibrated method's quantized cell (rtn keys are as before)."""
  extra = {} if spec.act_bits == UNQUANTIZED_BITS else {"act_bits": spec.act_bits}
  if run.bos:
    extra["bos"] = True
  if run.pretrained:
    extra["hub_id"] = run.pretrained.hub_id
    if run.pretrained.revision:
      extra["revision"] = run.pretrained.revision
  else:
    extra["train_id"] = run.train_id
    extra.update(along.key_extras(run))
  if spec.quantized and method != RTN:
    extra.update(method=method, calib_id=calib_id)
  return tuple(
    dict(
      preset=run.preset,
      seed=run.seed,
      train_tokens=run.train_tokens,
      **spec.key_fields(),
      eval_id=eval_fingerprint,
      **extra,
    ).items()
  )


def legacy_key(key: dict[str, Any]) -> dict[str, Any] | None:
  """A trained cell's key as grids wrote it before keys carried `train_id` (None for an
  imported model's cell, whose key is unchanged)."""
  if "train_id" not in key:
    return None
  return {k: v for k, v in key.items() if k != "train_id"}

"""A trained model's identity: the keys of its training config that change the weights.

    identity.identity(config)             # {"train.lr": 0.003, "data.seq_len": 128, ...}
    identity.train_id(config)             # "3f9a1c2b": 8 hex digits of a hash of it
    identity.differences(saved, config)   # ["train.lr=0.03 but the saved model has 0.003"]

Two runs with equal identities train the same weights (bit-identically on one mesh;
train/loop.py); a run with another identity is another model. `kbit train` refuses to
resume a workdir whose checkpoints have another identity (checkpoint.check_workdir),
and the grid names each model directory and cell key with `train_id`, so a record can
never claim a training config its model was not trained with.

In the identity: the model's preset, compute dtype and parameter layout (scan_layers);
all of `data` (source, tokenizer, seq_len, TFDS names); the schedule and optimizer
(steps, batch size, lr, warmup, decay, train.schedule and a WSD run's decay_fraction,
AdamW's b1/b2/weight decay, clipping) and the seed;
`quant.mode`, and for quantization-aware training every `quant` key. Not in it: what only
observes or paces a run (log/eval/checkpoint intervals, eval batches, keep_checkpoints,
profile_steps), how the same math is executed (mesh, model.remat, model.attention) and
the `eval` section (the grid's evaluation has its own fingerprint).

A key that enters the identity later goes into ADDED_DEFAULTS with its default: at that
value it is left out of the hash, so existing model directories and cell keys keep
their names.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import ml_collections

KEYS = (
  "model.preset",
  "model.dtype",
  "model.scan_layers",
  "data.source",
  "data.tokenizer",
  "data.seq_len",
  "data.tfds_name",
  "data.tfds_data_dir",
  "data.tfds_train_split",
  "data.tfds_eval_split",
  "data.text_key",
  "train.steps",
  "train.batch_size",
  "train.lr",
  "train.warmup_steps",
  "train.min_lr_ratio",
  "train.weight_decay",
  "train.b1",
  "train.b2",
  "train.grad_clip",
  "train.seed",
  "quant.mode",
)
QAT_KEYS = (  # only with quant.mode == "qat": the quantized forward is trained
  "quant.bits",
  "quant.dtype",
  "quant.exponent_bits",
  "quant.blocksize",
  "quant.outlier_share",
  "quant.double_quant",
  "quant.targets",
  "quant.act_bits",
)
WSD_KEYS = ("train.decay_fraction",)  # only with train.schedule == "wsd" (its cool-down)
# Keys added to the identity later: {key: default}. train.schedule came with the training
# length axis (grid.checkpoints): a cosine run's identity and train_id are unchanged.
ADDED_DEFAULTS: dict[str, Any] = {"train.schedule": "cosine"}


def _get(config: Mapping[str, Any], key: str, fallback: Mapping[str, Any] | None) -> Any:
  section, name = key.split(".")
  values = config.get(section) or {}
  if name in values:
    return values[name]
  if fallback is not None:
    return fallback[section][name]
  raise KeyError(key)


def identity(
  config: ml_collections.ConfigDict | Mapping[str, Any], fallback: Mapping[str, Any] | None = None
) -> dict[str, Any]:
  """{"section.key": value} of every identity key of `config` (a ConfigDict or the dict a
  checkpoint saved); keys `config` lacks come from `fallback` (e.g. the defaults, for a
  checkpoint saved before the key existed)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  keys = KEYS + (QAT_KEYS if _get(config, "quant.mode", fallback) == "qat" else ())
  if (config.get("train") or {}).get("schedule", "cosine") == "wsd":
    keys += WSD_KEYS
  out = {k: _get(config, k, fallback) for k in keys}
  for key, default in ADDED_DEFAULTS.items():
    value = _get(config, key, {key.split(".")[0]: {key.split(".")[1]: default}})
    if value != default:
      out[key] = value
  return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def train_id(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
  """8 hex digits of a hash of `identity(config)` (independent of key order)."""
  text = json.dumps(identity(config), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def differences(
  saved: Mapping[str, Any],
  config: ml_collections.ConfigDict,
  fallback: Mapping[str, Any] | None = None,
  ignore: tuple[str, ...] = (),
) -> list[str]:
  """`key=<now> but the saved model has <was>` for each identity key but `ignore`'s that
  differs between the `saved` config (a dict; missing keys from `fallback`) and `config`."""
  was, now = identity(saved, fallback), identity(config)
  order = {k: i for i, k in enumerate(KEYS + QAT_KEYS + WSD_KEYS + tuple(ADDED_DEFAULTS))}
  return [
    f"{k}={now.get(k)!r} but the saved model has {was.get(k)!r}"
    for k in sorted(set(was) | set(now), key=order.__getitem__)
    if was.get(k) != now.get(k) and k not in ignore
  ]

"""The `calibration` section of a grid config: the data GPTQ and AWQ calibrate on and their
settings, its checks, and the fingerprint that identifies it in a calibrated cell's key.

    calibration = calibration_section.with_defaults(config.get("calibration"))
    calibration_section.validate(calibration, data_cfg, eval_cfg, methods)
    calibration_section.fingerprint(calibration, data_cfg, method)  # 8 hex digits

A grid-level section beside `grid`, `base`, `per_size` and `eval` (not `base.quant`): like
the evaluation it is the same for every model of a grid, it matters only to the
calibrated methods of `grid.methods` (kbit_jax/quant/methods.py), and a training run never
reads it. A grid config without the section reads DEFAULTS.

Keys (DEFAULTS):
  split       a split of the models' data source (base.data): the embedded corpus'
              train / validation / test, or with data.source='tfds' 'train' and
              'validation' (the configured splits) or any TFDS split string
  text_file   '' or a local UTF-8 text file to calibrate on instead of `split`
  sequences   calibration sequences (windows of seq_len tokens, no two overlapping)
  seq_len     tokens per sequence; 0 = data.seq_len
  batch_size  sequences per forward pass (at most `sequences`, which it must divide)
  seed        which windows: a seeded draw without replacement from the stream's windows
  mode        fast (statistics of the float model, once per model, reused by every cell)
              or sequential (block i on the outputs of the quantized blocks < i: per cell)
  percdamp    GPTQ's dampening, a share of mean(diag H) (> 0)
  act_order   GPTQ's feature order: descending diag H
  awq_grid    AWQ's number of alphas j / awq_grid

Calibration tokens never come from what the evaluation scores: `validate` refuses a split
equal to eval.ppl_split (for TFDS: the same split before any '[...]' slice), the test
split of the embedded corpus when built-in tasks or probes (made from it) are evaluated,
and a text_file that is eval.text_file.

Cell identity (grid/plan.py): a calibrated cell's key gains `method` and `calib_id` =
`fingerprint(...)` of the settings its method reads: the data keys (text_file by path and
content hash, seq_len resolved), mode, and percdamp + act_order for gptq, awq_grid for awq.
So changing percdamp re-runs the gptq cells only, changing the data re-runs gptq and awq
cells, and rtn cells (whose keys have neither field) never.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import ml_collections
from etils import epath

from kbit_jax.evals import builtin_tasks, probes, tasks
from kbit_jax.train import data

DEFAULTS = dict(
  split="train",
  text_file="",
  sequences=32,
  seq_len=0,
  batch_size=8,
  seed=0,
  mode="fast",
  percdamp=0.01,
  act_order=False,
  awq_grid=20,
)
MODES = ("fast", "sequential")
DATA_KEYS = ("split", "text_file", "sequences", "seq_len", "batch_size", "seed", "mode")
METHOD_KEYS = {"gptq": ("percdamp", "act_order"), "awq": ("awq_grid",)}


def _fail(key: str, value: Any, allowed: str) -> None:
  raise ValueError(f"calibration.{key}={value!r} is not allowed; allowed: {allowed}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def with_defaults(section: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """The section with every missing key at its default; an unknown key is an error."""
  given = {} if section is None else section.to_dict()
  unknown = sorted(set(given) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"calibration.{unknown[0]} is unknown; allowed: {list(DEFAULTS)}")
  return ml_collections.ConfigDict({**DEFAULTS, **given})


def _base_split(split: str) -> str:
  return split.split("[")[0].strip()


def _check_values(c: ml_collections.ConfigDict) -> None:
  if not isinstance(c.split, str) or not c.split.strip():
    _fail("split", c.split, "a split name of the data source, e.g. 'train'")
  if not isinstance(c.text_file, str):
    _fail("text_file", c.text_file, "'' or the path of a local UTF-8 text file")
  if not _is_int(c.sequences) or c.sequences < 1:
    _fail("sequences", c.sequences, "an int >= 1")
  if not _is_int(c.seq_len) or c.seq_len < 0 or c.seq_len == 1:
    _fail("seq_len", c.seq_len, "0 (data.seq_len) or an int >= 2")
  if not _is_int(c.batch_size) or c.batch_size < 1:
    _fail("batch_size", c.batch_size, "an int >= 1")
  if c.sequences % min(c.batch_size, c.sequences):
    _fail(
      "batch_size",
      c.batch_size,
      f"a divisor of calibration.sequences={c.sequences} (or >= it: one batch)",
    )
  if not _is_int(c.seed) or c.seed < 0:
    _fail("seed", c.seed, "an int >= 0")
  if c.mode not in MODES:
    _fail("mode", c.mode, str(list(MODES)))
  if isinstance(c.percdamp, bool) or not isinstance(c.percdamp, (int, float)) or not c.percdamp > 0:
    _fail("percdamp", c.percdamp, "a number > 0 (share of mean(diag H); reference: 0.01)")
  if not isinstance(c.act_order, bool):
    _fail("act_order", c.act_order, "True or False")
  if not _is_int(c.awq_grid) or c.awq_grid < 1:
    _fail("awq_grid", c.awq_grid, "an int >= 1 (alphas j / awq_grid; reference: 20)")


def _uses_builtin_test_split(eval_cfg: ml_collections.ConfigDict) -> list[str]:
  """What the evaluation makes from the embedded corpus' test split."""
  out = []
  if tasks.task_names(eval_cfg) and not eval_cfg.task_dir:
    out.append(f"the built-in tasks (eval.tasks={eval_cfg.tasks!r}, eval.task_dir='')")
  if probes.parse_probes(eval_cfg.get("probes", "")) and not eval_cfg.get("probe_file", ""):
    out.append(f"the built-in probes (eval.probes={eval_cfg.probes!r})")
  return out


def _same_file(a: str, b: str) -> bool:
  try:
    return epath.Path(a).resolve() == epath.Path(b).resolve()
  except (OSError, ValueError):
    return a == b


def validate(
  c: ml_collections.ConfigDict,
  data_cfg: ml_collections.ConfigDict,
  eval_cfg: ml_collections.ConfigDict,
  calibrated: bool = True,
) -> None:
  """Raises ValueError naming the first bad `calibration.*` key. Values are always
  checked; where the tokens come from only when `calibrated` (a calibrated method is in
  the grid). Reads no data (but stats the text file), compiles nothing."""
  _check_values(c)
  if not calibrated:
    return
  if c.text_file:
    if not epath.Path(c.text_file).is_file():
      _fail("text_file", c.text_file, "'' (calibrate on calibration.split) or an existing file")
    if eval_cfg.text_file and _same_file(c.text_file, eval_cfg.text_file):
      raise ValueError(
        f"calibration.text_file={c.text_file!r} is eval.text_file: the evaluation "
        "scores it; allowed: another file, or '' (calibration.split)"
      )
    return
  if data_cfg.source == "embedded" and c.split not in data.SPLITS:
    _fail("split", c.split, f"a split of the embedded corpus {list(data.SPLITS)}")
  split = _base_split(data._source_split(data_cfg, c.split))
  if eval_cfg.ppl_split and split == _base_split(data._source_split(data_cfg, eval_cfg.ppl_split)):
    raise ValueError(
      f"calibration.split={c.split!r} is the split the evaluation scores "
      f"(eval.ppl_split={eval_cfg.ppl_split!r}); allowed: another split, e.g. 'train'"
    )
  if data_cfg.source == "embedded" and c.split == builtin_tasks.BUILTIN_SPLIT:
    users = _uses_builtin_test_split(eval_cfg)
    if users:
      raise ValueError(
        f"calibration.split={c.split!r}: {' and '.join(users)} are made from the "
        f"embedded corpus' {builtin_tasks.BUILTIN_SPLIT!r} split; allowed: another "
        "split, e.g. 'train'"
      )


def seq_len(c: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict) -> int:
  return c.seq_len or data_cfg.seq_len


def _file_digest(path: str) -> str:
  return hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()[:16]


def settings(
  c: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict, method: str
) -> dict[str, Any]:
  """What a `method` cell's calibration is: the data keys (seq_len resolved; a text file
  with its content hash, a split without the text file) and the method's own keys."""
  out: dict[str, Any] = {k: c[k] for k in DATA_KEYS}
  out["seq_len"] = seq_len(c, data_cfg)
  if c.text_file:
    out["text_file"] = str(c.text_file)
    out["text_file_sha256"] = _file_digest(c.text_file)
    del out["split"]
  else:
    del out["text_file"]
  for key in METHOD_KEYS.get(method, ()):
    out[key] = c[key]
  return out


def fingerprint(
  c: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict, method: str
) -> str:
  """8 hex digits of `settings(c, data_cfg, method)`: a calibrated cell's `calib_id`
  (the results store's cell_id hash: sorted JSON, sha256)."""
  text = json.dumps(settings(c, data_cfg, method), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def data_fingerprint(c: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict) -> str:
  """What the statistics of the fast mode depend on (no method keys): their cache key."""
  return fingerprint(c, data_cfg, "")


def check_windows(
  c: ml_collections.ConfigDict, stream_tokens: int, data_cfg: ml_collections.ConfigDict, where: str
) -> None:
  """Raises if a stream of `stream_tokens` holds fewer than `sequences` windows."""
  length = seq_len(c, data_cfg)
  windows = stream_tokens // length
  if windows < c.sequences:
    raise ValueError(
      f"calibration.sequences={c.sequences} of seq_len {length}: {where} holds "
      f"{stream_tokens:,} tokens, {windows} such windows; allowed: calibration.sequences "
      f"<= {windows}, a shorter calibration.seq_len, or a larger source"
    )


def sources(c: ml_collections.ConfigDict) -> Sequence[str]:
  """Where the calibration tokens come from, for the plan's text."""
  return [f"text_file={c.text_file}"] if c.text_file else [f"split={c.split}"]

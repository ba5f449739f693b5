"""The `eval` config section: its keys, their checks and the fingerprint that identifies an
evaluation in a grid cell's key.

Keys added after grids had stored results have defaults (EVAL_DEFAULTS): a section without
one reads the default, and `fingerprint_dict` leaves a key at its default out of the
fingerprint, so adding them changed no existing cell key.

`eval.bos` ("tokenizer": BOS before each context when the tokenizer's own setting says
so, as lm-evaluation-harness since its PR #3347; "none": never, as harness <= 0.4.9) is
never in the fingerprint: what it does to a cell is in the cell's key instead (`bos`:
true when a BOS was prepended, grid/plan.py), so models whose tokenizers add none (the
trained models, GPT-2, Pythia, BLOOM) keep their keys under either value.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from etils import epath

from kbit_jax.evals import probes, tasks
from kbit_jax.train import data

EVAL_KEYS = (
  "tasks",
  "task_dir",
  "items_per_task",
  "task_seed",
  "batch_size",
  "max_len",
  "ppl_split",
  "ppl_max_batches",
  "text_file",
  "probes",
  "probe_items",
  "probe_file",
  "probe_threshold",
  "bos",
  "harness_tasks",
  "harness_include_path",
)


# Keys added after grids had stored results: a section without one reads this default,
# and `fingerprint_dict` leaves a key at its default out of the cells' eval fingerprint,
# so adding them changed no existing cell key.
EVAL_DEFAULTS = {
  "probes": "",
  "probe_items": 64,
  "probe_file": "",
  "probe_threshold": 0.5,
  "bos": "tokenizer",
  "harness_tasks": "",
  "harness_include_path": "",
}
NOT_FINGERPRINTED = ("bos",)  # in the cell key instead (module docstring)


def harness_tasks(eval_cfg: ml_collections.ConfigDict) -> list[str]:
  """eval.harness_tasks as a list (lm-evaluation-harness task names or YAML paths)."""
  return [t.strip() for t in with_defaults(eval_cfg).harness_tasks.split(",") if t.strip()]


def harness_include_path(eval_cfg: ml_collections.ConfigDict) -> list[str]:
  """eval.harness_include_path as a list of task YAML folders."""
  value = with_defaults(eval_cfg).harness_include_path
  return [p.strip() for p in value.split(",") if p.strip()]


def _int_at_least(eval_cfg: ml_collections.ConfigDict, key: str, low: int) -> None:
  value = eval_cfg[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"eval.{key}={value!r} must be an int >= {low}")


def with_defaults(eval_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `eval_cfg` with every missing EVAL_DEFAULTS key at its default."""
  out = ml_collections.ConfigDict(eval_cfg.to_dict())
  for key, value in EVAL_DEFAULTS.items():
    if key not in out:
      out[key] = value
  return out


def fingerprint_dict(eval_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The eval settings that identify an evaluation: EVAL_DEFAULTS keys at their default
  are left out (a section written before they existed has the same fingerprint)."""
  return {
    k: v
    for k, v in eval_cfg.to_dict().items()
    if not (k in EVAL_DEFAULTS and v == EVAL_DEFAULTS[k]) and k not in NOT_FINGERPRINTED
  }


def _validate_harness(eval_cfg: ml_collections.ConfigDict) -> None:
  """eval.harness_tasks / harness_include_path: strings, folders that exist. The task
  names are checked against lm_eval's index by the grid's plan (evals/harness/cells.py),
  which needs lm_eval; this module must not import it."""
  for key in ("harness_tasks", "harness_include_path"):
    if not isinstance(eval_cfg[key], str):
      raise ValueError(f"eval.{key}={eval_cfg[key]!r} must be a comma-separated string")
  names = harness_tasks(eval_cfg)
  if len(set(names)) != len(names):
    raise ValueError(f"eval.harness_tasks={eval_cfg.harness_tasks!r} names a task twice")
  for path in harness_include_path(eval_cfg):
    if not epath.Path(path).is_dir():
      raise ValueError(
        f"eval.harness_include_path: {path!r} is not a directory; allowed: folders of "
        "task YAMLs (e.g. written by python -m kbit_jax.evals.harness.offline)"
      )


def _validate_probes(eval_cfg: ml_collections.ConfigDict) -> None:
  """eval.probes, probe_items, probe_threshold; a probe file is read in full, so a bad
  record is reported (file:line) before anything is compiled."""
  ks = probes.parse_probes(eval_cfg.probes)
  if ks:
    _int_at_least(eval_cfg, "probe_items", 1)
  threshold = eval_cfg.probe_threshold
  if (
    isinstance(threshold, bool)
    or not isinstance(threshold, (int, float))
    or not (0 <= threshold < 1)
  ):
    raise ValueError(f"eval.probe_threshold={threshold!r} must be a number in [0, 1)")
  if eval_cfg.probe_file:
    probes.load_file(eval_cfg.probe_file)


def validate(
  eval_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict | None = None
) -> None:
  """Raises ValueError naming the first bad `eval.*` key. Reads no task file's records
  (but the whole probe file), compiles nothing; checks that every file named exists."""
  missing = [k for k in EVAL_KEYS if k not in eval_cfg and k not in EVAL_DEFAULTS]
  if missing:
    raise ValueError(f"eval.{missing[0]} is missing; the eval section needs {list(EVAL_KEYS)}")
  names = tasks.task_names(eval_cfg)
  for name in names:
    if name not in tasks.TASKS:
      raise ValueError(f"eval.tasks: task {name!r} is unknown; allowed: {list(tasks.TASKS)}")
  if len(set(names)) != len(names):
    raise ValueError(f"eval.tasks={eval_cfg.tasks!r} names a task twice")
  for key, low in (
    ("items_per_task", 0 if eval_cfg.task_dir else 1),
    ("task_seed", 0),
    ("batch_size", 1),
    ("max_len", 0),
    ("ppl_max_batches", 0),
  ):
    _int_at_least(eval_cfg, key, low)
  if 0 < eval_cfg.max_len < 2:
    raise ValueError(f"eval.max_len={eval_cfg.max_len} must be 0 (the model's max_len) or >= 2")
  if eval_cfg.task_dir and names:
    if not epath.Path(eval_cfg.task_dir).is_dir():
      raise ValueError(
        f"eval.task_dir={eval_cfg.task_dir!r} is not a directory; allowed: "
        "'' (built-in tasks) or a folder holding the released task files"
      )
    for name in names:
      for path in tasks.task_paths(name, eval_cfg.task_dir):
        if not path.exists():
          raise ValueError(
            f"eval.task_dir: {name}'s file {path} does not exist (expected "
            f"the official {tasks.TASK_FILES[name]})"
          )
  if eval_cfg.text_file and not epath.Path(eval_cfg.text_file).exists():
    raise ValueError(f"eval.text_file={eval_cfg.text_file!r} does not exist")
  _validate_probes(with_defaults(eval_cfg))
  bos = with_defaults(eval_cfg).bos
  if bos not in ("tokenizer", "none"):
    raise ValueError(
      f"eval.bos={bos!r} is unknown; allowed: 'tokenizer' (BOS as the tokenizer "
      "sets it, lm-evaluation-harness since its PR #3347) or 'none' (harness <= 0.4.9)"
    )
  _validate_harness(with_defaults(eval_cfg))
  if data_cfg is not None and data_cfg.source == "embedded" and eval_cfg.ppl_split:
    if eval_cfg.ppl_split not in data.SPLITS:
      raise ValueError(
        f"eval.ppl_split={eval_cfg.ppl_split!r} is unknown; allowed: "
        f"{list(data.SPLITS)} or '' (no perplexity)"
      )

"""The results store: one JSON record per evaluated grid cell, loaded as one DataFrame.

    results.write(results_dir, record)        # atomic; the file name is the cell's id
    df = results.load(results_dir)            # pandas.DataFrame, one row per cell

A record is a dict with a `key` (what identifies the cell: model, training tokens, the
quantization and a fingerprint of the evaluation settings) and whatever was measured.
Its file is `<cell_id(key)>.json`, `cell_id` a hash of the key, so two records of one
cell cannot coexist: rewriting a cell replaces its file. Each write goes to a hidden
temporary file in the same directory that is then renamed: a reader, or a rerun after a
`kill -9`, sees either the whole record or none. Paths go through etils.epath, so
`results_dir` may be local or `gs://...`.

Listing the finished cells (`finished_ids`) reads every record: one that does not read
back whole (truncated, empty, not JSON, no key), whose id is not the hash of its key, or
whose file name is not its id (a stray or copied file) does not count; with
`move_bad=True` (the grid) it is moved to `unreadable/` with a warning, so the grid redoes
its cell. `load_records` (the analysis) refuses such a file, naming it.

`load` flattens nested dicts into columns joined by "/" (`frame`): the fields of the groups
`key`, `model`, `bits` and `metrics` become bare columns (`preset`, `bits`, `dtype`,
`params`, `total_bits`, `mean/acc`, `lambada/acc_stderr`, `ppl/validation/perplexity`,
...), other groups keep their name (`time/eval_s`, `compiles/cell`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import pathlib
import subprocess
import time
import uuid
from typing import Any, Sequence

import pandas as pd
from etils import epath

SUFFIX = ".json"
TMP_PREFIX = ".tmp-"
UNREADABLE_DIR = "unreadable"  # records that did not read back, moved aside
LEGACY_DIR = "legacy"  # grid records of keys without train_id (grid/driver.py)
BARE_GROUPS = ("key", "model", "bits", "metrics")  # flattened without a prefix in `load`


def cell_id(key: dict[str, Any]) -> str:
  """A stable 16-hex-digit id of a cell key (independent of dict order)."""
  text = json.dumps(key, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def record_path(results_dir: str | epath.Path, key: dict[str, Any]) -> epath.Path:
  return epath.Path(results_dir) / f"{cell_id(key)}{SUFFIX}"


def _record_files(directory: epath.Path) -> list[epath.Path]:
  """The record files of `directory` (temporary files of unfinished writes excluded)."""
  return sorted(
    (
      p
      for p in directory.iterdir()
      if p.name.endswith(SUFFIX) and not p.name.startswith(TMP_PREFIX) and p.is_file()
    ),
    key=lambda p: p.name,
  )


def move_aside(results_dir: str | epath.Path, name: str, where: str = UNREADABLE_DIR):
  """Moves record file `<name>.json` to `<where>/<name>-<time>.json`; returns the path."""
  directory = epath.Path(results_dir)
  (directory / where).mkdir(parents=True, exist_ok=True)
  target = directory / where / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}{SUFFIX}"
  n = 1
  while target.exists():
    n += 1
    target = directory / where / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{n}{SUFFIX}"
  (directory / f"{name}{SUFFIX}").replace(target)
  return target


def finished_ids(results_dir: str | epath.Path, move_bad: bool = False) -> set[str]:
  """Ids of the cells with a valid record (`read` succeeds). Each invalid one is named in
  a warning and does not count; `move_bad`: it is moved to `unreadable/` as well."""
  directory = epath.Path(results_dir)
  if not directory.exists():
    return set()
  ids = set()
  for path in _record_files(directory):
    name = path.name[: -len(SUFFIX)]
    try:
      read(path)
    except ValueError as e:
      if move_bad:
        target = move_aside(directory, name)
        print(f"WARNING: {e}; moved to {target}, its cell is redone", flush=True)
      else:
        print(f"WARNING: {e}; not counted as finished", flush=True)
      continue
    ids.add(name)
  return ids


def write(results_dir: str | epath.Path, record: dict[str, Any]) -> epath.Path:
  """Writes `record` atomically as `<cell_id(record['key'])>.json`; returns its path."""
  if "key" not in record:
    raise ValueError(f"a record needs a 'key'; it has {sorted(record)}")
  directory = epath.Path(results_dir)
  directory.mkdir(parents=True, exist_ok=True)
  path = record_path(directory, record["key"])
  tmp = directory / f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
  tmp.write_text(json.dumps({"id": cell_id(record["key"]), **record}, indent=1, sort_keys=True))
  tmp.replace(path)  # os.replace locally; on GCS a server-side copy, whole or absent
  return path


def read(path: str | epath.Path) -> dict[str, Any]:
  """One record; an unreadable or malformed file raises ValueError naming it."""
  path = epath.Path(path)
  redo = "rerun the grid to move it aside and redo that cell"
  try:
    record = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(
      f"results record {path} is unreadable ({type(e).__name__}: {e}); {redo}"
    ) from None
  if not isinstance(record, dict) or not isinstance(record.get("key"), dict):
    raise ValueError(f"results record {path} has no 'key' dict; {redo}")
  if record.get("id") != cell_id(record["key"]):
    raise ValueError(
      f"results record {path}: its id {record.get('id')!r} is not the hash "
      f"of its key ({cell_id(record['key'])}); the file was edited or renamed"
    )
  if path.name != f"{record['id']}{SUFFIX}":
    raise ValueError(
      f"results record {path} is named {path.name} but its cell id is "
      f"{record['id']}; a copied or renamed file ({redo})"
    )
  return record


def load_records(results_dir: str | epath.Path) -> list[dict[str, Any]]:
  """Every record in `results_dir`, in file-name order; an invalid one raises ValueError
  naming it (`read`)."""
  directory = epath.Path(results_dir)
  if not directory.is_dir():
    raise FileNotFoundError(f"results directory {directory} does not exist")
  return [read(p) for p in _record_files(directory)]


def frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
  """`records` as a DataFrame, one row each: nested dicts flattened into columns joined
  by "/" (pandas.json_normalize), BARE_GROUPS' fields without their group's name (a
  field in two of them holds the later group's value). Columns: the bare fields group by
  group, then the other groups by name; within a group in the order the records give."""
  rows, rank = [], {}
  for record in records:
    row = {}
    for i, group in enumerate(BARE_GROUPS):
      fields = record.get(group, {})
      row.update(fields)
      rank.update({f: (0, i) for f in fields if f not in rank})
    for group in sorted(set(record) - set(BARE_GROUPS)):
      row[group] = record[group]
      rank[group] = (1, group)
    rows.append(row)
  df = pd.json_normalize(rows, sep="/")
  return df[sorted(df.columns, key=lambda c: rank[_top_level(c, rank)])]


def _top_level(column: str, names: dict[str, Any]) -> str:
  """The row's name a flattened column comes from (a name may itself hold "/")."""
  while column not in names:
    column = column.rpartition("/")[0]
  return column


def load(results_dir: str | epath.Path) -> pd.DataFrame:
  """All records of `results_dir` as a DataFrame (`frame`), one row per cell."""
  return frame(load_records(results_dir))


def pivot(df: pd.DataFrame, value: str, blocksize: int = 64) -> pd.DataFrame:
  """Rows (preset by size, training tokens when a preset has several, dtype), columns k:
  `value` of the weights-only cells at block size B (mean over training seeds); the
  16-bit baseline is repeated in every dtype's row."""
  if value not in df:
    raise ValueError(f"results have no column {value!r}; allowed: {sorted(df.columns)}")
  if "act_bits" in df:  # weights-only cells (activation-quantized ones lack 16 here)
    df = df[df["act_bits"].isna() | (df["act_bits"] == 16)]
  baseline = df[df["bits"] == 16]
  quantized = df[(df["bits"] != 16) & (df["blocksize"] == blocksize)]
  rows = pd.concat([quantized] + [baseline.assign(dtype=d) for d in quantized["dtype"].unique()])
  budgets = int("train_tokens" in df and df.groupby("preset")["train_tokens"].nunique().max() > 1)
  table = rows.pivot_table(
    index=["params", "preset"] + ["train_tokens"] * budgets + ["dtype"],
    columns="bits",
    values=value,
    aggfunc="mean",
  )
  return table.droplevel("params")


def blocksizes(df: pd.DataFrame) -> list:
  """The block sizes of the weights-only quantized cells: 64, 256, ... then per tensor (0)
  and per channel (-1)."""
  if "blocksize" not in df or "bits" not in df:
    return []
  if "act_bits" in df:
    df = df[df["act_bits"].isna() | (df["act_bits"] == 16)]
  present = df.loc[df["bits"] != 16, "blocksize"].dropna().unique()
  return sorted((int(b) for b in present), key=lambda b: (b <= 0, -b if b <= 0 else b))


def format_tables(
  df: pd.DataFrame,
  blocksize: int | None = None,
  values: tuple[tuple[str, str], ...] = (
    ("mean/acc", "{:.3f}"),
    ("ppl/validation/perplexity", "{:.1f}"),
  ),
) -> str:
  """Text tables of `values`, one per block size B (`blocksize`, or each one the cells
  have: `blocksizes`): rows (size, dtype), columns k."""
  out = []
  for b in [blocksize] if blocksize is not None else blocksizes(df):
    for value, fmt in values:
      if value in df and (df["bits"] != 16).any():
        table = pivot(df, value, b)
        if table.empty:
          continue
        text = table.to_string(
          float_format=lambda x, fmt=fmt: "nan" if math.isnan(x) else fmt.format(x)
        )
        out.append(f"{value} at B={b} (columns: k)\n{text}")
  return "\n\n".join(out)


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
  """HEAD of the checkout this package is in, for a record's provenance ('unknown'
  outside git)."""
  try:
    out = subprocess.run(
      ["git", "rev-parse", "HEAD"],
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
      cwd=pathlib.Path(__file__).parent,
    )
    return out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"

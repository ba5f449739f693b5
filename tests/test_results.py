"""The results store: atomic one-file-per-cell records, duplicate safety, loading."""

import json

import numpy as np
import pandas as pd
import pytest

from kbit_jax.analysis import results


def _key(**overrides):
  key = dict(
    preset="s1",
    seed=0,
    train_tokens=1000,
    bits=4,
    dtype="nf",
    exponent_bits=0,
    blocksize=64,
    outlier_share=0.0,
    targets="attn,mlp",
    double_quant=False,
    eval_id="abc",
  )
  key.update(overrides)
  return key


def _record(acc=0.5, ppl=100.0, **key):
  return dict(
    key=_key(**key),
    model=dict(params=1000, non_embedding_params=200),
    bits=dict(total_bits=4500, bits_per_param=4.5),
    metrics={
      "mean": {"acc": acc, "acc_stderr": 0.1},
      "lambada": {"acc": acc, "acc_stderr": float("nan")},
      "ppl/validation": {"perplexity": ppl},
    },
    time=dict(cell_s=1.0),
    compiles=dict(cell=0),
  )


def test_cell_id_is_stable_and_order_free():
  key = _key()
  assert results.cell_id(key) == results.cell_id(dict(reversed(list(key.items()))))
  assert results.cell_id(key) != results.cell_id(_key(bits=3))
  assert len(results.cell_id(key)) == 16


def test_write_then_load_flattens_groups(tmp_path):
  path = results.write(tmp_path, _record())
  assert path.name == results.cell_id(_key()) + ".json"
  assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
  key = {k: [v] for k, v in sorted(_key().items())}  # a record's file keeps its keys sorted
  expected = pd.DataFrame(
    {
      **key,
      "non_embedding_params": [200],
      "params": [1000],
      "bits_per_param": [4.5],
      "total_bits": [4500],
      "lambada/acc": [0.5],
      "lambada/acc_stderr": [float("nan")],
      "mean/acc": [0.5],
      "mean/acc_stderr": [0.1],
      "ppl/validation/perplexity": [100.0],
      "compiles/cell": [0],
      "id": [results.cell_id(_key())],
      "time/cell_s": [1.0],
    }
  )
  pd.testing.assert_frame_equal(results.load(tmp_path), expected)


def test_frame_columns_of_records_with_different_fields():
  """Bare groups (key, model, bits, metrics) lose their name, others keep it; a field one
  record lacks is NaN there; a field in two bare groups is one column holding the later
  group's value (metrics over model). Columns go by group, whichever record names them
  first: act_bits (key) before seq_len (model) though the first record lacks it."""
  a = dict(key={"preset": "s1"}, model={"seq_len": 64}, metrics={"seq_len": 512}, time={"s": 1})
  b = dict(
    key={"preset": "s2", "act_bits": 8},
    model={"seq_len": 128},
    metrics={"probe/summary": {"bits": 1.5}},
    name="b",
  )
  c = dict(key={"preset": "s3"}, metrics={"seq_len": 256})
  df = results.frame([a, b, c])
  assert list(df.columns) == [
    "preset",
    "act_bits",
    "seq_len",
    "probe/summary/bits",
    "name",
    "time/s",
  ]
  assert df["seq_len"].tolist() == [512, 128, 256]
  assert df["preset"].tolist() == ["s1", "s2", "s3"]
  np.testing.assert_array_equal(df["act_bits"], [np.nan, 8, np.nan])
  np.testing.assert_array_equal(df["probe/summary/bits"], [np.nan, 1.5, np.nan])
  np.testing.assert_array_equal(df["time/s"], [1, np.nan, np.nan])
  assert df["name"].isna().tolist() == [True, False, True]


def test_rewriting_a_cell_replaces_its_record(tmp_path):
  results.write(tmp_path, _record(acc=0.1))
  results.write(tmp_path, _record(acc=0.2))
  results.write(tmp_path, _record(acc=0.3, bits=3))
  df = results.load(tmp_path)
  assert len(df) == 2
  assert df.set_index("bits").loc[4, "mean/acc"] == 0.2
  assert results.finished_ids(tmp_path) == {results.cell_id(_key()), results.cell_id(_key(bits=3))}


def test_unfinished_writes_are_invisible(tmp_path):
  """A `kill -9` mid-write leaves only a hidden temporary file: never a record."""
  results.write(tmp_path, _record())
  (tmp_path / f"{results.TMP_PREFIX}123-{results.cell_id(_key(bits=3))}.json").write_text(
    '{"key": {"bi'
  )
  assert results.finished_ids(tmp_path) == {results.cell_id(_key())}
  assert len(results.load(tmp_path)) == 1


def test_unreadable_record_is_named(tmp_path):
  results.write(tmp_path, _record())
  bad = tmp_path / "0123456789abcdef.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match=f"results record {bad} is unreadable"):
    results.load(tmp_path)
  bad.write_text(json.dumps({"metrics": {}}))
  with pytest.raises(ValueError, match=f"results record {bad} has no 'key'"):
    results.load(tmp_path)
  bad.write_text(json.dumps({"id": "0123456789abcdef", "key": _key(bits=5)}))
  with pytest.raises(ValueError, match="is not the hash of its key"):
    results.load(tmp_path)


def test_missing_directory_and_keyless_record(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    results.load(tmp_path / "nope")
  assert results.finished_ids(tmp_path / "nope") == set()
  with pytest.raises(ValueError, match="a record needs a 'key'"):
    results.write(tmp_path, {"metrics": {}})


def test_pivot_puts_sizes_in_rows_and_k_in_columns(tmp_path):
  for preset, params in (("s1", 1000), ("s2", 3000)):
    for bits, dtype, blocksize in (
      (16, "none", None),
      (4, "nf", 64),
      (3, "nf", 64),
      (4, "int", 64),
      (4, "int", 256),
    ):
      record = _record(
        acc=bits / 100 + params / 1e5, preset=preset, bits=bits, dtype=dtype, blocksize=blocksize
      )
      record["model"]["params"] = params
      results.write(tmp_path, record)
  df = results.load(tmp_path)
  table = results.pivot(df, "mean/acc", blocksize=64)
  acc = {  # acc = bits / 100 + params / 1e5 as written above; int has no k3, B256 not shown
    (preset, dtype): [np.nan if dtype == "int" else 3 / 100 + params / 1e5]
    + [4 / 100 + params / 1e5, 16 / 100 + params / 1e5]
    for preset, params in (("s1", 1000), ("s2", 3000))
    for dtype in ("int", "nf")
  }
  expected = pd.DataFrame(
    list(acc.values()),
    index=pd.MultiIndex.from_tuples(list(acc), names=["preset", "dtype"]),
    columns=pd.Index([3, 4, 16], name="bits"),
  )
  pd.testing.assert_frame_equal(table, expected)
  assert results.format_tables(df) == FORMATTED
  with pytest.raises(ValueError, match="no column 'nope'"):
    results.pivot(df, "nope")


FORMATTED = "\n".join(  # DataFrame.to_string pads the index header with spaces
  [
    "mean/acc at B=64 (columns: k)",
    "bits            3     4     16",
    "preset dtype                  ",
    "s1     int     NaN 0.050 0.170",
    "       nf    0.040 0.050 0.170",
    "s2     int     NaN 0.070 0.190",
    "       nf    0.060 0.070 0.190",
    "",
    "ppl/validation/perplexity at B=64 (columns: k)",
    "bits            3     4     16",
    "preset dtype                  ",
    "s1     int     NaN 100.0 100.0",
    "       nf    100.0 100.0 100.0",
    "s2     int     NaN 100.0 100.0",
    "       nf    100.0 100.0 100.0",
  ]
)

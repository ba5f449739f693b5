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
  df = results.load(tmp_path)
  assert len(df) == 1
  row = df.iloc[0]
  assert (row["preset"], row["bits"], row["dtype"], row["params"]) == ("s1", 4, "nf", 1000)
  assert row["mean/acc"] == 0.5 and row["ppl/validation/perplexity"] == 100.0
  assert np.isnan(row["lambada/acc_stderr"])
  assert row["time/cell_s"] == 1.0 and row["compiles/cell"] == 0
  assert row["id"] == results.cell_id(_key())


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
  assert list(table.columns) == [3, 4, 16]
  assert list(table.index) == [("s1", "int"), ("s1", "nf"), ("s2", "int"), ("s2", "nf")]
  assert table.loc[("s2", "nf"), 16] == pytest.approx(0.16 + 0.03)
  assert np.isnan(table.loc[("s1", "int"), 3])
  text = results.format_tables(df)
  assert "mean/acc at B=64" in text and "ppl/validation/perplexity at B=64" in text
  with pytest.raises(ValueError, match="no column 'nope'"):
    results.pivot(df, "nope")
  assert isinstance(df, pd.DataFrame)


def test_invalid_records_do_not_count_and_the_grid_moves_them_aside(tmp_path, capsys):
  """The issue: finished_ids went by file name, so a truncated, empty or stray
  results/*.json counted as a finished cell. Now each is named, not counted, and with
  move_bad (the grid) moved to unreadable/ so the grid redoes its cell; load_records (the
  analysis) refuses it."""
  good = results.write(tmp_path, _record())
  truncated = results.write(tmp_path, _record(bits=3))
  truncated.write_text(truncated.read_text()[:40])
  empty = tmp_path / f"{results.cell_id(_key(bits=5))}.json"
  empty.write_text("")
  stray = tmp_path / "notes.json"
  stray.write_text(json.dumps({"todo": "rerun s4"}))
  copied = tmp_path / "0123456789abcdef.json"  # a whole record under another name
  copied.write_text(good.read_text())
  with pytest.raises(ValueError, match="is unreadable|has no 'key'|is named"):
    results.load_records(tmp_path)
  assert results.finished_ids(tmp_path) == {good.stem}
  out = capsys.readouterr().out
  assert out.count("not counted as finished") == 4 and str(truncated) in out
  assert results.finished_ids(tmp_path, move_bad=True) == {good.stem}
  assert "its cell is redone" in capsys.readouterr().out
  assert sorted(p.name for p in tmp_path.glob("*.json")) == [good.name]
  moved = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "unreadable").iterdir())
  assert moved == sorted([truncated.stem, empty.stem, "notes", copied.stem])
  assert len(results.load_records(tmp_path)) == 1


def test_closing_tables_follow_the_block_sizes_of_the_cells(tmp_path):
  """The issue: the tables were hard-wired to B = 64 ("Empty DataFrame" otherwise)."""
  for bits, dtype, blocksize in ((16, "none", None), (4, "int", 256), (4, "int", 0)):
    results.write(tmp_path, _record(bits=bits, dtype=dtype, blocksize=blocksize))
  text = results.format_tables(results.load(tmp_path))
  assert "mean/acc at B=256" in text and "mean/acc at B=0" in text
  assert "B=64" not in text and "Empty DataFrame" not in text
  assert text.index("B=256") < text.index("B=0")

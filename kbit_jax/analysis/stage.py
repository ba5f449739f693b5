"""The analysis stage end to end, as `kbit fit` and `kbit report` run it.

    stage.fit(results_dir, out_dir)       # fits and tables (fits.json, *.csv)
    stage.report(results_dir, out_dir)    # the same, plus figures and report.md / .html

Both read the store once (cells.load_store), analyse its weights-only cells
(cells.check_cells, analyse.analyse) and its extra axes (probes, activation bits, training
tokens: extra_axes), and write the tables.

A store of knowledge-graph cells (records with key task = kg_cells.TASK, from `kbit kg`)
goes to kg_stage.py instead: its own fits, figures and report. Telling the two apart
reads the records once more; a store holding both kinds is refused (kg_cells.store_kind
names why), never analysed as one.
"""

from __future__ import annotations

from typing import Any

from etils import epath

from kbit_jax.analysis import analyse, extra_axes, kg_analyse, kg_cells, kg_stage, results, tables
from kbit_jax.analysis import report as report_lib
from kbit_jax.analysis.cells import check_cells, load_cells, load_store


def _analyse(results_dir: str, n_boot: int, level: float, seed: int):
  store = load_store(results_dir)
  checked, issues = check_cells(store)
  a = analyse.analyse(checked, issues, n_boot=n_boot, level=level, seed=seed)
  return a, extra_axes.axes_cells(store)


def _write_tables(a: analyse.Analysis, all_cells, out_dir: str) -> dict[str, Any]:
  return {**tables.write_tables(a, out_dir), **extra_axes.write_tables(all_cells, out_dir)}


def _kg_records(results_dir: str) -> list[dict[str, Any]] | None:
  """The store's records if they are knowledge-graph cells, None for an LM store (or an
  empty one); ValueError for a store mixing both."""
  records = results.load_records(results_dir)
  return records if kg_cells.store_kind(records) == "kg" else None


def check_store(results_dir: str) -> None:
  """What `kbit report` checks before it writes anything (`report` itself writes a report
  saying why there is no analysis): the store exists and its records read back; an LM
  store holds records with the columns the analysis needs (cells.load_cells). Raises
  FileNotFoundError or ValueError naming the store."""
  if _kg_records(results_dir) is None:
    load_cells(results_dir)


def fit(
  results_dir: str, out_dir: str, n_boot: int = 200, level: float = 0.95, seed: int = 0
) -> analyse.Analysis | kg_analyse.KGAnalysis:
  """`kbit fit`: fits every form the store allows; writes the tables, and those of the
  probes, activation bits and N-D axes."""
  if (kg := _kg_records(results_dir)) is not None:
    return kg_stage.fit(kg, results_dir, out_dir, n_boot, level, seed)
  a, all_cells = _analyse(results_dir, n_boot, level, seed)
  paths = _write_tables(a, all_cells, out_dir)
  print(tables.summary(a))
  print(extra_axes.summary(all_cells))
  print(f"scaling: wrote {', '.join(str(p) for p in paths.values())}")
  return a


def report(
  results_dir: str, out_dir: str, n_boot: int = 200, level: float = 0.95, seed: int = 0
) -> dict[str, epath.Path]:
  """`kbit report`: the fits and tables, figures and the report."""
  try:
    if (kg := _kg_records(results_dir)) is not None:
      return kg_stage.report(kg, results_dir, out_dir, n_boot, level, seed)
    a, all_cells = _analyse(results_dir, n_boot, level, seed)
  except (ValueError, FileNotFoundError) as e:
    paths = report_lib.write(None, out_dir, error=str(e))
    print(f"report: no analysis ({e}); wrote {paths['md']}")
    return paths
  _write_tables(a, all_cells, out_dir)
  paths = report_lib.write(a, out_dir, all_cells=all_cells)
  print(tables.summary(a))
  print(f"report: wrote {paths['md']} and {paths['html']}")
  return paths

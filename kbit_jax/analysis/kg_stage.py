"""`kbit fit` and `kbit report` of a knowledge-graph store, end to end.

    kg_stage.fit(records, results_dir, out_dir)      # stage.fit on a KG store: tables
    kg_stage.report(records, results_dir, out_dir)   # stage.report on a KG store: + report

stage.py sends a store here when its records are KG cells (kg_cells.store_kind): the
records -> cells (kg_cells.py) -> analysis (kg_analyse.py) -> tables (kg_tables.py) and,
for `kbit report`, figures and report.md / .html (kg_report.py).
"""

from __future__ import annotations

from typing import Any, Sequence

from etils import epath

from kbit_jax.analysis import kg_analyse, kg_cells, kg_tables, results
from kbit_jax.analysis.kg_analyse import KGAnalysis
from kbit_jax.analysis.kg_report import write_report


def analyse_records(
  records: Sequence[dict[str, Any]], results_dir: str, n_boot: int, level: float, seed: int
) -> KGAnalysis:
  cells = kg_cells.cells_from_store(results.frame(records))
  cells.attrs["results_dir"] = str(results_dir)
  checked, issues = kg_cells.check_cells(cells)
  return kg_analyse.analyse(checked, issues, n_boot=n_boot, level=level, seed=seed)


def fit(
  records: Sequence[dict[str, Any]],
  results_dir: str,
  out_dir: str,
  n_boot: int = 200,
  level: float = 0.95,
  seed: int = 0,
) -> KGAnalysis:
  """`kbit fit` on a KG store: the fits and tables (no figures)."""
  a = analyse_records(records, results_dir, n_boot, level, seed)
  paths = kg_tables.write_tables(a, out_dir)
  print(kg_tables.summary(a))
  print(f"scaling: wrote {', '.join(str(p) for p in paths.values())}")
  return a


def report(
  records: Sequence[dict[str, Any]],
  results_dir: str,
  out_dir: str,
  n_boot: int = 200,
  level: float = 0.95,
  seed: int = 0,
) -> dict[str, epath.Path]:
  """`kbit report` on a KG store: the fits, tables, figures and report.md / .html."""
  try:
    a = analyse_records(records, results_dir, n_boot, level, seed)
  except ValueError as e:
    paths = write_report(None, out_dir, error=str(e))
    print(f"report: no analysis ({e}); wrote {paths['md']}")
    return paths
  kg_tables.write_tables(a, out_dir)
  paths = write_report(a, out_dir)
  print(kg_tables.summary(a))
  print(f"report: wrote {paths['md']} and {paths['html']}")
  return paths

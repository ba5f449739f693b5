"""Figures and report from a synthetic results store: files exist, are valid, and missing
data becomes a note rather than an error."""

import warnings

import pytest

from kbit_jax.analysis import plot_style, plots, report, results, stage, synthetic
from kbit_jax.analysis.analyse import analyse
from kbit_jax.analysis.cells import ScalingWarning, cells_from_store, check_cells
from kbit_jax.analysis.labels import MainMethod, main_method

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = {
  "acc_vs_bits",
  "acc_vs_bits_by_setup",
  "blocksize_dtype_4bit",
  "outliers",
  "ppl_vs_bits",
  "fits",
  "bit_optimal",
  "precision_law",
}


def _analysis(records, n_boot=8):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ScalingWarning)
    cells, issues = check_cells(cells_from_store(results.frame(records)))
  return analyse(cells, issues, n_boot=n_boot)


@pytest.fixture(scope="module")
def full():
  """4 sizes x 2 seeds; int / nf at B in {64, per tensor}; float with 2% outliers."""
  sizes = ("s1", "s2", "s3", "s4")
  records = synthetic.synthetic_records(
    sizes=sizes, bits=(3, 4, 8, 16), dtypes=("int", "nf"), blocksizes=(64, 0), seeds=(0, 1)
  )
  records += synthetic.synthetic_records(
    sizes=sizes, bits=(3, 4), dtypes=("nf",), outlier_shares=(0.02,), seeds=(0, 1), seed=1
  )
  return _analysis(records)


@pytest.fixture(scope="module")
def rendered(full, tmp_path_factory):
  """The full analysis's figures, drawn once for the tests below."""
  out = tmp_path_factory.mktemp("report")
  figures, notes = plots.make_figures(full, str(out / "figures"))
  return out, figures, notes


def _is_png(path):
  data = path.read_bytes()
  return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_every_figure_renders_to_png_and_pdf(rendered):
  _, figures, notes = rendered
  assert {f.name for f in figures} == ALL_FIGURES, notes
  for f in figures:
    assert _is_png(f.png)
    pdf = f.png.with_suffix(".pdf")
    assert pdf.exists() and pdf.read_bytes()[:4] == b"%PDF"


def test_main_method_prefers_small_blocks_and_study_dtypes(full):
  assert main_method(full.cells) == MainMethod("nf B64", "nf", 64.0)
  assert plot_style.k_color(4) == plot_style.K_COLORS[4] != plot_style.k_color(3)


def test_missing_data_is_skipped_with_a_note(tmp_path):
  """One seed, one training setup, no outliers, one block size: those figures are
  skipped and named; the others still render."""
  a = _analysis(
    synthetic.synthetic_records(sizes=("s1", "s2", "s3"), bits=(4, 16), dtypes=("nf",)), n_boot=4
  )
  figures, notes = plots.make_figures(a, str(tmp_path))
  skipped = {n.split()[1] for n in notes}
  assert {"outliers", "by_setup", "blocksize_dtype"} <= skipped
  assert "acc_vs_bits" in {f.name for f in figures}
  assert all(_is_png(f.png) for f in figures)


def test_report_renders_markdown_and_html(full, rendered):
  out, figures, notes = rendered
  paths = report.write(full, str(out), figures=figures, notes=notes)
  md, page = paths["md"].read_text(), paths["html"].read_text()
  for heading in (
    "## Figures",
    "## Bit-optimal precision",
    "## Fitted curves per k",
    "## Precision-aware laws",
    "## Extrapolation",
    "## Provenance",
  ):
    assert heading in md
  assert "![Mean zero-shot accuracy vs total model bits](figures/acc_vs_bits.png)" in md
  assert "<img src='figures/bit_optimal.png'" in page and "<table>" in page
  assert "gamma_post" in md and "k reaching it" in md


def test_report_renders_with_missing_pieces(tmp_path):
  """Two sizes: no fit is possible; the report says why and still shows the data."""
  a = _analysis(synthetic.synthetic_records(sizes=("s1", "s2"), dtypes=("nf",)))
  md = report.write(a, str(tmp_path))["md"].read_text()
  assert "## Skipped fits" in md and "needs >= 3" in md
  assert "figure fits skipped" in md and "acc_vs_bits.png" in md


def test_stage_report_without_records(tmp_path):
  paths = stage.report(str(tmp_path / "missing"), str(tmp_path / "out"))
  assert "No analysis could be made" in paths["md"].read_text()
  assert paths["html"].exists()


def test_stage_report_end_to_end(tmp_path):
  results_dir = str(tmp_path / "results")
  synthetic.write_store(
    results_dir, synthetic.synthetic_records(sizes=("s1", "s2", "s3"), bits=(4, 16), dtypes=("nf",))
  )
  paths = stage.report(results_dir, str(tmp_path / "report"), n_boot=4)
  assert paths["md"].exists() and (tmp_path / "report" / "fits.json").exists()
  assert _is_png(tmp_path / "report" / "figures" / "acc_vs_bits.png")

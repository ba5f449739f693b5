"""One main method for the figures, the extra axes' tables and the report (labels.main_method)."""

import copy
import warnings

import pandas as pd
import pytest

from kbit_jax.analysis import results, stage, synthetic
from kbit_jax.analysis.cells import ScalingWarning, cells_from_store, check_cells, keep_largest
from kbit_jax.analysis.labels import MainMethod, main_method

SIZES = ("s1", "s2", "s3")
SEEDS = (0, 1)
DQ = MainMethod("nf+dq B64", "nf", 64.0)


def _records():
  """nf at B64 twice: plain at k 3, 4 and with double quantization at k 3, 4, 8 (more
  cells), every cell also at 8-bit activations. Choices made apart differ on it: the
  method of nf at B64 with the most cells is nf+dq, while every nf cell at B64 mixes both
  methods, and counting the activation-quantized cells counts them twice."""
  plain = synthetic.synthetic_records(sizes=SIZES, bits=(3, 4, 16), dtypes=("nf",), seeds=SEEDS)
  dq = synthetic.synthetic_records(
    sizes=SIZES, bits=(3, 4, 8), dtypes=("nf",), seeds=SEEDS, seed=1, noise=0.0
  )
  dq = [r for r in dq if r["key"]["bits"] != 16]  # the 16-bit cells are plain's
  for r in dq:
    r["key"]["double_quant"] = True
    r["name"] += " dq"
  activations = []
  for r in plain + dq:
    a = copy.deepcopy(r)
    a["key"]["act_bits"] = 8
    a["name"] += " a8"
    a["metrics"]["ppl/validation"]["nll"] += 0.02
    activations.append(a)
  return plain, dq, plain + dq + activations


def test_cells_pick_the_method_with_most_cells_among_ties_of_dtype_and_block():
  _, _, records = _records()
  cells = cells_from_store(results.frame(records))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ScalingWarning)
    checked, _ = check_cells(cells)
  assert main_method(checked) == DQ
  assert main_method(keep_largest(cells, "eval_id", "evaluation settings", [])) == DQ
  plain = cells[cells["method"] == "nf B64"]
  assert main_method(plain) == MainMethod("nf B64", "nf", 64.0)
  assert main_method(cells[cells["k"] == 16]) is None


def test_figures_axes_tables_and_report_show_the_same_method(tmp_path):
  plain, dq, records = _records()
  results_dir, out = str(tmp_path / "results"), tmp_path / "report"
  synthetic.write_store(results_dir, records)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ScalingWarning)
    stage.report(results_dir, str(out), n_boot=4)
  md = (out / "report.md").read_text()
  # the figures: acc_vs_bits_by_setup's caption names its method
  assert "The main method (nf+dq B64) for each training seed." in md
  assert "The main method (nf B64)" not in md
  # the report: the bit-optimal section of the main method
  assert "### nf+dq B64, by perplexity (D=1M)" in md
  assert "### nf B64, by" not in md
  # the extra axes: the PTQ penalty of exactly the nf+dq cells, nll(k) - nll(16 bits)
  base = {
    (r["key"]["preset"], r["key"]["seed"]): r["metrics"]["ppl/validation"]["nll"]
    for r in plain
    if r["key"]["bits"] == 16
  }
  want = sorted(
    (
      r["key"]["preset"],
      r["key"]["seed"],
      r["key"]["bits"],
      r["metrics"]["ppl/validation"]["nll"] - base[(r["key"]["preset"], r["key"]["seed"])],
    )
    for r in dq
  )
  penalty = pd.read_csv(out / "ptq_penalty.csv")
  got = sorted(zip(penalty["preset"], penalty["seed"], penalty["k"], penalty["penalty"]))
  assert [g[:3] for g in got] == [w[:3] for w in want]
  assert [g[3] for g in got] == pytest.approx([w[3] for w in want], rel=1e-12)
  # ... and the weight x activation bits table: the nf+dq bit widths (plain has no k8)
  acts = pd.read_csv(out / "act_bits_nll.csv")
  assert list(acts.columns) == ["model", "k", "8", "16"]
  assert list(zip(acts["model"], acts["k"])) == [
    (f"{s} D=1M", k) for s in SIZES for k in (3, 4, 8, 16)
  ]

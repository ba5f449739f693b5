"""Probes, activation-bits tables, the N-D fit and the PTQ penalty vs D, on synthetic cells."""

import math

import numpy as np
import pandas as pd
import pytest

from kbit_jax.analysis import extra_axes, plots_axes, render, report
from kbit_jax.analysis.cells import cells_from_store, check_cells

SIZES = {"s1": 25_000, "s2": 100_000, "s3": 400_000}


def _loss(n, d, k, a):
  """nll = 8 N^-0.1 D^-0.05, + a PTQ penalty growing with D/N, + an activation penalty."""
  base = 8 * n**-0.1 * d**-0.05
  ptq = 0.0 if k == 16 else 2.0**-k * (d / n) ** 0.5
  return base + ptq + (0.0 if a == 16 else 0.01)


PROBE_A, PROBE_B = -2.0, 0.4  # recovered bits = a + b ln N (- a small k term)


def _store():
  rows = []
  for preset, n in SIZES.items():
    for d in (250_000, 1_000_000):
      for a in (8, 16):
        for k in (3, 4, 16):
          nll = _loss(n, d, k, a)
          rows.append(
            {
              "preset": preset,
              "seed": 0,
              "train_tokens": d,
              "bits": k,
              "dtype": "none" if k == 16 else "float",
              "blocksize": None if k == 16 else 64,
              "outlier_share": 0.0,
              "targets": "attn,mlp,embed",
              "double_quant": False,
              "eval_id": "e",
              "params": 2 * n,
              "non_embedding_params": n,
              "total_bits": 2 * n * k,
              "name": f"{preset}-D{d} k{k} a{a}",
              **({} if a == 16 else {"act_bits": a}),
              "ppl/validation/nll": nll,
              "ppl/validation/perplexity": math.exp(nll),
              "mean/acc": 0.5 * n**0.05 * d**0.02 / 2,
              "probe/k1/bits": 1 / nll,
              "probe/k2/bits": 2 / nll,
              "probe/summary/bits": PROBE_A + PROBE_B * math.log(n) - 0.01 * (16 - k),
              "probe/summary/max_k": 1,
            }
          )
  return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cells():
  return cells_from_store(_store())


def test_main_analysis_leaves_activation_cells_out(cells):
  checked, issues = check_cells(cells)
  assert (checked["act_bits"] == 16).all() and len(checked) == len(cells) // 2
  assert any("activation bits < 16" in i for i in issues)


def test_probe_table_and_act_tables(cells):
  probe = extra_axes.probe_table(cells)
  assert list(probe.columns) == ["k1", "k2", "bits total", "max_k"]
  assert len(probe) == 3 * 2 * 3  # sizes x budgets x weight k (a = 16 only)
  acts = extra_axes.act_tables(cells, "nll")
  assert list(acts)[:3] == ["s1 D=250k", "s1 D=1M", "s2 D=250k"] and len(acts) == 6
  assert list(next(iter(acts.values())).columns) == [8, 16]
  table = acts["s1 D=250k"]
  assert table.loc[4, 8] - table.loc[4, 16] == pytest.approx(0.01)


def test_nd_fit_recovers_exponents_of_a_power_law(cells):
  fit = extra_axes.nd_fits(cells)["acc"]
  assert (fit["b"], fit["c"], fit["a"]) == (
    pytest.approx(0.05),
    pytest.approx(0.02),
    pytest.approx(0.25),
  )
  assert fit["r2"] == pytest.approx(1.0) and fit["points"] == 6
  nll = extra_axes.nd_fits(cells)["nll"]
  assert (nll["b"], nll["c"]) == (pytest.approx(-0.1), pytest.approx(-0.05))


def test_ptq_penalty_grows_with_d_as_built(cells):
  penalty = extra_axes.ptq_penalty(cells)
  assert len(penalty) == 3 * 2 * 2
  row = penalty[
    (penalty["preset"] == "s2") & (penalty["k"] == 4) & (penalty["tokens"] == 1_000_000)
  ].iloc[0]
  assert row["penalty"] == pytest.approx(2.0**-4 * 10.0**0.5)
  table = extra_axes.penalty_table(penalty)
  assert table["slope ln pen/ln D"].to_numpy() == pytest.approx(np.full(6, 0.5))


def test_figures_and_report_section(cells, tmp_path):
  figures, notes = plots_axes.make_figures(cells, str(tmp_path))
  assert [f.name for f in figures] == ["probe_bits", "act_bits", "ptq_penalty"] and not notes
  assert all(p.exists() for f in figures for p in f.paths)
  blocks = report.axes_blocks(cells, figures, notes, tmp_path)
  text = render.to_markdown(blocks)
  assert "weight bits (rows) x activation bits" in text and "a N^b D^c" in text
  assert "PTQ penalty" in text and "recovered bits" in text


def test_stores_without_the_axes_skip_them(cells, tmp_path):
  plain = cells[(cells["act_bits"] == 16) & (cells["tokens"] == 1_000_000)]
  plain = plain.drop(columns=[c for c in plain.columns if c.startswith("probe_")])
  figures, notes = plots_axes.make_figures(plain, str(tmp_path))
  assert not figures and len(notes) == 3
  assert extra_axes.nd_fits(plain) == {} and extra_axes.act_tables(plain) == {}


def test_write_tables_and_summary(cells, tmp_path):
  paths = extra_axes.write_tables(cells, str(tmp_path))
  assert set(paths) == {
    "nd_fits",
    "ptq_penalty",
    "ptq_penalty_by_d",
    "probe_bits",
    "probe_fits",
    "act_bits_nll",
  }
  assert all(p.exists() for p in paths.values())
  text = extra_axes.summary(cells)
  assert "N-D fit nll" in text and "k3 0.50" in text
  assert "probe bits, D=2.5e+05, k3: -2.13 + 0.40 ln N (3 sizes)" in text


def test_probe_fits_recover_bits_per_log_n(cells):
  fits = extra_axes.probe_fits(cells)
  assert len(fits) == 2 * 3 * 2  # budgets x weight k x (ln N, ln total bits)
  by_n = fits[fits["x"] == "ln N"]
  np.testing.assert_allclose(by_n["slope"], PROBE_B, rtol=1e-9)
  np.testing.assert_allclose(by_n["intercept"], PROBE_A - 0.01 * (16 - by_n["k"]), rtol=1e-9)
  assert (by_n["sizes"] == 3).all()
  # total bits = 2 N k here, so the slope in ln total bits is the same
  np.testing.assert_allclose(fits[fits["x"] == "ln total bits"]["slope"], PROBE_B, rtol=1e-9)

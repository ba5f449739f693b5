"""Scaling fits: recovery of known laws, bootstrap coverage, bit-optimal k, bad input."""

import importlib.util
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from kbit_jax.analysis import bitoptimal, fitting, forms, results, stage, synthetic
from kbit_jax.analysis.analyse import analyse
from kbit_jax.analysis.cells import ScalingWarning, cells_from_store, check_cells, load_cells
from kbit_jax.analysis.fitting import FitError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = np.geomspace(1e5, 3e7, 8)  # parameters of 8 model sizes
BITS_PER_PARAM = 4.25


def _power_curve(rng, a=60.0, alpha=0.2, e=2.0, seeds=3, noise=0.01, sizes=SIZES):
  """A power law in total bits with multiplicative noise, `seeds` cells per size."""
  log_bits = np.repeat(np.log(sizes * BITS_PER_PARAM), seeds)
  y = (a * np.exp(log_bits) ** -alpha + e) * np.exp(rng.normal(0, noise, len(log_bits)))
  units = np.arange(len(log_bits))
  return forms.curve_data(log_bits, y, np.repeat(sizes, seeds), units)


def _cells(records):
  cells, issues = check_cells(cells_from_store(results.frame(records)))
  return cells, issues


# ----------------------------------------------------------------------------- recovery


def test_power_law_recovers_known_parameters():
  """0.5% noise, 8 sizes x 3 seeds: alpha within 0.025, E within 15%, a within 30%
  (over 40 noise seeds the largest errors were 0.0195, 12% and 19%: E and alpha trade
  off while the curve is still far from its floor)."""
  data = _power_curve(np.random.default_rng(0), noise=0.005)
  fit = fitting.fit_form(forms.POWER, data, "test", extrapolate=False)
  assert abs(fit.params["alpha"] - 0.2) < 0.025
  assert abs(fit.params["E"] / 2.0 - 1) < 0.15
  assert abs(fit.params["a"] / 60.0 - 1) < 0.3


def test_sigmoid_recovers_known_parameters():
  """Accuracy = chance + (0.8 - chance) sigmoid(1.0 ln(bits / 1e7)) + N(0, 0.01): hi within
  0.03, s within 0.15, ln m_bits within 0.2 (this noise draw: 0.015, 0.058, 0.080; over
  40 noise seeds the largest were 0.030, 0.089, 0.21)."""
  rng = np.random.default_rng(1)
  log_bits = np.repeat(np.log(SIZES * BITS_PER_PARAM), 3)
  lo = 0.3125
  y = lo + (0.8 - lo) / (1 + np.exp(-(log_bits - np.log(1e7)))) + rng.normal(0, 0.01, len(log_bits))
  data = forms.curve_data(log_bits, y, np.repeat(SIZES, 3), np.arange(len(y)), lo=lo)
  fit = fitting.fit_form(forms.SIGMOID, data, "test", extrapolate=False)
  assert abs(fit.params["hi"] - 0.8) < 0.03
  assert abs(fit.params["s"] - 1.0) < 0.15
  assert abs(np.log(fit.params["m_bits"] / 1e7)) < 0.2
  assert fit.params["lo"] == lo


def test_bootstrap_interval_covers_truth_in_most_repetitions():
  """90% percentile intervals of alpha from 60 cell-resamples cover the true 0.2 in >= 24
  of 30 independent data sets (the percentile bootstrap under-covers slightly with 24
  cells; measured ~85% over 60 repetitions)."""
  covered = 0
  for rep in range(30):
    data = _power_curve(np.random.default_rng(100 + rep))
    draws = fitting.bootstrap_draws(data.units, 60, seed=rep)
    fit = fitting.fit_form(forms.POWER, data, "test", draws, level=0.9, extrapolate=False)
    lo, hi = fit.ci["alpha"]
    covered += lo <= 0.2 <= hi
  assert covered >= 24, f"alpha covered in {covered}/30"


def _joint_fit(fitted, **store):
  """`fitted` (a form) fitted to a synthetic store of 6 sizes, nf at B64, one token count."""
  cells, _ = _cells(
    synthetic.synthetic_records(sizes=("s1", "s2", "s3", "s4", "s5", "s6"), dtypes=("nf",), **store)
  )
  data = forms.joint_data(
    cells["n"], cells["tokens"], cells["k"], cells["family"], cells["nll"], cells["unit"]
  )
  return fitting.fit_form(fitted, data, fitted.name, extrapolate=False)


# Noise-free stores: all that separates fit and law is least_squares' stopping rule
# (ftol = xtol = 1e-8 relative); the largest error measured was 1e-9 relative.
EXACT = 1e-6


@pytest.mark.parametrize("form", ["ptq", "neff"])
def test_joint_laws_recovered_exactly_from_noise_free_stores(form):
  law = synthetic.LAWS[form]
  fit = _joint_fit(forms.JOINT_FORMS[form], form=form, noise=0.0, cell_noise=0.0)
  want = {p: v for p, v in law.items() if p != "E"} | {"E[D=1M]": law["E"]}
  # nf at B64 has method factor 1 in the ptq store: the fitted C is the law's
  assert fit.params == pytest.approx(want, rel=EXACT) and not fit.at_bound


def test_curve_forms_recovered_exactly_from_noise_free_curves():
  power = fitting.fit_form(
    forms.POWER, _power_curve(np.random.default_rng(0), noise=0.0), "power", extrapolate=False
  )
  assert power.params == pytest.approx({"a": 60.0, "alpha": 0.2, "E": 2.0}, rel=EXACT)
  log_bits = np.repeat(np.log(SIZES * BITS_PER_PARAM), 3)
  y = 0.3125 + (0.8 - 0.3125) / (1 + np.exp(-(log_bits - np.log(1e7))))
  data = forms.curve_data(log_bits, y, np.repeat(SIZES, 3), np.arange(len(y)), lo=0.3125)
  sigmoid = fitting.fit_form(forms.SIGMOID, data, "sigmoid", extrapolate=False)
  want = {"lo": 0.3125, "hi": 0.8, "s": 1.0, "m_bits": 1e7}
  assert sigmoid.params == pytest.approx(want, rel=EXACT)


def test_ptq_law_recovered_from_noisy_store():
  """1% checkpoint and 0.3% cell noise, 2 seeds: alpha, gamma_N, gamma_post within 0.07,
  0.03 and 0.07 (this draw: 0.012, 0.004, 0.034; over 30 noise seeds the largest errors
  were 0.064, 0.019 and 0.058)."""
  fit = _joint_fit(forms.PTQ, seeds=(0, 1), seed=3)
  law = synthetic.LAWS["ptq"]
  assert abs(fit.params["alpha"] - law["alpha"]) < 0.07
  assert abs(fit.params["gamma_N"] - law["gamma_N"]) < 0.03
  assert abs(fit.params["gamma_post"] - law["gamma_post"]) < 0.07
  assert "gamma_D" not in fit.params  # one token count: absorbed into C
  assert set(fit.params) == set(GOLDEN_PTQ) and all(
    fit.params[p] == pytest.approx(v, rel=GOLDEN_REL.get(p, 1e-6)) for p, v in GOLDEN_PTQ.items()
  ), (
    f"the ptq fit of this store is now {_pasteable(fit.params)}. Update GOLDEN_PTQ only if "
    "the fit method or the synthetic store changed on purpose (forms.py, fitting.py, "
    "synthetic.py); rerun `python -m pytest tests/test_scaling.py -k noisy` and paste it."
  )


# The fit above, pinned: rel 1e-6 leaves room for another machine's floating point and
# catches a change of method (the MAD constant's 1.5e-6 moved C by 2e-6). C alone gets
# 1e-5: on an AVX2 machine (these were made on another) C came out 1.95e-6 off,
# gamma_post 3.0e-7 and the rest under 1e-7 (2026-12-02), so a change as small as that
# constant's now shows only if it moves another parameter by 1e-6.
GOLDEN_PTQ = {
  "A": 67.64191031,
  "alpha": 0.3116585552,
  "C": 4403.419111,
  "gamma_N": 0.2456696621,
  "gamma_post": 0.4658765996,
  "E[D=1M]": 2.538185304,
}
GOLDEN_REL = {"C": 1e-5}


def _pasteable(params):
  return repr({p: float(f"{v:.10g}") for p, v in params.items()})


def test_neff_law_recovered_from_noisy_store():
  """1% checkpoint and 0.3% cell noise, 2 seeds: gamma within 10%, alpha within 0.08, A
  and E not checked (this draw: 0.34%, 0.011; over 30 noise seeds the largest errors were
  6.0% and 0.063 for gamma and alpha, and 43% for A, which trades off with alpha)."""
  fit = _joint_fit(forms.NEFF, form="neff", seeds=(0, 1), seed=3)
  law = synthetic.LAWS["neff"]
  assert abs(fit.params["gamma"] / law["gamma"] - 1) < 0.1
  assert abs(fit.params["alpha"] - law["alpha"]) < 0.08


def test_extrapolation_error_reported_or_explained():
  """1% noise: the held-out perplexity error is 1.9% for this draw (up to 8.7% over 40
  noise draws, so the 5% bound is this draw's); with 3 sizes there is none, and why."""
  fit = fitting.fit_form(forms.POWER, _power_curve(np.random.default_rng(2)), "t")
  e = fit.extrapolation
  assert e["heldout_size"] == int(SIZES.max()) and e["cells"] == 3
  assert e["ppl_rel_error"] < 0.05
  three = _power_curve(np.random.default_rng(2), sizes=SIZES[:3])
  fit = fitting.fit_form(forms.POWER, three, "t")
  assert fit.extrapolation is None
  assert "without its largest size: 2 distinct model size(s)" in fit.extrapolation_note


# ----------------------------------------------------------------------------- bit-optimal


def _offset_curves(rng, offsets):
  """Cells of curves sharing one law in total bits, shifted by a known offset per k."""
  rows = []
  for k, offset in offsets.items():
    for i, n in enumerate(SIZES[:6]):
      bits = n * (k + 0.25)
      base = 60 * bits**-0.2 + 2.0 + offset + rng.normal(0, 0.002)
      rows.append(
        dict(params=n, total_bits=bits, unit=f"m{i}", curve=f"k{k}", nll=base, acc=1.0 - base / 10)
      )
  frame = pd.DataFrame(rows)
  return {c: g for c, g in frame.groupby("curve")}


@pytest.mark.parametrize("metric", ["nll", "acc"])
def test_bit_optimal_picks_the_known_best_k(metric):
  """k4 is 0.05+ nats better than every other k at equal bits: it must win every budget
  it reaches, by interpolation (and by fit, for nll) in >= 90% of bootstrap replicates."""
  rng = np.random.default_rng(5)
  curves = _offset_curves(rng, {3: 0.3, 4: 0.0, 5: 0.05, 8: 0.1, 16: 0.2})
  draws = fitting.bootstrap_draws(np.array([f"m{i}" for i in range(6)]), 40, seed=0)
  fits = {}
  if metric == "nll":  # the nll curves are exact power laws in bits: fit them too
    for label, c in curves.items():
      data = forms.curve_data(np.log(c["total_bits"]), c["nll"], c["params"], c["unit"])
      fits[label] = fitting.fit_form(forms.POWER, data, label, draws)
  table = bitoptimal.bit_optimal(curves, fits, metric, draws, num_budgets=15)
  reach = bitoptimal.curve_points(curves["k4"], metric)[0]
  inside = (np.log(table["budget_bits"]) >= reach[0]) & (np.log(table["budget_bits"]) <= reach[-1])
  assert inside.sum() >= 5
  assert (table.loc[inside, "best_interp"] == "k4").all()
  assert (table.loc[inside, "share_interp"] >= 0.9).all()
  if fits:
    assert (table.loc[inside, "best_fit"] == "k4").all()
    assert (table.loc[inside, "share_fit"] >= 0.9).all()


def test_winners_need_two_curves():
  values = {"k3": np.array([1.0, np.nan, np.nan]), "k4": np.array([0.5, 2.0, np.nan])}
  assert list(bitoptimal.winners(values, higher_is_better=False)) == ["k4", None, None]
  assert list(bitoptimal.winners(values, higher_is_better=True)) == ["k3", None, None]


# ----------------------------------------------------------------------------- bad input


def test_too_few_sizes_is_a_clear_error_and_a_skip():
  two = _power_curve(np.random.default_rng(3), sizes=SIZES[:2])
  with pytest.raises(FitError, match=r"2 distinct model size\(s\).*needs >= 3"):
    fitting.fit_form(forms.POWER, two, "nll power fit")
  cells, issues = _cells(synthetic.synthetic_records(sizes=("s1", "s2")))
  a = analyse(cells, issues, n_boot=5)
  assert not a.curve_fits and not a.joint_fits
  assert any("2 distinct model size(s)" in s and ">= 3" in s for s in a.skipped)
  assert a.bit_optimal  # interpolation needs no fit


def test_nan_metrics_dropped_with_a_warning_naming_the_cells():
  records = synthetic.synthetic_records(sizes=("s1", "s2", "s3", "s4", "s5"), dtypes=("nf",))
  bad = [r for r in records if r["key"]["bits"] == 3][:2]
  for r in bad:
    r["metrics"]["ppl/validation"]["nll"] = float("nan")
    r["metrics"]["ppl/validation"]["perplexity"] = float("nan")
  del records[-1]["metrics"]["mean"]  # a cell without accuracy
  with pytest.warns(ScalingWarning) as caught:
    cells, issues = _cells(records)
  assert any(bad[0]["name"] in str(w.message) for w in caught)
  assert any("nll" in i and bad[1]["name"] in i for i in issues)
  assert any("acc" in i and records[-1]["name"] in i for i in issues)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    a = analyse(cells, issues, n_boot=3)
  fit = a.curve_fits[(cells["family"].iloc[0], "nf B64", "k3", "nll")]
  assert fit.n_cells == 3  # 5 sizes minus the 2 NaN


def test_incompatible_grids_keep_the_largest_consistent_group():
  main = synthetic.synthetic_records(sizes=("s1", "s2", "s3"), dtypes=("nf",))
  other = synthetic.synthetic_records(
    sizes=("s1",), dtypes=("nf",), bits=(4, 16), eval_id="other-eval"
  )
  with pytest.warns(ScalingWarning, match="incompatible grids.*eval_id"):
    cells, issues = _cells(main + other)
  assert set(cells["eval_id"]) == {"synthetic"} and len(cells) == len(main)
  assert "s1-seed0 k4 nf B64 p0" in issues[0]


def test_token_counts_within_a_preset_split_training_families():
  short = synthetic.synthetic_records(sizes=("s1", "s2", "s3"), dtypes=("nf",))
  long = synthetic.synthetic_records(
    sizes=("s1", "s2", "s3"), dtypes=("nf",), tokens=4_000_000, seed=1
  )
  cells, issues = _cells(short + long)
  assert sorted(cells["family"].unique()) == ["D=1M", "D=4M"]
  assert any("training tokens differ within presets" in i for i in issues)
  data = forms.joint_data(
    cells["n"], cells["tokens"], cells["k"], cells["family"], cells["nll"], cells["unit"]
  )
  assert data.ctx["fit_gamma_d"] and data.ctx["num_families"] == 2


def test_adapter_reads_a_written_store(tmp_path):
  records = synthetic.synthetic_records(
    sizes=("s1", "s2"), dtypes=("int",), blocksizes=(64, 0), bits=(4, 16)
  )
  synthetic.write_store(str(tmp_path), records)
  cells, _ = load_cells(str(tmp_path))
  assert len(cells) == len(records) == 2 * 3
  assert set(cells["method"]) == {"16-bit", "int B64", "int Btensor"}
  assert cells.attrs["ppl_split"] == "validation"
  assert np.allclose(cells["ppl"], np.exp(cells["nll"]))
  assert cells["chance"].iloc[0] == pytest.approx((0 + 0.25 + 0.5 + 0.5) / 4)
  flat = results.frame(records)
  bare = flat.rename(columns=lambda c: c.removeprefix("metrics/"))  # older layout
  assert np.allclose(cells_from_store(bare)["acc"], cells_from_store(flat)["acc"])
  with pytest.raises(ValueError, match="total_bits"):
    cells_from_store(flat.drop(columns=["total_bits"]))


def test_stage_fit_writes_tables(tmp_path, monkeypatch):
  loads = []
  read = results.load
  monkeypatch.setattr(results, "load", lambda d: loads.append(d) or read(d))
  synthetic.write_store(
    str(tmp_path / "results"),
    synthetic.synthetic_records(sizes=("s1", "s2", "s3", "s4"), dtypes=("nf",), bits=(3, 4, 8, 16)),
  )
  a = stage.fit(str(tmp_path / "results"), str(tmp_path / "fit"), n_boot=5)
  assert sorted(p.name for p in (tmp_path / "fit").iterdir()) == [
    "bit_optimal.csv",
    "extrapolation.csv",
    "fits.json",
    "params.csv",
    "ptq_penalty.csv",
    "ptq_penalty_by_d.csv",
    "signal.csv",
  ]  # one token count: no nd_fits.json, no qid.csv; no probes or activation bits: none
  # of theirs
  params = pd.read_csv(tmp_path / "fit" / "params.csv")
  power, sigmoid = ["a", "alpha", "E"], ["lo", "hi", "s", "m_bits"]
  assert params.groupby(["method", "curve", "form"], sort=False)["param"].agg(list).to_dict() == {
    ("16-bit", "k16", "power"): power,
    ("16-bit", "k16", "sigmoid"): sigmoid,
    **{
      ("nf B64", k, form): names
      for k in ("k3", "k4", "k8")
      for form, names in (("power", power), ("sigmoid", sigmoid))
    },
    ("nf B64", "all k", "neff"): ["A", "alpha", "gamma", "E[D=1M]"],
    ("nf B64", "all k", "ptq"): ["A", "alpha", "C", "gamma_N", "gamma_post", "E[D=1M]"],
  }
  assert set(a.joint_fits) == {("nf B64", "neff"), ("nf B64", "ptq")}
  assert loads == [str(tmp_path / "results")]  # the store is read once


@pytest.mark.parametrize("name", ["bitwidth_sweep", "blocksize_dtype", "outliers"])
def test_experiment_configs_are_valid_grids(name):
  from kbit_jax.grid import plan as grid_plan

  path = os.path.join(REPO, "experiments", name, "config.py")
  spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert len(grid_plan.make_plan(module.get_config("runlocal")).cells) <= 10
  plan = grid_plan.make_plan(module.get_config(None))
  assert len({m.preset for m in plan.models}) >= 4  # enough sizes to fit and extrapolate

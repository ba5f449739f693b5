"""Training length in the analysis: the two QiD laws, the noise rule, the identification
rule and item resampling (kbit_jax/analysis/qid.py, noise.py, fitting.not_identified)."""

import itertools

import numpy as np
import pandas as pd
import pytest

from kbit_jax.analysis import (
  analyse,
  cells,
  fitting,
  labels,
  noise,
  qid,
  results,
  synthetic,
  tables,
)

OUYANG_TRUTH = dict(c=40.0, beta=0.5, alpha=0.6, gamma=4.0)
SIZES = {"a": 2e4, "b": 8e4, "c": 3.2e5}
BUDGETS = (2e6, 4e6, 8e6, 1.6e7, 3.2e7)
KS = (3, 4, 5, 6, 8)


def ouyang_rows(noise_sd=0.0, seed=0):
  """QiD rows drawn from Ouyang's law at OUYANG_TRUTH: 3 sizes x 5 budgets x 5 k, one
  training run per size (its checkpoints), times lognormal noise."""
  rng = np.random.default_rng(seed)
  p = OUYANG_TRUTH
  rows = []
  for (preset, n), d, k in itertools.product(SIZES.items(), BUDGETS, KS):
    value = p["c"] * d ** p["beta"] / (n ** p["alpha"] * k ** p["gamma"])
    rows.append(
      dict(
        method="nf B64",
        preset=preset,
        n=n,
        run=f"{preset}-seed0",
        unit=f"{preset}-D{d:g}",
        tokens=d,
        d_over_n=d / n,
        k=k,
        qid=value * np.exp(rng.normal(0, noise_sd)),
      )
    )
  return pd.DataFrame(rows)


def test_ouyang_law_recovered_exactly_from_noise_free_rows():
  fits, skipped = qid.fit_laws(ouyang_rows(), n_boot=0)
  assert skipped == []
  got = fits[("nf B64", "ouyang")].fit.params
  for name, want in OUYANG_TRUTH.items():
    assert got[name] == pytest.approx(want, rel=1e-6), name


def test_qid_laws_recover_planted_parameters_from_noisy_rows_and_the_true_one_extrapolates():
  """5% lognormal noise on each of 75 rows: the exponents within 0.05 of the planted ones
  (measured over seeds 0-9: largest error 0.021 for beta, 0.016 alpha, 0.07 gamma, so
  gamma gets 0.15), the planted values inside the 95% bootstrap intervals over runs; the
  planted form predicts the held-out largest D better than the other one."""
  fits, _ = qid.fit_laws(ouyang_rows(0.05, seed=1), n_boot=100)
  ouyang = fits[("nf B64", "ouyang")]
  for name, tol in (("beta", 0.05), ("alpha", 0.05), ("gamma", 0.15)):
    assert abs(ouyang.fit.params[name] - OUYANG_TRUTH[name]) < tol, name
  assert ouyang.fit.unidentified == {}
  assert qid.better_law(fits, "nf B64") == "ouyang"
  assert ouyang.heldout["tokens"] == max(BUDGETS) and ouyang.heldout["rows"] == 15


def test_threshold_tokens_solve_the_law():
  fits, _ = qid.fit_laws(ouyang_rows(), n_boot=0)
  table = qid.threshold_table({k: v for k, v in fits.items() if k[1] == "ouyang"}, 0.05)
  p = OUYANG_TRUTH
  row = table[(table["preset"] == "b") & (table["k"] == 4)].iloc[0]
  want = (0.05 * SIZES["b"] ** p["alpha"] * 4 ** p["gamma"] / p["c"]) ** (1 / p["beta"])
  assert row["tokens"] == pytest.approx(want, rel=1e-6)
  assert row["d_over_n"] == pytest.approx(want / SIZES["b"], rel=1e-6)


def _store(tmp_path, records):
  results_dir = tmp_path / "results"
  synthetic.write_store(str(results_dir), records)
  return cells.load_cells(str(results_dir))


def test_kumar_law_recovered_end_to_end_from_a_store_with_three_budgets(tmp_path):
  """A noise-free synthetic store whose PTQ penalty is Kumar's form with gamma_D = 0.5:
  analyse() fits both laws on its QiD; Kumar's recovers gamma_D, gamma_N, gamma_post."""
  law = dict(synthetic.LAWS["ptq"], gamma_D=0.5)
  records = []
  for d in (250_000, 1_000_000, 4_000_000):
    records += synthetic.synthetic_records(
      sizes=("s1", "s2", "s3"), tokens=d, noise=0, cell_noise=0, law=law, dtypes=("nf",)
    )
  checked, issues = _store(tmp_path, records)
  a = analyse.analyse(checked, issues, n_boot=0)
  kumar = a.qid_fits[("nf B64", "kumar")].fit.params
  assert kumar["gamma_D"] == pytest.approx(0.5, abs=1e-6)
  assert kumar["gamma_N"] == pytest.approx(law["gamma_N"], abs=1e-6)
  assert kumar["1/gamma_post"] == pytest.approx(1 / law["gamma_post"], abs=1e-6)
  assert ("nf B64", "ouyang") in a.qid_fits
  assert qid.better_law(a.qid_fits, "nf B64") == "kumar"


# ----------------------------------------------------------------------------- identified


@pytest.mark.parametrize(
  "interval, why",
  [
    ((0.6, 0.8), ""),
    ((-0.8, -0.6), ""),
    ((0.014, 0.773), "its interval spans more than a factor of 10"),
    ((-0.272, 0.199), "its interval changes sign"),
    ((0.0, 0.5), "its interval spans more than a factor of 10"),
    ((0.1, 1.0), ""),
    (None, "no bootstrap interval"),
  ],
)
def test_identification_rule(interval, why):
  assert fitting.not_identified(interval) == why


def test_an_unidentified_exponent_is_reported_as_such(tmp_path):
  """The main job's neff fit printed alpha=0.735 [0.014, 0.773] as a measured value: the
  summary and the report's tables now say the grid does not identify it."""
  checked, issues = _store(tmp_path, synthetic.synthetic_records(sizes=("s1", "s2", "s3", "s4")))
  a = analyse.analyse(checked, issues, n_boot=20)
  fit = a.joint_fits[("nf B64", "neff")]
  fit.ci = {p: (0.9 * v, 1.1 * v) for p, v in fit.params.items()}
  fit.ci["alpha"] = (0.014, 0.773)
  assert fit.unidentified == {"alpha": "its interval spans more than a factor of 10"}
  line = next(x for x in tables.summary(a).splitlines() if "neff law, nf B64" in x)
  assert f"alpha not identified by this grid ({fit.params['alpha']:.3g} [0.014, 0.773])" in line
  assert "gamma=" in line
  row = tables.params_table(a).query("form == 'neff' and method == 'nf B64' and param == 'alpha'")
  assert row["not_identified"].iloc[0] == "its interval spans more than a factor of 10"


# ----------------------------------------------------------------------------- noise


def _with_items(records, flat_acc, rng):
  """Per-item scores on every record: 100 items a task and 16 perplexity rows around the
  record's nll (spread 0.02 nats a row). acc: drawn at the record's own accuracy, or
  (`flat_acc`) one answer sheet per size at 0.46 with 1 item flipped per cell, so that
  k moves accuracy by less than its stderr: 0.05 a task, 0.025 for the mean, and ~0.007
  for the paired difference of two cells (at most 2 of a task's 100 items differ; with 2
  flips a spread of 0.02 reached 2.005 paired stderrs at one size)."""
  out, sheets = [], {}
  offsets = np.linspace(-0.02, 0.02, 16)
  for r in records:
    r = dict(r, metrics=dict(r["metrics"]))
    items = {}
    accs = []
    for task in synthetic.TASKS:
      if flat_acc:
        sheet = sheets.setdefault((r["key"]["preset"], task), rng.random(100) < 0.46)
        scores = sheet.copy()
        flip = rng.choice(100, 1, replace=False)
        scores[flip] = ~scores[flip]
      else:
        scores = rng.random(100) < r["metrics"][task]["acc"]
      scores = scores.astype(int)
      items[task] = "".join(map(str, scores))
      accs.append(scores.mean())
      r["metrics"][task] = dict(r["metrics"][task], acc=scores.mean(), acc_stderr=0.05)
    r["metrics"]["mean"] = dict(acc=float(np.mean(accs)), acc_stderr=0.025, tasks=4)
    nll = r["metrics"]["ppl/validation"]["nll"]
    items["ppl/validation"] = dict(nll_sum=list((nll + offsets) * 128), tokens=[128] * 16)
    out.append(dict(r, items=items))
  return out


def test_flat_metric_is_neither_fitted_nor_ranked_and_a_moving_one_is(tmp_path):
  records = synthetic.synthetic_records(sizes=("s1", "s2", "s3", "s4"), dtypes=("nf",))
  checked, issues = _store(tmp_path, _with_items(records, True, np.random.default_rng(0)))
  a = analyse.analyse(checked, issues, n_boot=20)
  family = a.families()[0]
  acc = a.signal[a.signal["metric"] == "acc"]
  nll = a.signal[a.signal["metric"] == "nll"]
  assert len(acc) == len(nll) == 4 and not acc["signal"].any() and nll["signal"].all()
  note = a.flat[(family, "acc")]
  assert note.startswith(f"acc, {family}: no signal, not fitted or ranked: ")
  assert "at 0 of 4 sizes" in note and "\n" not in note
  assert list(a.flat) == [(family, "acc")] and note in a.skipped
  assert not any(m == "acc" for (*_, m) in a.curve_fits)
  assert not any(m == "acc" for (*_, m) in a.bit_optimal)
  assert any(m == "nll" for (*_, m) in a.curve_fits)
  assert (family, "nf B64", "nll") in a.bit_optimal
  assert note in tables.summary(a)


def test_a_flat_metric_is_not_ranked_per_quantization_method_either(tmp_path):
  """The same store with a gptq copy of every quantized cell (nll 1% lower): bit-optimal
  k per method is compared for nll, the metric with signal, and not for the flat acc."""
  rng = np.random.default_rng(0)
  records = _with_items(
    synthetic.synthetic_records(sizes=("s1", "s2", "s3", "s4"), dtypes=("nf",)), True, rng
  )
  gptq = []
  for r in records:
    if r["key"]["bits"] < 16:
      m = dict(r["metrics"])
      ppl = dict(m["ppl/validation"], nll=m["ppl/validation"]["nll"] * 0.99)
      m["ppl/validation"] = ppl
      gptq.append(dict(r, key=dict(r["key"], method="gptq", calib_id="c0"), metrics=m))
  checked, issues = _store(tmp_path, records + gptq)
  a = analyse.analyse(checked, issues, n_boot=10)
  family = a.families()[0]
  assert (family, "acc") in a.flat
  assert sorted(a.method_optimal) == [(family, "nf B64", "nll")]


def test_an_exponent_past_its_search_bound_is_reported_as_not_identified():
  """Rows planted with gamma = 15 > qid.BOUND = 12: the fit stops on the bound, and the
  report must not present 12 as a measured exponent."""
  rows = ouyang_rows()
  rows["qid"] = rows["qid"] * rows["k"] ** (OUYANG_TRUTH["gamma"] - 15.0)
  fit = qid.fit_laws(rows, n_boot=20)[0][("nf B64", "ouyang")].fit
  assert fit.params["gamma"] == pytest.approx(qid.BOUND, abs=1e-6)
  assert fit.unidentified["gamma"] == "on its search bound"
  assert "beta" not in fit.unidentified


def test_training_families_sort_by_budget_not_as_text():
  assert sorted(["D=1.31M", "D=328k", "D=5.24M", "D=655k"], key=labels.family_order) == [
    "D=328k",
    "D=655k",
    "D=1.31M",
    "D=5.24M",
  ]
  assert sorted(["D/N=130", "D/N=16", "one run per size"], key=labels.family_order) == [
    "D/N=16",
    "D/N=130",
    "one run per size",
  ]


def test_item_replicates_resample_items_once_for_every_cell(tmp_path):
  """Two cells with the same per-item scores get the same value in every replicate (the
  items are drawn once per replicate); over replicates the mean is the measured one."""
  records = synthetic.synthetic_records(sizes=("s1", "s2", "s3"), dtypes=("nf",))
  records = _with_items(records, False, np.random.default_rng(0))
  records[1] = dict(records[1], items=dict(records[0]["items"]))
  frame = cells.cells_from_store(results.frame(records))
  reps = noise.item_replicates(frame, "acc", 400, seed=0)
  assert all(r.iloc[0] == r.iloc[1] for r in reps)
  mean = np.mean([r.iloc[2] for r in reps])
  assert mean == pytest.approx(frame["acc"].iloc[2], abs=0.01)
  nll = noise.item_replicates(frame, "nll", 50, seed=0)
  assert nll is not None and np.std([r.iloc[0] for r in nll]) > 0
  assert frame["nll_stderr"].iloc[0] == pytest.approx(
    cells.nll_stderr(records[0]["items"]["ppl/validation"]["nll_sum"], [128] * 16)
  )


def test_win_share_counts_the_noise_of_the_items(tmp_path, monkeypatch):
  """Accuracy whose k-curves differ by less than the items' noise: by the models alone
  (no per-item scores) every replicate agrees at some budget; resampling the items too,
  no budget's share stays at 100%. The signal rule would rightly not rank such accuracy
  (its paired stderr: the items are drawn independently per cell); it is switched off
  here, this test is about the win shares of what is ranked."""
  monkeypatch.setattr(noise, "PAIRED_FACTOR", 0.0)
  monkeypatch.setattr(noise, "UNPAIRED_FACTOR", 0.0)
  records = synthetic.synthetic_records(sizes=("s1", "s2", "s3", "s4"), dtypes=("nf",))
  noisy = _with_items(records, False, np.random.default_rng(3))
  checked, _ = _store(tmp_path, noisy)
  a = analyse.analyse(checked, [], n_boot=50)
  with_items = a.bit_optimal[(a.families()[0], "nf B64", "acc")]["share_interp"].dropna()
  frame = checked.drop(columns=noise.task_columns(checked))
  b = analyse.analyse(frame, [], n_boot=50)
  models_only = b.bit_optimal[(b.families()[0], "nf B64", "acc")]["share_interp"].dropna()
  assert (models_only == 1.0).any()
  assert (with_items < 1.0).all()


def test_the_signal_rule_uses_the_paired_stderr_of_the_two_cells_that_make_the_spread():
  """Computed by hand: nll rows (sums 10, 12, 14 vs 9, 12, 13; 10 tokens each): the
  per-row differences 1, 0, 1 have std 1/sqrt(3), so the stderr of the nll difference is
  std * sqrt(3) / 30 tokens = 1/30. acc (one task, items 1100 vs 1000): differences 0, 1,
  0, 0 have std 1/2, sem 1/4. Two cells at one k (two seeds) are not a pair: None."""
  g = pd.DataFrame(
    {
      "k": [16, 3],
      "rows_nll": [[10.0, 12.0, 14.0], [9.0, 12.0, 13.0]],
      "rows_tokens": [[10, 10, 10]] * 2,
      "items/piqa": ["1100", "1000"],
    }
  )
  assert noise._paired_stderr(g, "nll", 16, 3) == pytest.approx(1 / 30, rel=1e-12)
  assert noise._paired_stderr(g, "acc", 16, 3) == 0.25
  assert noise._paired_stderr(pd.concat([g, g.iloc[:1]]), "nll", 16, 3) is None

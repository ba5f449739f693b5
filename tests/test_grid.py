"""The PTQ grid: plan expansion and validation, compile counts, resume after kill -9."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from kbit_jax.analysis import results
from kbit_jax.config import files
from kbit_jax.evals import evaluate
from kbit_jax.grid import cost as grid_cost
from kbit_jax.grid import describe, driver
from kbit_jax.grid import plan as grid_plan
from kbit_jax.model import presets, transformer
from kbit_jax.quant import bits as quant_bits
from kbit_jax.quant import reference
from kbit_jax.quant.spec import QuantSpec
from kbit_jax.train import checkpoint, loop, sharding

grid_config = files.load_module(pathlib.Path(__file__).resolve().parents[1] / "configs" / "grid.py")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg=None, **grid_overrides):
  c = grid_config.get_config(arg)
  for key, value in grid_overrides.items():
    c.grid[key] = value
  return c


# ----------------------------------------------------------------------------- plan


def test_default_grid_expands_with_one_16_bit_cell_per_model():
  plan = grid_plan.make_plan(_config(seeds=(0, 1)))
  assert [m.name for m in plan.models] == [f"s{i}-seed{s}" for i in (1, 2, 3, 4) for s in (0, 1)]
  for m in plan.models:
    assert len(m.cells) == 1 + 5 * 4 * 3  # k16 + k(3,4,5,6,8) x 4 dtypes x 3 blocks
    assert [c.spec.bits for c in m.cells].count(16) == 1
  ids = [c.id for c in plan.cells]
  assert len(ids) == len(set(ids)) == 8 * 61
  k16 = plan.models[0].cells[0]
  assert k16.key_dict["dtype"] == "none" and k16.key_dict["blocksize"] is None
  floats = [c for c in plan.cells if c.spec.dtype == "float"]
  assert {(c.spec.bits, c.key_dict["exponent_bits"]) for c in floats} == {
    (3, 2),
    (4, 3),
    (5, 3),
    (6, 3),
    (8, 3),
  }  # the study's exponent bits, resolved


def test_grid_without_16_bits_and_16_bits_alone():
  assert all(c.spec.quantized for c in grid_plan.make_plan(_config("runlocal", bits=(4,))).cells)
  only16 = grid_plan.make_plan(_config("runlocal", bits=(16,), dtypes=(), blocksizes=()))
  assert len(only16.cells) == 1


def test_axis_accepts_a_comma_list():
  plan = grid_plan.make_plan(_config("runlocal", sizes=("s0,s1",)))
  assert [m.preset for m in plan.models] == ["s0", "s1"]


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(blocksizes=(64, 100)), r"grid cell s0-seed0 k3 int B100 p0: quant.blocksize=100"),
    (dict(bits=(4, 9)), r"grid cell s0-seed0 k9 int B64 p0: quant.bits=9"),
    (dict(dtypes=("int", "fp")), r"grid cell s0-seed0 k3 fp B64 p0: quant.dtype='fp'"),
    (dict(targets="attn,head"), r"grid cell s0-seed0 k16: quant.targets='attn,head'"),
    (dict(outlier_shares=(1.5,)), r"k3 int B64 p1.5: quant.outlier_share=1.5"),
    (dict(sizes=("s0", "s99")), r"model.preset='s99' is unknown"),
    (dict(bits=(3, 3)), r"grid.bits=\(3, 3\) repeats a value"),
  ],
)
def test_bad_cell_is_reported_at_plan_time(overrides, message):
  with pytest.raises(ValueError, match=message):
    grid_plan.make_plan(_config("runlocal", **overrides))


def test_act_bits_and_tokens_axes_add_cells_and_keep_the_default_keys():
  base = grid_plan.make_plan(_config("runlocal"))
  plan = grid_plan.make_plan(_config("runlocal", act_bits=(8, 16), tokens=(5120, 10240)))
  assert [m.name for m in plan.models] == ["s0-seed0-D5120", "s0-seed0-D10240"]
  assert [m.config.train.steps for m in plan.models] == [20, 40]
  assert [m.train_tokens for m in plan.models] == [5120, 10240]
  assert len(plan.cells) == 2 * 2 * len(base.cells)
  assert len({c.id for c in plan.cells}) == len(plan.cells)
  a8 = [c for c in plan.models[0].cells if c.spec.act_bits == 8]
  assert a8[0].name == "s0-seed0-D5120 k16 a8" and a8[0].key_dict["act_bits"] == 8
  assert all("act_bits" not in c.key_dict for c in base.cells)
  same_budget = grid_plan.make_plan(_config("runlocal", act_bits=(16,)))
  assert [c.id for c in same_budget.cells] == [c.id for c in base.cells]


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(act_bits=(12, 16)), r"grid cell s0-seed0 k16 a12: quant.act_bits=12"),
    (dict(act_bits=(1,)), r"grid cell s0-seed0 k16 a1: quant.act_bits=1"),
    (dict(tokens=(0,)), r"grid.tokens=\(0,\): 0 is not a positive int"),
  ],
)
def test_bad_act_bits_and_tokens_are_plan_time_errors(overrides, message):
  with pytest.raises(ValueError, match=message):
    grid_plan.make_plan(_config("runlocal", **overrides))


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(dtypes=()), "the grid has no cells: grid.dtypes is empty"),
    (dict(sizes=()), "the grid has no cells: grid.sizes is empty"),
    (dict(bits=(), seeds=()), "grid.seeds, grid.bits is empty"),
  ],
)
def test_empty_grid_is_an_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    grid_plan.make_plan(_config("runlocal", **overrides))


def test_bad_per_size_and_eval_sections_are_named():
  c = _config("runlocal")
  c.per_size.s0.train.stepz = 3
  with pytest.raises(ValueError, match=r"per_size.s0.train.stepz is unknown"):
    grid_plan.make_plan(c)
  c = _config("runlocal")
  c.per_size.s0.train.batch_size = 12
  with pytest.raises(
    ValueError,
    match=r"grid size s0-seed0: train.batch_size=12 is not "
    "divisible",
  ):
    grid_plan.make_plan(c)
  c = _config("runlocal")
  c.eval.tasks = "lambada,squad"
  with pytest.raises(ValueError, match=r"grid eval section: eval.tasks: task 'squad'"):
    grid_plan.make_plan(c)
  c = _config("runlocal")
  c.grid.sizez = ("s0",)
  with pytest.raises(ValueError, match=r"grid.sizez is unknown"):
    grid_plan.make_plan(c)


def test_plan_text_and_estimate():
  plan = grid_plan.make_plan(_config("runlocal"))
  cost = grid_cost.estimate(plan, peak_flops=1e11)
  m = cost["per_model"]["s0-seed0"]
  assert m["train_tokens"] == 20 * 8 * 32 and m["cells"] == 7
  assert m["ppl_tokens"] == 8 * 32 and m["task_tokens"] > 0
  assert cost["total_s"] == pytest.approx(cost["train_s"] + cost["eval_s"])
  text = describe.format_plan(plan, cost, {plan.cells[0].id})
  assert "1 models, 7 cells (1 already finished)" in text
  assert "estimated time" in text and "100 GFLOP/s" in text


# ----------------------------------------------------------------------------- quantizer


@pytest.mark.parametrize(
  "spec",
  [
    QuantSpec(bits=3, dtype="float", targets=("attn", "mlp", "embed")),
    QuantSpec(bits=4, dtype="nf", double_quant=True, blocksize=256),
    QuantSpec(bits=5, dtype="int_centered", blocksize=0),
    QuantSpec(bits=4, dtype="dynamic", outlier_share=0.1),
    QuantSpec(bits=3, dtype="quantile"),
  ],
)
def test_layout_spec_with_codebook_equals_the_spec(spec):
  shapes = nn.unbox(quant_bits.preset_shapes(presets.get_preset("s0"))["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32), shapes)
  quantize = jax.jit(reference.fake_quant_params, static_argnums=1)
  want = quantize(params, spec)
  got = quantize(params, reference.layout_spec(spec), reference.spec_codebook(spec))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), want, got)
  assert (reference.layout_spec(spec) == spec) == spec.data_dependent


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The tiny grid run in this process (8 fake devices train, one evaluates)."""
  workdir = str(tmp_path_factory.mktemp("grid"))
  plan = grid_plan.make_plan(_config("runlocal"))
  summary = driver.run(plan, workdir)
  return plan, workdir, summary


def _records(workdir):
  return {r["id"]: r for r in results.load_records(os.path.join(workdir, "results"))}


def test_tiny_grid_writes_one_record_per_cell(tiny_run):
  plan, workdir, summary = tiny_run
  records = _records(workdir)
  assert summary["evaluated"] == 7 and set(records) == {c.id for c in plan.cells}
  for r in records.values():
    assert r["key"]["preset"] == "s0" and r["model"]["params"] == 77_040
    assert set(r["metrics"]) == {
      "lambada",
      "hellaswag",
      "piqa",
      "winogrande",
      "mean",
      "ppl/validation",
    }
    assert r["git_commit"] and r["time"]["cell_s"] > 0
  by_name = {r["name"]: r for r in records.values()}
  assert by_name["s0-seed0 k16"]["bits"]["total_bits"] == 16 * 77_040
  # k4 int B64 on attn, mlp, embed of s0 (d 16, d_ff 64, vocab 4096, 1 layer): 68,608
  # quantized values (4 x 16 x 16 + 2 x 16 x 64 + 4096 x 16) in 1,072 blocks of 64 (every
  # tensor a multiple of 64): 68,608 x 4 + 1,072 x 16 = 291,584 bits = 4.25 per value; the
  # other 8,432 parameters at 16 bits: 426,496 in all.
  assert by_name["s0-seed0 k4 int B64 p0"]["bits"] == {
    "quantized_params": 68_608,
    "quantized_bits_per_param": 4.25,
    "total_bits": 426_496,
    "bits_per_param": 426_496 / 77_040,
  }


# Two cells of the runlocal grid as this test's fixture makes them (s0 trained 20 steps
# on 8 fake CPU devices, evaluated on one; 4 items per task, 256 perplexity tokens), from
# a real run at the commit that introduced them (jax 0.10.2, XLA:CPU). A change here means
# training, quantization or evaluation changed: update these only when that was the
# intent, by pasting the new values of the failing run (the message prints them).
GOLDEN = {
  "s0-seed0 k16": dict(
    mean_acc=0.3125,
    lambada_ppl=3738.999079678712,
    hellaswag_acc=0.5,
    hellaswag_acc_norm=0.25,
    piqa_acc=0.5,
    winogrande_acc=0.25,
    ppl=2730.0417516361113,
    nll=7.91207218170166,
  ),
  "s0-seed0 k4 int B64 p0": dict(
    mean_acc=0.3125,
    lambada_ppl=3722.614632619262,
    hellaswag_acc=0.5,
    hellaswag_acc_norm=0.25,
    piqa_acc=0.5,
    winogrande_acc=0.25,
    ppl=2732.620503787193,
    nll=7.913016319274902,
  ),
}


def test_golden_records(tiny_run):
  _, workdir, _ = tiny_run
  by_name = {r["name"]: r["metrics"] for r in _records(workdir).values()}
  for name, want in GOLDEN.items():
    m = by_name[name]
    got = dict(
      mean_acc=m["mean"]["acc"],
      lambada_ppl=m["lambada"]["perplexity"],
      hellaswag_acc=m["hellaswag"]["acc"],
      hellaswag_acc_norm=m["hellaswag"]["acc_norm"],
      piqa_acc=m["piqa"]["acc"],
      winogrande_acc=m["winogrande"]["acc"],
      ppl=m["ppl/validation"]["perplexity"],
      nll=m["ppl/validation"]["nll"],
    )
    message = f"{name}: golden record changed; got {got} (see the comment above GOLDEN)"
    # Accuracies are counts of 4 items: exact. Perplexities: 1e-6 relative, the float32
    # reduction order of an unchanged program on another CPU.
    assert {k: v for k, v in got.items() if "acc" in k} == {
      k: v for k, v in want.items() if "acc" in k
    }, message
    for k in ("lambada_ppl", "ppl", "nll"):
      assert got[k] == pytest.approx(want[k], rel=1e-6), message


def test_compiles_do_not_grow_with_k_and_dtype(tiny_run):
  """One quantizer compile per layout for data-free types, one per k for quantile, and
  the evaluation executables of the 16-bit cell are reused by every other cell."""
  plan, workdir, _ = tiny_run
  records = _records(workdir)
  order = plan.cells
  compiles = [records[c.id]["compiles"]["cell"] for c in order]
  assert order[0].spec.bits == 16 and compiles[0] >= 2  # evaluation executables
  data_free = [n for c, n in zip(order, compiles) if c.spec.quantized and not c.spec.data_dependent]
  assert data_free[0] == 1 and data_free[1:] == [0] * (len(data_free) - 1)
  assert [n for c, n in zip(order, compiles) if c.spec.data_dependent] == [1, 1]
  assert records[order[-1].id]["compiles"]["run"] >= sum(compiles)  # + training


def test_16_bit_cell_equals_the_float_models_own_evaluation(tiny_run):
  plan, workdir, _ = tiny_run
  run = plan.models[0]
  mesh = sharding.make_mesh(
    ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1]
  )
  abstract = loop.Trainer(run.config, mesh).abstract_state().params
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "models", run.name), 1)
  params = ckpt.restore_params(abstract)
  ckpt.close()
  cfg = ml_collections.ConfigDict(
    dict(data=run.config.data.to_dict(), eval=plan.config.eval.to_dict())
  )
  want = evaluate.evaluate(params, loop.make_model(run.config), cfg)
  got = _records(workdir)[run.cells[0].id]["metrics"]
  assert set(got) == set(want)
  for task in want:
    for metric, value in want[task].items():
      np.testing.assert_allclose(got[task][metric], value, rtol=1e-6, err_msg=f"{task}/{metric}")


def test_rerun_skips_finished_cells(tiny_run, capsys):
  plan, workdir, _ = tiny_run
  before = {p.name: p.stat().st_mtime_ns for p in os.scandir(os.path.join(workdir, "results"))}
  summary = driver.run(plan, workdir)
  assert summary["evaluated"] == 0 and summary["compiles"] == 0
  after = {p.name: p.stat().st_mtime_ns for p in os.scandir(os.path.join(workdir, "results"))}
  assert after == before
  assert "7 cells (7 already finished)" in capsys.readouterr().out


def _grid_command(workdir):
  return [
    sys.executable,
    "-m",
    "kbit_jax.main",
    "grid",
    "--config",
    os.path.join(REPO, "configs", "grid.py") + ":runlocal",
    "--workdir",
    workdir,
  ]


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(tiny_run, tmp_path):
  """Killed after some cells (the trained model is copied: train/loop.py's own resume is
  tests/test_resume.py's job), rerun: the same records as the in-process run."""
  plan, workdir, _ = tiny_run
  shutil.copytree(os.path.join(workdir, "models"), tmp_path / "models")
  results_dir = tmp_path / "results"
  log = tmp_path / "killed.log"
  with open(log, "w") as out:
    proc = subprocess.Popen(_grid_command(str(tmp_path)), cwd=REPO, stdout=out, stderr=out)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if len(results.finished_ids(results_dir)) >= 2:
        break
      time.sleep(0.02)
    assert proc.poll() is None, f"the grid ended before the kill:\n{log.read_text()[-3000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  partial = results.finished_ids(results_dir)
  assert 2 <= len(partial) < len(plan.cells)
  results.load_records(results_dir)  # every record the killed run left is whole
  rerun = subprocess.run(_grid_command(str(tmp_path)), cwd=REPO, capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"{len(plan.cells) - len(partial)} evaluated now" in rerun.stdout
  resumed, reference_run = _records(str(tmp_path)), _records(workdir)
  assert set(resumed) == set(reference_run)
  assert sorted(p for p in os.listdir(results_dir) if p.endswith(".json")) == sorted(
    f"{i}.json" for i in resumed
  )
  for cell_id, record in reference_run.items():
    got = resumed[cell_id]
    assert got["key"] == record["key"] and got["bits"] == record["bits"]
    for task, metrics in record["metrics"].items():
      for metric, value in metrics.items():
        np.testing.assert_allclose(
          got["metrics"][task][metric],
          value,
          rtol=1e-6,
          err_msg=f"{record['name']} {task}/{metric}",
        )


@pytest.fixture(scope="module")
def axes_run(tmp_path_factory):
  """A tiny grid over act_bits x tokens with probes on."""
  workdir = str(tmp_path_factory.mktemp("axes"))
  c = _config("runlocal", act_bits=(8, 16), tokens=(2560, 5120), bits=(4, 16), dtypes=("int",))
  c.eval.update(dict(tasks="piqa", probes="1,2", probe_items=4))
  plan = grid_plan.make_plan(c)
  return plan, workdir, driver.run(plan, workdir)


def test_act_bits_cells_run_with_one_evaluation_net_per_act_bits(axes_run):
  plan, workdir, summary = axes_run
  records = _records(workdir)
  assert summary["evaluated"] == len(plan.cells) == 8
  for i, m in enumerate(plan.models):
    assert os.path.isdir(os.path.join(workdir, "models", m.name))
    a8_k16, a8_k4, a16_k16, a16_k4 = [records[c.id]["compiles"]["cell"] for c in m.cells]
    assert a8_k4 <= 1 and a16_k4 == 0  # the k4 quantizer; the a's net reused
    if i == 0:
      assert a8_k16 >= 2  # the a8 net's executables (a16's may be cached by earlier tests)
    else:
      assert a8_k16 == a16_k16 == 0  # the same net and shapes: reused
  by_name = {r["name"]: r["metrics"] for r in records.values()}
  for name, metrics in by_name.items():
    assert {"probe/k1", "probe/k2", "probe/summary"} <= set(metrics), name
  first = plan.models[0].name
  assert (
    by_name[f"{first} k16 a8"]["ppl/validation"]["perplexity"]
    != by_name[f"{first} k16"]["ppl/validation"]["perplexity"]
  )


@pytest.mark.slow
def test_compile_cache_reuses_executables_with_equal_results(tiny_run, tmp_path):
  """`kbit grid --compile_cache DIR`: a rerun of the cells loads its executables from DIR
  (compile_cache.py) and writes the same records; `--compile_cache=` turns it off."""
  _, workdir, _ = tiny_run
  cache = tmp_path / "xla"

  def run(name, cache_flag):
    shutil.copytree(os.path.join(workdir, "models"), tmp_path / name / "models")
    out = subprocess.run(
      [*_grid_command(str(tmp_path / name)), cache_flag], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, _records(str(tmp_path / name))

  _, first = run("first", f"--compile_cache={cache}")
  entries = sorted(os.listdir(cache))
  assert entries, "the first run stored its executables"
  out, second = run("second", f"--compile_cache={cache}")
  loaded = re.search(
    r"compiles per grid: (\d+) .*, (\d+) of them loaded from the "
    r"compilation cache",
    out,
  )
  assert loaded and int(loaded.group(2)) >= 1, out[-2000:]
  out, third = run("third", "--compile_cache=")
  assert "compiles per grid" in out and "compilation cache" not in out
  assert sorted(os.listdir(cache)) == entries, "an off cache is neither read nor written"
  assert set(first) == set(second) == set(third)
  for cell_id, record in first.items():
    for other in (second[cell_id], third[cell_id]):
      for task, metrics in record["metrics"].items():
        for metric, value in metrics.items():
          np.testing.assert_allclose(
            other["metrics"][task][metric],
            value,
            rtol=1e-6,
            err_msg=f"{record['name']} {task}/{metric}",
          )


def test_grid_evaluates_a_scan_layers_model_unrolled(tmp_path):
  """base.model.scan_layers=True: training checkpoints stacked layers; the grid unstacks
  them (transformer.unstack_layers) and evaluates the unrolled net, whose 16-bit cell equals
  evaluating those parameters directly (1e-6)."""
  config = _config("runlocal", bits=(4, 16), dtypes=("int",))
  config.base.model.scan_layers = True
  plan = grid_plan.make_plan(config)
  assert driver.run(plan, str(tmp_path))["evaluated"] == 2
  run = plan.models[0]
  assert run.cells[0].spec.bits == 16
  mesh = sharding.make_mesh(
    ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1]
  )
  ckpt = checkpoint.Checkpointer(os.path.join(tmp_path, "models", run.name), 1)
  stacked = ckpt.restore_params(loop.Trainer(run.config, mesh).abstract_state().params)
  ckpt.close()
  assert "layers" in stacked and "layer_0" not in stacked
  cfg = ml_collections.ConfigDict(
    dict(data=run.config.data.to_dict(), eval=plan.config.eval.to_dict())
  )
  want = evaluate.evaluate(
    transformer.unstack_layers(stacked), loop.make_model(run.config, scan_layers=False), cfg
  )
  got = _records(str(tmp_path))[run.cells[0].id]["metrics"]
  for task in want:
    for metric, value in want[task].items():
      np.testing.assert_allclose(got[task][metric], value, rtol=1e-6, err_msg=f"{task}/{metric}")
  # The same workdir with the layers unrolled again: refused before any work, since its
  # checkpoint could not be restored (checkpoint.check_workdir).
  config.base.model.scan_layers = False
  with pytest.raises(
    ValueError,
    match=r"grid size s0-seed0: .* holds checkpoints of another "
    r"model: model.scan_layers=False but the saved model "
    r"has True",
  ):
    driver.run(grid_plan.make_plan(config), str(tmp_path))

"""The grid on imported Hugging Face models (configs/grid_pretrained.py): no training,
the import's architecture, parameters and tokenizer; a missing import is a clear error
before any work, and a dry run lists it.

One tiny model per family of tests/test_import_hf.py's configs (GPT-2: learned positions,
tokenizer from vocab.json + merges.txt; GPT-NeoX: rotary, parallel residual, tokenizer.json;
OPT: position offset, ReLU, vocab.json + merges.txt; BLOOM: ALiBi, embedding LayerNorm) and
tests/test_families.py's Llama (RMSNorm, SwiGLU, 6 query heads on 2 key/value heads,
untied head), trained for 100 steps with torch, are saved with `save_pretrained`,
imported, and stand in for the sizes `gpt2`, `pythia-70m`, `opt-125m`, `bloom-560m` and
`llama-3.2-1b`: their shapes are not those presets', so everything must come from the
import. The 16-bit cell's perplexity is checked
against transformers' own loss on the tokens the grid scored (the validation split under the
import's tokenizer), the 4-bit cell's against the import quantized and evaluated without the
grid.
"""
# ruff: noqa: E402 (the imports below wait for pytest.importorskip)

import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip(
  "torch", reason="needs torch (CPU) and transformers, see tests/test_import_hf.py"
)
pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from test_families import family_configs
from test_import_hf import EOS, VOCAB, _configs, save_tokenizer

from kbit_jax.analysis import results
from kbit_jax.config import files
from kbit_jax.convert import importer
from kbit_jax.evals import perplexity
from kbit_jax.grid import cost as grid_cost
from kbit_jax.grid import describe, driver, multihost
from kbit_jax.grid import plan as grid_plan
from kbit_jax.model import presets, transformer
from kbit_jax.quant import reference
from kbit_jax.train import data, sharding

grid_pretrained = files.load_module(
  pathlib.Path(__file__).resolve().parents[1] / "configs" / "grid_pretrained.py"
)

pytestmark = pytest.mark.filterwarnings(
  "ignore:Implicit conversion of an array to a dtype:DeprecationWarning"
)

# size of configs/grid_pretrained.py -> (tiny model of test_import_hf, hub id in records)
MODELS = {
  "gpt2": ("gpt2", "test/tiny-gpt2"),
  "pythia-70m": ("neox_parallel", "test/tiny-neox"),
  "opt-125m": ("opt_pre_ln", "test/tiny-opt"),
  "bloom-560m": ("bloom", "test/tiny-bloom"),
  "llama-3.2-1b": ("llama", "test/tiny-llama"),
}
VOCAB_MERGES = ("gpt2", "opt_pre_ln")  # saved as OPT's and GPT-2's hub dirs: no tokenizer.json
SEQ_LEN = 32
MAX_LEN = 256  # positions: the tiny tokenizer's task continuations reach ~70 tokens
TRAIN_STEPS = 100


def _train(m, tokens_T, steps=TRAIN_STEPS, batch=16):
  """A few Adam steps on the corpus's train split (ppl ~300 -> ~50), so that the model
  has something for quantization to lose: a random model's perplexity moves either way
  (4-bit rounds small weights to 0, which can sharpen random logits' loss)."""
  rng = np.random.default_rng(0)
  opt = torch.optim.Adam(m.parameters(), lr=3e-3)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # 2 shared cores: one thread is ~5x faster for these
  try:
    m.train()
    for _ in range(steps):
      starts = rng.integers(0, len(tokens_T) - SEQ_LEN - 1, batch)
      ids = torch.tensor(np.stack([tokens_T[s : s + SEQ_LEN + 1] for s in starts]))
      opt.zero_grad()
      m(ids, labels=ids).loss.backward()
      opt.step()
  finally:
    torch.set_num_threads(threads)
  return m.eval()


def _save_tiny_models(hf_root):
  """{size: torch model}; each saved to hf_root/<size> with a tiny byte-level BPE."""
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
    [data.corpus_text("validation")[:50_000]],
    vocab_size=VOCAB,
    special_tokens=[EOS],
    show_progress=False,
  )
  eos_id = bpe.token_to_id(EOS)
  configs = {**_configs(eos_id), **family_configs(dict(eos_token_id=eos_id))}
  tokens_T = np.array(bpe.encode(data.corpus_text("train")[:100_000]).ids, np.int64)
  models = {}
  for size, (name, _) in MODELS.items():
    cls, cfg = configs[name]
    cfg.max_position_embeddings = MAX_LEN  # GPT-2: n_positions
    torch.manual_seed(0)
    models[size] = m = _train(cls(cfg), tokens_T)
    out = hf_root / size
    m.save_pretrained(out)
    save_tokenizer(bpe, out, vocab_merges=name in VOCAB_MERGES)
  return models


def _grid_config(hf_root, import_root):
  """configs/grid_pretrained.py for the tiny models, with 2 cells each (k4, k16)."""
  c = grid_pretrained.get_config(
    f"families=gpt2+pythia+opt+bloom+llama,runlocal,hf_root={hf_root},import_root={import_root}"
  )
  assert c.grid.sizes == tuple(MODELS)
  c.pretrained.repos = tuple((size, hub_id) for size, (_, hub_id) in MODELS.items())
  c.grid.update(dict(bits=(4, 16), dtypes=("int",), blocksizes=(64,)))
  c.base.data.seq_len = SEQ_LEN
  c.eval.update(dict(items_per_task=4, batch_size=4, ppl_max_batches=2))
  return c


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """(config, {size: torch model}): tiny models downloaded to hf/ and imported."""
  root = tmp_path_factory.mktemp("pretrained")
  models = _save_tiny_models(root / "hf")
  for size in MODELS:
    importer.import_hf(root / "hf" / size, root / "imported" / size, verbose=False)
  return _grid_config(root / "hf", root / "imported"), models


@pytest.fixture(scope="module")
def grid_run(imported, tmp_path_factory):
  config, models = imported
  workdir = str(tmp_path_factory.mktemp("grid"))
  plan = grid_plan.make_plan(config, require_imports=True)
  return plan, workdir, driver.run(plan, workdir), models


def _records(workdir):
  return {r["name"]: r for r in results.load_records(os.path.join(workdir, "results"))}


def _torch_perplexity(m, run, eval_cfg):
  """transformers' perplexity on the rows perplexity.perplexity scores: the first
  ppl_max_batches x batch_size rows of seq_len next-token predictions."""
  stream_T = data.token_stream(run.config.data, eval_cfg.ppl_split)
  rows, L = eval_cfg.ppl_max_batches * eval_cfg.batch_size, run.config.data.seq_len
  ids_RxL1 = np.stack([stream_T[r * L : r * L + L + 1] for r in range(rows)]).astype(np.int64)
  with torch.no_grad():
    ids = torch.tensor(ids_RxL1)
    return float(torch.exp(m(ids, labels=ids).loss)), rows * L


def _direct_ppl(run, spec, eval_cfg):
  """Perplexity of the import fake-quantized to `spec`, without the grid."""
  mesh = multihost.eval_mesh(run.config.mesh)
  _, params = importer.load_imported(
    run.pretrained.import_dir, mesh, sharding.logical_rules(run.config.mesh)
  )
  quantized = jax.jit(reference.fake_quant_params, static_argnums=1)(params, spec)
  net = transformer.Transformer(run.architecture)
  return perplexity.perplexity(
    quantized,
    net,
    run.config.data,
    eval_cfg.ppl_split,
    eval_cfg.batch_size,
    eval_cfg.ppl_max_batches,
  )["perplexity"]


def test_plan_uses_the_imported_architecture_and_tokenizer(grid_run):
  plan, _, _, _ = grid_run
  assert [m.name for m in plan.models] == list(MODELS)
  for run in plan.models:
    arch = importer.read_architecture(run.pretrained.import_dir)
    assert run.architecture == arch != presets.get_preset(run.preset)  # not the table's
    assert run.config.data.tokenizer == run.pretrained.import_dir
    assert run.train_tokens == 0 and len(run.cells) == 2
    assert {c.key_dict["hub_id"] for c in run.cells} == {MODELS[run.preset][1]}
  cost = grid_cost.estimate(plan, peak_flops=1e11)
  assert cost["train_s"] == 0 and all(m["train_flops"] == 0 for m in cost["per_model"].values())
  text = describe.format_plan(plan, cost)
  assert "imported" in text and "test/tiny-neox" in text and "MISSING" not in text


def test_grid_evaluates_imported_models_without_training(grid_run):
  plan, workdir, summary, models = grid_run
  assert summary["evaluated"] == len(plan.cells) == 2 * len(MODELS)
  assert not os.path.exists(os.path.join(workdir, "models"))
  records = _records(workdir)
  assert set(records) == {c.name for c in plan.cells}
  for run in plan.models:
    counts = presets.param_counts(run.architecture)
    assert counts["total"] == sum(p.numel() for p in models[run.preset].parameters())
    k16, k4 = records[f"{run.name} k16"], records[f"{run.name} k4 int B64 p0"]
    for r in (k16, k4):
      assert r["key"]["hub_id"] == MODELS[run.preset][1]
      assert r["model"]["import_dir"] == run.pretrained.import_dir
      assert r["model"]["params"] == counts["total"] and "train_steps" not in r["model"]
      assert set(r["metrics"]) >= {"lambada", "hellaswag", "piqa", "winogrande", "mean"}
    assert k16["bits"]["total_bits"] == 16 * counts["total"]
    assert k4["bits"]["total_bits"] < k16["bits"]["total_bits"]
    assert k4["bits"]["quantized_bits_per_param"] == pytest.approx(4 + 16 / 64, rel=1e-3)

    ppl16 = k16["metrics"]["ppl/validation"]
    want, tokens = _torch_perplexity(models[run.preset], run, plan.config.eval)
    assert ppl16["tokens"] == tokens
    # measured: relative differences 1e-7 to 5e-7 (float32 sums in another order)
    np.testing.assert_allclose(ppl16["perplexity"], want, rtol=1e-5, err_msg=run.name)
    # 4-bit: what the cell's spec gives on the import's parameters; for models this
    # small and briefly trained, 4-bit B64 moves perplexity by < 1% (either way)
    ppl4 = k4["metrics"]["ppl/validation"]["perplexity"]
    np.testing.assert_allclose(
      ppl4, _direct_ppl(run, run.cells[1].spec, plan.config.eval), rtol=1e-5, err_msg=run.name
    )
    assert ppl4 != ppl16["perplexity"] and ppl4 >= ppl16["perplexity"] * (1 - 1e-2)


def test_rerun_finds_every_cell_finished(grid_run, imported, capsys):
  plan, workdir, _, _ = grid_run
  again = grid_plan.make_plan(imported[0], require_imports=True)
  assert [c.id for c in again.cells] == [c.id for c in plan.cells]
  summary = driver.run(again, workdir)
  assert summary["evaluated"] == 0 and summary["compiles"] == 0
  n = len(plan.cells)
  assert f"{n} cells ({n} already finished)" in capsys.readouterr().out
  assert not os.path.exists(os.path.join(workdir, "models"))


def test_missing_import_is_an_error_before_any_work_and_listed_by_dry_run(tmp_path, capsys):
  config = _grid_config(tmp_path / "hf", tmp_path / "nothing")
  missing = str(tmp_path / "nothing" / "pythia-70m")
  command = f"kbit import --hf_dir {tmp_path / 'hf' / 'pythia-70m'} --workdir {missing}"
  message = (
    rf"grid size pythia-70m: its imported model {re.escape(missing)} "
    r"\(pretrained.import_root/pythia-70m\) is missing .*" + re.escape(command)
  )
  with pytest.raises(
    ValueError,
    match=rf"{len(MODELS)} imported model\(s\) of the grid are missing"
    r"(.|\n)*" + message,
  ):
    grid_plan.make_plan(config, require_imports=True)

  plan = grid_plan.make_plan(config)  # a dry run needs no imports
  workdir = tmp_path / "work"
  summary = driver.run(plan, str(workdir), dry_run=True)
  assert summary["todo"] == 2 * len(MODELS)
  out = capsys.readouterr().out
  assert out.count("MISSING") == len(MODELS) and "kbit import --hf_dir" in out and missing in out
  with pytest.raises(ValueError, match=r"grid size gpt2: its imported model"):
    driver.run(plan, str(workdir))
  assert not os.path.exists(workdir / "models") and not os.path.exists(workdir / "results")


@pytest.mark.parametrize(
  "edit, match",
  [
    (
      lambda c: c.pretrained.update(dict(repos=(("gpt2", "x"),))),
      r"grid size 'pythia-70m' has no pretrained.repos entry; allowed sizes: \['gpt2'\]",
    ),
    (
      lambda c: c.grid.update(dict(seeds=(0, 1))),
      r"grid.seeds=\(0, 1\), grid.tokens=\(\): a pretrained grid evaluates each imported "
      r"model once",
    ),
    (
      lambda c: c.pretrained.update(dict(import_dirs="x")),
      r"pretrained.import_dirs is unknown; allowed: \['hf_root', 'import_root'",
    ),
    (
      lambda c: c.base.data.update(dict(seq_len=MAX_LEN + 1)),
      rf"grid size gpt2 \(imported .*\): data.seq_len={MAX_LEN + 1} exceeds the imported "
      rf"model's learned positions \(max_len={MAX_LEN}\)",
    ),
    (
      lambda c: c.base.mesh.update(dict(tensor=8)),  # 8 fake devices; tiny models' heads
      r"grid size gpt2 \(imported .*\): mesh.tensor=8 does not divide the imported model's "
      r"num_heads=",
    ),
  ],
)
def test_bad_pretrained_sections_are_plan_time_errors(imported, edit, match):
  roots = imported[0].pretrained
  config = _grid_config(roots.hf_root, roots.import_root)
  edit(config)
  with pytest.raises(ValueError, match=match):
    grid_plan.make_plan(config)


def test_cli_refuses_a_missing_import_before_any_work(tmp_path):
  """`kbit grid` (main.py) plans with require_imports unless --dry_run: one clear line."""
  workdir = tmp_path / "w"
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "kbit_jax.main",
      "grid",
      "--config",
      f"configs/grid_pretrained.py:families=gpt2,runlocal,import_root={tmp_path / 'none'}",
      "--workdir",
      str(workdir),
    ],
    cwd=os.path.dirname(os.path.dirname(__file__)),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 1
  assert "kbit grid: invalid config: 1 imported model(s) of the grid are missing" in out.stderr
  assert "kbit import --hf_dir" in out.stderr and "Traceback" not in out.stderr
  assert not workdir.exists()


def test_calibrated_methods_on_an_imported_model_on_a_sharded_mesh(imported, tmp_path):
  """gptq and awq on the imported Llama (RMSNorm, SwiGLU, grouped-query attention): the
  calibration tokens come from its own tokenizer, the statistics are computed on the
  evaluation mesh (fsdp 2 x tensor 2: each 48 x 48 / 80 x 80 Hessian split over the 4
  devices) and give the records of a one-device run up to float32 reduction order."""
  roots = imported[0].pretrained

  def run(fsdp, tensor, workdir):
    c = _grid_config(roots.hf_root, roots.import_root)
    c.grid.sizes = ("llama-3.2-1b",)
    c.pretrained.repos = (("llama-3.2-1b", MODELS["llama-3.2-1b"][1]),)
    c.grid.update(dict(bits=(3, 16), methods=("rtn", "gptq", "awq")))
    c.base.mesh.update(dict(fsdp=fsdp, tensor=tensor))
    plan = grid_plan.make_plan(c, require_imports=True)
    assert [x.method for x in plan.cells] == ["rtn", "rtn", "gptq", "awq"]
    driver.run(plan, str(workdir))
    return _records(str(workdir))

  sharded, single = run(2, 2, tmp_path / "sharded"), run(1, 1, tmp_path / "single")
  assert (
    set(sharded)
    == set(single)
    == {
      "llama-3.2-1b k16",
      "llama-3.2-1b k3 int B64 p0",
      "llama-3.2-1b k3 int B64 p0 gptq",
      "llama-3.2-1b k3 int B64 p0 awq",
    }
  )
  rtn = single["llama-3.2-1b k3 int B64 p0"]["metrics"]["ppl/validation"]["perplexity"]
  for name in ("gptq", "awq"):
    a, b = (r[f"llama-3.2-1b k3 int B64 p0 {name}"] for r in (sharded, single))
    assert a["key"] == b["key"] and a["calibration"]["tokens"] == 16 * SEQ_LEN
    ppl_a, ppl_b = (r["metrics"]["ppl/validation"]["perplexity"] for r in (a, b))
    np.testing.assert_allclose(ppl_a, ppl_b, rtol=1e-3, err_msg=name)
    assert ppl_b != rtn
  # Llama's scales all fold (q/k/v and gate/up into the RMSNorms, down into up; GQA's
  # out gets none): no extra storage.
  awq = single["llama-3.2-1b k3 int B64 p0 awq"]["bits"]
  assert (
    awq["awq_scale_bits"] == 0
    and awq["total_bits"] == (single["llama-3.2-1b k3 int B64 p0"]["bits"]["total_bits"])
  )

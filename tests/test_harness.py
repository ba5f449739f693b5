"""The lm-evaluation-harness bridge (kbit_jax/evals/harness): `lm_eval --model kbit` equals
`lm_eval --model hf` on the same checkpoint, and both equal kbit's built-in evaluation.

Tiny GPT-2 and GPT-NeoX models (tests/test_import_hf.py's tokenizer and weight draw, 256
positions so the tasks' requests fit) are saved with `save_pretrained` and `kbit import`ed;
the four study tasks read the same local items (built-in records in the official formats)
through the offline YAMLs. Log-likelihoods agree to 1e-4 (float32 sums of ~30 token
log-probs of magnitude ~5), acc and acc_norm exactly. A trained model (2 steps of s0)
evaluates from its workdir. About 2-3 minutes on 2 CPU cores.
"""
# ruff: noqa: E402 (the imports below wait for pytest.importorskip)

import json
import logging
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
torch = pytest.importorskip("torch", reason="needs torch (CPU) and transformers")
transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval", reason='needs pip install "kbit-jax[harness]"')
tokenizers = pytest.importorskip("tokenizers")

from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from test_import_hf import EOS, MODEL_VOCAB, VOCAB, _randomize, save_tokenizer

from kbit_jax.analysis import results
from kbit_jax.config import defaults
from kbit_jax.convert import importer
from kbit_jax.evals import builtin_tasks, evaluate, tasks
from kbit_jax.evals.harness import loading, offline, run
from kbit_jax.evals.harness.lm import KbitLM
from kbit_jax.quant import bits as quant_bits
from kbit_jax.quant import reference
from kbit_jax.quant.spec import QuantSpec, check_targets_exist
from kbit_jax.train import data, loop

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

TOL = 1e-4
ITEMS = 8  # per task
POSITIONS = 256
HARNESS_TASKS = list(offline.HARNESS_TASKS.values())
MAX_DIFFS: dict[str, float] = {}  # printed at the end of the module (pytest -s)


def _hf_models(eos_id):
  T, small = transformers, dict(vocab_size=MODEL_VOCAB, bos_token_id=eos_id, eos_token_id=eos_id)
  return {
    "gpt2": T.GPT2LMHeadModel(
      T.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=POSITIONS, **small)
    ),
    "neox": T.GPTNeoXForCausalLM(
      T.GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=POSITIONS,
        rotary_pct=0.25,
        use_parallel_residual=True,
        **small,
      )
    ),
  }


def write_task_dir(task_dir: pathlib.Path, n: int = ITEMS) -> None:
  """The study's four tasks as local jsonl in the released formats (HellaSwag's ctx split
  into ctx_a + ctx_b as the release has it; label strings as the hub has them)."""
  task_dir.mkdir(parents=True, exist_ok=True)

  def put(name, records):
    (task_dir / name).write_text("".join(json.dumps(r) + "\n" for r in records))

  hellaswag = []
  for r in builtin_tasks.builtin_records("hellaswag", n, 0):
    words = r["ctx"].split()
    hellaswag.append(
      dict(
        activity_label=r["activity_label"],
        ctx_a=" ".join(words[:-3]),
        ctx_b=" ".join(words[-3:]).lower(),
        endings=r["endings"],
        label=str(r["label"]),
      )
    )
  piqa = builtin_tasks.builtin_records("piqa", n, 0)
  winogrande = builtin_tasks.builtin_records("winogrande", n, 0)
  put("lambada_test.jsonl", builtin_tasks.builtin_records("lambada", n, 0))
  put("hellaswag_val.jsonl", hellaswag)
  put("hellaswag_train.jsonl", hellaswag[:2])
  put("valid.jsonl", piqa)
  put("train.jsonl", piqa[:2])
  put("dev.jsonl", winogrande)
  put("train_xl.jsonl", winogrande[:2])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
  """{name: (hf dir, import dir)}, the task dir, its resolved YAML dir and one lm_eval
  TaskManager over it (building the harness's task index takes ~14 s on 2 cores; a
  manager only indexes, so the tests share one)."""
  root = tmp_path_factory.mktemp("harness")
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
    [data.corpus_text("validation")[:50_000]],
    vocab_size=VOCAB,
    special_tokens=[EOS],
    show_progress=False,
  )
  models = {}
  for name, m in _hf_models(bpe.token_to_id(EOS)).items():
    _randomize(m).save_pretrained(root / name)
    save_tokenizer(bpe, root / name, vocab_merges=name == "gpt2")
    importer.import_hf(root / name, root / f"{name}-kbit", verbose=False)
    models[name] = (root / name, root / f"{name}-kbit")
  write_task_dir(root / "tasks")
  offline.write_task_yamls(root / "tasks", root / "yaml")
  tm = TaskManager(include_path=str(root / "yaml"))
  return dict(models=models, task_dir=root / "tasks", yaml=root / "yaml", root=root, tm=tm)


def _evaluate(model, model_args, zoo, tasks_=HARNESS_TASKS, **kwargs):
  return lm_eval.simple_evaluate(
    model=model,
    model_args=model_args,
    tasks=tasks_,
    task_manager=zoo["tm"],
    log_samples=True,
    batch_size=8,
    device="cpu",
    **kwargs,
  )


def _compare(ours, theirs, what):
  """Same acc/acc_norm; every request's log-likelihood within TOL (or, past |ll| = 100,
  within float32's resolution there: 1e-6 relative, ~8 ulp), same is_greedy."""
  worst, worst_rel, largest = 0.0, 0.0, 0.0
  for task in HARNESS_TASKS:
    a, b = ours["results"][task], theirs["results"][task]
    for metric in ("acc,none", "acc_norm,none", "acc_stderr,none"):
      if metric in b:
        assert a[metric] == b[metric], (what, task, metric)
    if "perplexity,none" in b:
      np.testing.assert_allclose(a["perplexity,none"], b["perplexity,none"], rtol=TOL)
    for x, y in zip(ours["samples"][task], theirs["samples"][task], strict=True):
      for (ll_x, greedy_x), (ll_y, greedy_y) in zip(
        [r[0] for r in x["resps"]], [r[0] for r in y["resps"]], strict=True
      ):
        diff = abs(ll_x - ll_y)
        worst, largest = max(worst, diff), max(largest, abs(ll_y))
        worst_rel = max(worst_rel, diff / max(abs(ll_y), 1e-30))
        assert diff < TOL or diff < 1e-6 * abs(ll_y), (what, task, ll_x, ll_y)
        assert greedy_x == greedy_y, (what, task)
  MAX_DIFFS[what] = dict(abs=worst, rel=worst_rel, largest_abs_ll=largest)


def _builtin(params, net, tokenizer, task_dir, batch_size=8):
  ec = ml_collections.ConfigDict(defaults.base_config().eval.to_dict())
  ec.task_dir, ec.items_per_task, ec.batch_size = str(task_dir), 0, batch_size
  return evaluate.evaluate_tasks(params, net, tokenizer, ec)


def _check_builtin_equals(builtin, harness):
  for ours, theirs in zip(tasks.TASKS, HARNESS_TASKS):
    h = harness["results"][theirs]
    assert builtin[ours]["acc"] == h["acc,none"], ours
    np.testing.assert_allclose(builtin[ours]["acc_stderr"], h["acc_stderr,none"], rtol=1e-12)
    if "acc_norm,none" in h:
      assert builtin[ours]["acc_norm"] == h["acc_norm,none"], ours
  np.testing.assert_allclose(
    builtin["lambada"]["perplexity"],
    harness["results"]["lambada_openai"]["perplexity,none"],
    rtol=TOL,
  )


@pytest.mark.parametrize("name", ["gpt2", "neox"])
def test_kbit_equals_hf_and_builtin_on_the_study_tasks(zoo, name):
  hf_dir, kbit_dir = zoo["models"][name]
  ours = _evaluate("kbit", f"model_dir={kbit_dir}", zoo)
  theirs = _evaluate("hf", f"pretrained={hf_dir},dtype=float32", zoo)
  _compare(ours, theirs, f"{name} kbit vs hf")
  model = loading.load(loading.ModelArgs(model_dir=str(kbit_dir)))
  _check_builtin_equals(_builtin(model.params, model.net, model.tokenizer, zoo["task_dir"]), theirs)


def test_lm_eval_cli_kbit_4bit_equals_the_grids_quantization(zoo, tmp_path):
  """The documented command, as a subprocess (the .pth hook registers `kbit`); its 4-bit
  numbers equal the built-in evaluation of the grid's fake-quantized weights."""
  _, kbit_dir = zoo["models"]["gpt2"]
  out = tmp_path / "out"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  proc = subprocess.run(
    [
      str(pathlib.Path(sys.executable).parent / "lm_eval"),
      "--model", "kbit",
      "--model_args", f"model_dir={kbit_dir},bits=4,dtype=nf,blocksize=32",
      "--tasks", ",".join(HARNESS_TASKS),
      "--include_path", str(zoo["yaml"]),
      "--batch_size", "8",
      "--output_path", str(out),
    ],
    capture_output=True, text=True, env=env, timeout=600,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  (result_file,) = out.rglob("results_*.json")
  cli = json.loads(result_file.read_text())
  args = loading.ModelArgs(model_dir=str(kbit_dir))
  model = loading.load(args)
  spec = QuantSpec(bits=4, dtype="nf", blocksize=32)
  quantized = jax.jit(reference.fake_quant_params, static_argnums=1)(model.params, spec)
  _check_builtin_equals(_builtin(quantized, model.net, model.tokenizer, zoo["task_dir"]), cli)


def _requests(kind, args_list):
  return [Instance(kind, {}, args, i) for i, args in enumerate(args_list)]


def test_rolling_generate_and_truncation_equal_hf(zoo, caplog):
  """At max_length 32: rolling windows (wikitext-style word/byte perplexity), batched greedy
  generation with stop strings, and over-long requests truncated as hf truncates them."""
  hf_dir, kbit_dir = zoo["models"]["neox"]
  ours = KbitLM(model_dir=str(kbit_dir), max_length=32, batch_size=4, max_gen_toks=12)
  theirs = HFLM(pretrained=str(hf_dir), max_length=32, batch_size=4, device="cpu")
  docs = [data.corpus_text("test")[i * 500 : i * 500 + 300] for i in range(3)]
  rolling = _requests("loglikelihood_rolling", [(d,) for d in docs])
  a, b = ours.loglikelihood_rolling(rolling), theirs.loglikelihood_rolling(rolling)
  MAX_DIFFS["rolling"] = float(np.max(np.abs(np.array(a) - np.array(b))))
  np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
  assert len(ours.tok_encode(docs[0])) > 3 * 32  # several windows per document

  gen = dict(until=["."], max_gen_toks=12, do_sample=False)
  prompts = [docs[0][:40], docs[1][:90], docs[2][:15], "And"]
  requests = _requests("generate_until", [(p, gen) for p in prompts])
  assert ours.generate_until(requests) == theirs.generate_until(requests)

  long = [(docs[0], " the end"), (docs[1][:50], " of days"), ("", docs[2][:30])]
  with caplog.at_level(logging.WARNING):
    a = ours.loglikelihood(_requests("loglikelihood", long))
    ours.loglikelihood(_requests("loglikelihood", long))
  b = theirs.loglikelihood(_requests("loglikelihood", long))
  np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], atol=TOL, rtol=0)
  assert [g for _, g in a] == [g for _, g in b]
  said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kbit: ")]
  assert said == [  # each kind once, though the loglikelihood requests came twice
    "kbit: 2 generate_until request(s) longer than 20 tokens; truncated from the left as "
    "lm_eval's hf model does (said once)",
    "kbit: 2 loglikelihood request(s) longer than 33 tokens; truncated from the left as "
    "lm_eval's hf model does (said once)",
  ]


def test_kbit_harness_writes_a_grid_shaped_record(zoo, tmp_path):
  _, kbit_dir = zoo["models"]["gpt2"]
  out = tmp_path / "R"
  args = loading.ModelArgs(model_dir=str(kbit_dir), bits=3, dtype="int", batch_size=8)
  got = run.evaluate(args, ["piqa", "winogrande"], str(out), task_dir=str(zoo["task_dir"]))
  (record,) = results.load_records(out / "results")
  assert record["key"]["bits"] == 3 and record["key"]["dtype"] == "int"
  assert set(record) >= {"key", "model", "bits", "metrics"} and record["name"].endswith(
    "k3 int B64 p0"
  )
  assert record["bits"]["quantized_bits_per_param"] == 3 + 16 / 64
  harness = json.loads((out / record["harness_results"]).read_text())
  assert harness["results"]["piqa"]["acc,none"] == record["metrics"]["harness/piqa"]["acc"]
  assert (
    record["metrics"]["harness/piqa"]["n"]
    == ITEMS
    == got["output"]["n-samples"]["piqa"]["effective"]
  )
  df = results.load(out / "results")
  assert df.loc[0, "harness/winogrande/acc"] == harness["results"]["winogrande"]["acc,none"]


def test_bad_input_is_named_before_any_work(zoo, tmp_path):
  _, kbit_dir = zoo["models"]["gpt2"]
  out = tmp_path / "R"
  good = loading.ModelArgs(model_dir=str(kbit_dir), bits=4, dtype="nf")
  with pytest.raises(ValueError, match=r"Tasks not found: nosuchtask .*kbit model_args .*bits=4"):
    run.evaluate(good, ["piqa", "nosuchtask"], str(out), task_dir=str(zoo["task_dir"]))
  with pytest.raises(FileNotFoundError, match=r"holds no checkpoint: expected architecture.json"):
    run.evaluate(loading.ModelArgs(model_dir=str(tmp_path)), ["piqa"], str(out))
  for bad in (dict(bits=9), dict(dtype="nf8"), dict(double_quant=True), dict(targets="head")):
    kwargs = {**dict(bits=4, dtype="int"), **bad}
    try:  # the grid's QuantSpec / check_targets_exist message, prefixed
      spec = QuantSpec(**kwargs)
      check_targets_exist(quant_bits.preset_shapes(importer.read_architecture(kbit_dir)), spec)
    except ValueError as e:
      expected = str(e)
    with pytest.raises(ValueError) as info:
      KbitLM(model_dir=str(kbit_dir), **kwargs)
    assert str(info.value) == f"kbit model_args: {expected}"
  with pytest.raises(ValueError, match=r"'bitz' is unknown; allowed: \['model_dir', 'bits'"):
    KbitLM(model_dir=str(kbit_dir), bitz=4)
  assert not out.exists()  # nothing written on failure


def test_trained_workdir_evaluates_as_the_builtin_scorer(zoo, tmp_path):
  """A `kbit train` workdir (2 steps of s0, the embedded SentencePiece tokenizer)."""
  config = defaults.base_config()
  config.model.preset = "s0"
  config.train.steps, config.train.batch_size, config.data.seq_len = 2, 8, 32
  config.train.eval_every = config.train.checkpoint_every = 2
  config.train.eval_batches, config.train.warmup_steps = 1, 1
  loop.train_and_evaluate(config, str(tmp_path / "w"))
  args = loading.ModelArgs(model_dir=str(tmp_path / "w"), bits=4, dtype="float", batch_size=8)
  lm = KbitLM.from_loaded(loading.load(args))
  assert lm.model.kind == "trained" and lm.model.step == 2 and lm.prefix_token_id == data.EOS_ID
  assert not lm.add_bos
  out = run.simple_evaluate(lm, run.HarnessConfig(("hellaswag", "winogrande")), zoo["tm"])
  builtin = _builtin(lm.model.params, lm.model.net, lm.model.tokenizer, zoo["task_dir"])
  for task in ("hellaswag", "winogrande"):
    assert builtin[task]["acc"] == out["results"][task]["acc,none"]


def test_print_max_differences():
  print("\nmax |kbit - hf| log-likelihood differences:", MAX_DIFFS)

"""`lm_eval --model kbit` against `lm_eval --model hf`: one 160m-shaped model, the same
items, on CPU. Wall time of each command and tokens/s, and one k-bit cell.

    python benchmarks/harness_throughput.py [--items 12] [--batch_size 16] [--keep DIR]
      [--runs hf,kbit,kbit rerun,kbit rows,kbit k4 nf] [--rounds 1]

The model is a random-weight GPT-NeoX of Pythia-160m's shape (12 layers, d_model 768, 12
heads, d_ff 3072, vocab 50304) built with transformers and saved with save_pretrained,
then `kbit import`ed; the tokenizer is a 300-piece byte-level BPE trained on the embedded
corpus (no hub access), so requests are longer in tokens than with Pythia's own. The
four study tasks read the same local items (the built-in records in the official
formats, tests/test_harness.py's `write_task_dir`) through the offline YAMLs. Each
command is timed as a whole process (start-up, model load, compiles, scoring); tokens
are the scored inputs (context + continuation - 1, capped at max_length) of every request.
The kbit runs share a compilation cache made for this run: the first ("kbit") compiles
its executables, "kbit rerun" loads them, as any later run on the same shapes does.
With --rounds N the runs go in turn N times (hf, kbit, ..., hf, kbit, ...); each ratio
is then the median over the rounds of that round's hf time over the run's time, so a
drift in the machine's speed lands on both sides of a pair (after the first round every
kbit run finds its executables in the cache).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The commands --runs may name; the default runs them all, in this order (model args: main).
RUNS = ("hf", "kbit", "kbit rerun", "kbit rows", "kbit k4 nf")


def build(root: pathlib.Path, items: int) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  import tokenizers
  import torch
  import transformers
  from test_harness import write_task_dir
  from test_import_hf import EOS, save_tokenizer

  from kbit_jax.convert import importer
  from kbit_jax.evals.harness import offline
  from kbit_jax.train import data

  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
    [data.corpus_text("validation")[:50_000]], vocab_size=300, special_tokens=[EOS],
    show_progress=False,
  )  # fmt: skip
  eos = bpe.token_to_id(EOS)
  config = transformers.GPTNeoXConfig(
    num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
    vocab_size=50304, tie_word_embeddings=False, bos_token_id=eos, eos_token_id=eos,
  )  # fmt: skip
  torch.manual_seed(0)
  model = transformers.GPTNeoXForCausalLM(config).eval()
  hf_dir, kbit_dir = root / "hf", root / "kbit"
  model.save_pretrained(hf_dir)
  save_tokenizer(bpe, hf_dir, vocab_merges=False)
  importer.import_hf(hf_dir, kbit_dir, verbose=False)
  write_task_dir(root / "tasks", items)
  offline.write_task_yamls(root / "tasks", root / "yaml")
  return hf_dir, kbit_dir, root / "yaml"


def scored_tokens(kbit_dir: pathlib.Path, task_dir: pathlib.Path, batch_size: int):
  """(requests, scored input tokens, hf's and kbit's TFLOP) of the four tasks, as both
  models tokenize them. Tokens: context + continuation - 1 per request, capped at max_len.
  FLOP: model/flops.py's forward count (weights, full L x L attention) over what each
  computes: hf's rows sorted longest first, batch_size a batch, each padded to its longest
  (as lm_eval's hf model batches them), its head at every position; kbit's packed batches
  (shared prefixes, the bridge's default bucket_step), its head on the scored positions
  only. With matmuls equally fast on both sides, their ratio is the scoring's speed-up."""
  from kbit_jax.convert import importer
  from kbit_jax.evals import scoring, shared_prefix, tasks
  from kbit_jax.evals.harness import loading
  from kbit_jax.model import flops
  from kbit_jax.train import data

  tok = data.load_tokenizer(str(kbit_dir))
  arch = importer.read_architecture(kbit_dir)
  pairs = [
    p for t in tasks.TASKS for item in tasks.load_file_task(t, str(task_dir)) for p in item.requests
  ]
  rows = [scoring._request_row(c, x, arch.max_len) for c, x in scoring.encode_requests(tok, pairs)]
  head = 2 * arch.d_model * arch.vocab_size  # per position

  def forward(length: int) -> float:  # per token of a row `length` long, head included
    return flops.flops_per_token(arch, length, training=False)

  lengths = sorted((len(inputs) for inputs, _, _ in rows), reverse=True)
  hf = sum(
    len(chunk) * max(chunk) * forward(max(chunk))
    for chunk in (lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size))
  )
  step = loading.ModelArgs().bucket_step
  kbit = sum(
    b.inputs_BxL.size * (forward(b.inputs_BxL.shape[1]) - head) + b.scored_1xC.size * head
    for b in shared_prefix.pack(rows, batch_size, step, arch.max_len)
  )
  return len(pairs), sum(lengths), hf / 1e12, kbit / 1e12


def lm_eval(
  model: str, model_args: str, yaml_dir: pathlib.Path, batch_size: int, out: pathlib.Path
):
  """Runs the lm_eval command; returns (wall seconds, scoring seconds, its results)."""
  command = [
    str(pathlib.Path(sys.executable).parent / "lm_eval"), "--model", model,
    "--model_args", model_args, "--tasks", "lambada_openai,hellaswag,piqa,winogrande",
    "--include_path", str(yaml_dir), "--batch_size", str(batch_size), "--device", "cpu",
    "--output_path", str(out),
  ]  # fmt: skip
  shutil.rmtree(out, ignore_errors=True)
  t0 = time.perf_counter()
  proc = subprocess.run(command, capture_output=True, text=True)
  seconds = time.perf_counter() - t0
  if proc.returncode:
    raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
  (path,) = out.rglob("results_*.json")
  return seconds, scoring_seconds(proc.stderr), json.loads(path.read_text())["results"]


def scoring_seconds(log: str) -> float:
  """From lm_eval's log (1 s resolution): "Running loglikelihood requests" to the next
  line it logs, the model's scoring of every request (start-up and model load excluded)."""
  stamps = [
    (datetime.datetime.strptime(m.group(1), "%Y-%m-%d:%H:%M:%S"), m.group(2))
    for m in re.finditer(r"^(\d{4}-\d\d-\d\d:\d\d:\d\d:\d\d) \w+ +(.*)$", log, re.M)
  ]
  for (start, text), (end, _) in zip(stamps, stamps[1:]):
    if "Running loglikelihood requests" in text:
      return (end - start).total_seconds()
  return math.nan


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--items", type=int, default=12, help="items per task")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--keep", default="", help="build (or reuse) the models here")
  parser.add_argument(
    "--runs",
    type=lambda v: v.split(","),
    default=list(RUNS),
    help="comma-separated: hf, kbit (rows sharing prefixes; compiles), kbit rerun (the "
    "same, its executables in the compilation cache), kbit rows (a row per request: "
    "share_prefixes=False), kbit k4 nf",
  )
  parser.add_argument("--rounds", type=int, default=1, help="times to run the runs in turn")
  args = parser.parse_args()
  unknown = sorted(set(args.runs) - set(RUNS))
  if unknown or "hf" not in args.runs or "kbit" not in args.runs:
    raise SystemExit(f"--runs={args.runs}: needs hf and kbit; allowed: {list(RUNS)}")
  if args.rounds < 1:
    raise SystemExit(f"--rounds={args.rounds}: allowed: 1 or more")
  root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="kbit-harness-bench-"))
  if not (root / "yaml").exists():
    t0 = time.perf_counter()
    build(root, args.items)
    print(f"built and imported the 160m-shaped model in {time.perf_counter() - t0:.0f}s")
  built = len((root / "tasks" / "lambada_test.jsonl").read_text().splitlines())
  if built != args.items:
    raise SystemExit(f"--keep {root} holds {built} items per task, not --items {args.items}")
  hf_dir, kbit_dir, yaml_dir = root / "hf", root / "kbit", root / "yaml"
  requests, tokens, hf_tflop, kbit_tflop = scored_tokens(kbit_dir, root / "tasks", args.batch_size)
  print(f"{requests} requests, {tokens:,} scored tokens; load average {os.getloadavg()[0]:.1f}")
  print(
    f"matmul TFLOP of the scoring: hf {hf_tflop:.2f}, kbit {kbit_tflop:.2f}; at equal matmul "
    f"speed kbit's scoring would be {hf_tflop / kbit_tflop:.2f}x hf's"
  )
  # A compilation cache of this run's own: "kbit" compiles (cold), "kbit rerun" finds its
  # executables there, as every later run on the same shapes does (a grid's next cell).
  cache = root / f"xla-cache-{datetime.datetime.now():%Y%m%d-%H%M%S}"
  kbit_args = f"model_dir={kbit_dir},compile_cache={cache}"
  runs = {
    "hf": ("hf", f"pretrained={hf_dir},dtype=float32"),
    "kbit": ("kbit", kbit_args),
    "kbit rerun": ("kbit", kbit_args),
    "kbit rows": ("kbit", f"{kbit_args},share_prefixes=False"),
    "kbit k4 nf": ("kbit", f"{kbit_args},bits=4,dtype=nf"),
  }
  assert tuple(runs) == RUNS
  walls, scoring = {n: [] for n in args.runs}, {n: [] for n in args.runs}
  for round_ in range(args.rounds):
    for name in args.runs:
      model, model_args = runs[name]
      seconds, scored_s, results = lm_eval(
        model, model_args, yaml_dir, args.batch_size, root / f"out-{name}"
      )
      walls[name].append(seconds)
      scoring[name].append(scored_s)
      accs = " ".join(f"{t} {r['acc,none']:.3f}" for t, r in results.items())
      print(
        f"[{round_ + 1}/{args.rounds}] lm_eval --model {name:<11} {seconds:6.1f}s  "
        f"{tokens / seconds:7.0f} tok/s  (scoring {scored_s:.0f}s)  {accs}"
      )
  median = statistics.median
  for name in args.runs:
    if name != "hf":
      ratios = [h / k for h, k in zip(walls["hf"], walls[name])]
      scored = [h / k for h, k in zip(scoring["hf"], scoring[name])]
      each = "" if args.rounds == 1 else f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
      print(
        f"{name} / hf: {median(ratios):.2f}x tokens/s{each}; wall {median(walls[name]):.1f}s "
        f"vs {median(walls['hf']):.1f}s; scoring alone {median(scored):.2f}x "
        f"({median(scoring[name]):.0f}s vs {median(scoring['hf']):.0f}s)"
      )
  print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()

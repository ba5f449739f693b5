"""`lm_eval --model kbit` against `lm_eval --model hf`: one 160m-shaped model, the same
items, on CPU. Wall time of each command and tokens/s, and one k-bit cell.

    python benchmarks/harness_throughput.py [--items 12] [--batch_size 16] [--keep DIR]
      [--runs hf,kbit,kbit rows,kbit k4 nf]

The model is a random-weight GPT-NeoX of Pythia-160m's shape (12 layers, d_model 768, 12
heads, d_ff 3072, vocab 50304) built with transformers and saved with save_pretrained,
then `kbit import`ed; the tokenizer is a 300-piece byte-level BPE trained on the embedded
corpus (no hub access), so requests are longer in tokens than with Pythia's own. The
four study tasks read the same local items (the built-in records in the official
formats, tests/test_harness.py's `write_task_dir`) through the offline YAMLs. Each
command is timed as a whole process (start-up, model load, compiles, scoring); tokens
are the scored inputs (context + continuation - 1, capped at max_length) of every request.
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
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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


def scored_tokens(kbit_dir: pathlib.Path, task_dir: pathlib.Path) -> tuple[int, int]:
  """(requests, scored input tokens) of the four tasks, as both models tokenize them."""
  from kbit_jax.evals import scoring, tasks
  from kbit_jax.train import data

  tok = data.load_tokenizer(str(kbit_dir))
  pairs = [
    p for t in tasks.TASKS for item in tasks.load_file_task(t, str(task_dir)) for p in item.requests
  ]
  return len(pairs), sum(
    min(len(c) + len(x) - 1, 2048) for c, x in scoring.encode_requests(tok, pairs)
  )


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
    default=["hf", "kbit", "kbit rows", "kbit k4 nf"],
    help="comma-separated: hf, kbit (rows sharing prefixes), kbit rows (a row per "
    "request: share_prefixes=False), kbit k4 nf",
  )
  args = parser.parse_args()
  root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="kbit-harness-bench-"))
  if not (root / "yaml").exists():
    t0 = time.perf_counter()
    build(root, args.items)
    print(f"built and imported the 160m-shaped model in {time.perf_counter() - t0:.0f}s")
  built = len((root / "tasks" / "lambada_test.jsonl").read_text().splitlines())
  if built != args.items:
    raise SystemExit(f"--keep {root} holds {built} items per task, not --items {args.items}")
  hf_dir, kbit_dir, yaml_dir = root / "hf", root / "kbit", root / "yaml"
  requests, tokens = scored_tokens(kbit_dir, root / "tasks")
  print(f"{requests} requests, {tokens:,} scored tokens; load average {os.getloadavg()[0]:.1f}")
  runs = {
    "hf": ("hf", f"pretrained={hf_dir},dtype=float32"),
    "kbit": ("kbit", f"model_dir={kbit_dir}"),
    "kbit rows": ("kbit", f"model_dir={kbit_dir},share_prefixes=False"),
    "kbit k4 nf": ("kbit", f"model_dir={kbit_dir},bits=4,dtype=nf"),
  }
  unknown = sorted(set(args.runs) - set(runs))
  if unknown or "hf" not in args.runs or "kbit" not in args.runs:
    raise SystemExit(f"--runs={args.runs}: needs hf and kbit; allowed: {list(runs)}")
  walls, scoring = {}, {}
  for name, (model, model_args) in runs.items():
    if name not in args.runs:
      continue
    seconds, scored_s, results = lm_eval(
      model, model_args, yaml_dir, args.batch_size, root / f"out-{name}"
    )
    walls[name], scoring[name] = seconds, scored_s
    accs = " ".join(f"{t} {r['acc,none']:.3f}" for t, r in results.items())
    print(
      f"lm_eval --model {name:<11} {seconds:6.1f}s  {tokens / seconds:7.0f} tok/s  "
      f"(scoring {scored_s:.0f}s)  {accs}"
    )
  for name in walls:
    if name != "hf":
      print(
        f"{name} / hf: {walls['hf'] / walls[name]:.2f}x tokens/s (wall {walls[name]:.1f}s vs "
        f"{walls['hf']:.1f}s); scoring alone {scoring['hf'] / scoring[name]:.2f}x "
        f"({scoring[name]:.0f}s vs {scoring['hf']:.0f}s)"
      )
  print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()

"""Evaluation throughput: log-likelihood scoring of the built-in tasks, and perplexity.

One run, one preset (random init: throughput does not depend on the weights), one device:
  tasks       `scoring.loglikelihoods` on every request of the four built-in tasks
              (eval.items_per_task items each), bucketed, batch_size rows a call;
  perplexity  `perplexity.perplexity` on the embedded corpus's validation split, rows of
              data.seq_len tokens.
Each is run once to compile, then timed over --rounds runs; the median is printed.
tokens/s counts real (unpadded) input tokens; padded tokens/s counts every row position
the device computed (tasks: batches x batch_size x bucket length), so their ratio is the
padding overhead of the buckets.

  python benchmarks/eval_throughput.py                             # s3, 400 items/task
  python benchmarks/eval_throughput.py --preset s5 --batch 64 --items 200 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kbit_jax.config import defaults
from kbit_jax.evals import evaluate, perplexity, scoring, tasks
from kbit_jax.model import presets, transformer
from kbit_jax.train import data


def _timed(fn, rounds: int) -> float:
  fn()  # compile
  seconds = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - t0)
  return statistics.median(seconds)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="s3")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--items", type=int, default=400, help="built-in items per task")
  parser.add_argument("--seq_len", type=int, default=128, help="perplexity row length")
  parser.add_argument("--ppl_batches", type=int, default=0, help="0 = the whole split")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()

  net = transformer.Transformer(presets.get_preset(args.preset))
  params = nn.unbox(net.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  params = jax.device_put(params, jax.devices()[0])
  tokenizer = data.load_tokenizer()
  print(
    f"{args.preset}: {presets.param_counts(net.p)['total']:,} params, "
    f"{jax.devices()[0].device_kind}, batch {args.batch}, {args.rounds} rounds"
  )

  eval_cfg = ml_collections.ConfigDict(dict(items_per_task=args.items, task_dir="", task_seed=0))
  pairs = [
    pair
    for task in tasks.TASKS
    for item in evaluate.load_task(task, eval_cfg)
    for pair in item.requests
  ]
  requests = scoring.encode_requests(tokenizer, pairs)
  cap = scoring.scoring_length(net)
  batches = scoring.pack_requests(requests, cap, args.batch)
  real = sum(b.tokens for b in batches)
  padded = sum(b.inputs_BxL.size for b in batches)
  seconds = _timed(lambda: scoring.loglikelihoods(params, net, requests, args.batch), args.rounds)
  print(
    f"tasks       {len(requests):6d} requests in {len(batches)} batches "
    f"(buckets {sorted({b.inputs_BxL.shape[1] for b in batches})}): {seconds:6.2f} s, "
    f"{real / seconds:9,.0f} tokens/s, {padded / seconds:9,.0f} padded tokens/s, "
    f"{len(requests) / seconds:7,.0f} requests/s"
  )

  data_cfg = defaults.base_config().data
  data_cfg.seq_len = args.seq_len
  max_batches = args.ppl_batches or None
  result = {}

  def run_ppl():
    result.update(
      perplexity.perplexity(params, net, data_cfg, "validation", args.batch, max_batches)
    )

  seconds = _timed(run_ppl, args.rounds)
  rows = -(-result["tokens"] // args.seq_len)
  padded = -(-rows // args.batch) * args.batch * args.seq_len
  print(
    f"perplexity  {result['tokens']:6d} tokens of validation in rows of {args.seq_len}: "
    f"{seconds:6.2f} s, {result['tokens'] / seconds:9,.0f} tokens/s, "
    f"{padded / seconds:9,.0f} padded tokens/s (ppl {result['perplexity']:.1f} at init)"
  )


if __name__ == "__main__":
  main()

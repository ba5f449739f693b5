"""One grid cell family: train one (model, dim, training triples), then evaluate it at
every quantization spec; returns records shaped like the results store's (results.py).

    records = run_cell(config, [QuantSpec(bits=16), QuantSpec(bits=4, blocksize=64)])
    for r in records: results.write(results_dir, r)

The grid (grid.py, `kbit kg`) calls the two halves itself: `train.train` (or its reuse
from a checkpoint), then `evaluate_specs`, which yields one record at a time for the
cells not yet in the store.

or from the shell (prints one line per spec, `--out` writes the records as JSON lines):

    python -m kbit_jax.kg.experiment --model rotate --dim 64 --steps 1000 --bits 16,4,2

A record has `key` (the cell's identity: graph, model, dim, training triples, steps,
seed and the quantization), `model` (parameter counts and the training setup), `bits`
(quantize.bits_report), `metrics` (ranking.metrics_from_ranks: mrr, hits@k, each with
its standard error, over all queries; `metrics/unleaked` the same over the triples whose
reversed twin is not in train, i.e. without WN18RR's symmetric leakage) and `time`.
The data axis is `data.num_train` (a nested, deterministic subsample of the training
triples); every size is evaluated on the same queries, filtered against the full graph.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Iterator, Sequence

import jax
import ml_collections

from kbit_jax.analysis.kg_cells import TASK  # the key that marks a store's KG cells
from kbit_jax.kg import data, quantize, ranking, train
from kbit_jax.quant.spec import QuantSpec

EVAL_ID = "filtered-realistic-v1"  # ranking protocol version: change if ranks change


def cell_key(
  config: ml_collections.ConfigDict,
  graph: data.Graph,
  num_train: int,
  spec: QuantSpec,
  tables: Sequence[str],
  split: str,
) -> dict[str, Any]:
  m, q = config.model, spec.quantized
  return dict(
    task=TASK,
    graph=graph.name,
    model=m.name,
    dim=m.dim,
    norm=m.norm if m.name == "transe" else None,
    gamma=m.gamma if m.name == "rotate" else None,
    train_triples=num_train,
    train_steps=config.train.steps,
    seed=config.train.seed,
    bits=spec.bits,
    dtype=spec.dtype if q else "none",
    exponent_bits=spec.exponent_bits if q else 0,
    blocksize=spec.blocksize if q else None,
    double_quant=spec.double_quant,
    targets=",".join(tables) if q else "none",
    eval_id=f"{split}-{EVAL_ID}",
  )


def cell_name(key: dict[str, Any]) -> str:
  quant = f"k{key['bits']} {key['dtype']} B{key['blocksize']}" if key["bits"] != 16 else "k16"
  return f"{key['model']} d{key['dim']} n{key['train_triples']} {quant}"


def model_info(
  config: ml_collections.ConfigDict,
  graph: data.Graph,
  result: train.TrainResult,
  split: str = "test",
  train_loss: float | None = None,
) -> dict[str, Any]:
  """A record's `model` group: parameter counts, the graph's sizes, the training setup.
  `train_loss` (the final step's) defaults to the last loss of `result`'s run."""
  shapes = {name: w.shape for name, w in result.params.items()}
  t, m = config.train, config.model
  if train_loss is None and result.losses:
    train_loss = result.losses[max(result.losses)]
  return dict(
    params=sum(int(s[0]) * int(s[1]) for s in shapes.values()),
    entity_params=int(shapes["entity"][0] * shapes["entity"][1]),
    relation_params=int(shapes["relation"][0] * shapes["relation"][1]),
    num_entities=graph.num_entities,
    num_relations=graph.num_relations,
    unseen_test_entities=data.unseen_entities(result.graph, split),
    train_batch_size=t.batch_size,
    train_negatives=t.negatives,
    train_lr=t.lr,
    train_loss=train_loss,
    **(
      dict(train_margin=t.margin)
      if m.name == "transe"
      else dict(train_adversarial_temperature=t.adversarial_temperature)
    ),
  )


def evaluate_specs(
  config: ml_collections.ConfigDict,
  graph: data.Graph,
  result: train.TrainResult,
  specs: Sequence[QuantSpec],
  split: str = "test",
  tables: Sequence[str] = quantize.TABLES,
  eval_batch_size: int = 64,
  log=print,
  train_s: float | None = None,
  train_loss: float | None = None,
  extra: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
  """Yields one record per spec of the trained `result` (evaluated one at a time, so a
  caller can store each before the next starts). `train_s` / `train_loss` default to
  `result`'s (a model restored from its checkpoint ran no steps: pass the original
  run's); `extra` is merged into every record (e.g. git_commit, created)."""
  for spec in specs:
    quantize.check_spec(spec, tables)
  queries = graph.split(split)
  num_train = len(result.graph.train_Nx3)
  evaluator = ranking.Evaluator(result.model, queries, graph.all_true_Nx3(), eval_batch_size)
  unleaked = ~data.reverse_in_train(result.graph, split)
  info = model_info(config, graph, result, split, train_loss)
  for spec in specs:
    t0 = time.perf_counter()
    params = jax.block_until_ready(quantize.quantize_tables(result.params, spec, tables))
    t1 = time.perf_counter()
    tail_Q, head_Q = evaluator.ranks(params)
    metrics = ranking.metrics_from_ranks(tail_Q, head_Q)
    if unleaked.any():
      metrics["unleaked"] = ranking.metrics_from_ranks(tail_Q[unleaked], head_Q[unleaked])
    t2 = time.perf_counter()
    key = cell_key(config, graph, num_train, spec, tables, split)
    report = quantize.bits_report(result.params, spec, tables)
    record = dict(
      key=key,
      name=cell_name(key),
      model=info,
      bits={
        k: report[k]
        for k in ("total_bits", "bits_per_param", "quantized_params", "quantized_bits_per_param")
      },
      metrics=metrics,
      time=dict(
        train_s=result.train_s if train_s is None else train_s, quantize_s=t1 - t0, eval_s=t2 - t1
      ),
      **(extra or {}),
    )
    log(
      f"{record['name']}: mrr {metrics['mrr']:.4f} hits@10 {metrics['hits@10']:.4f} "
      f"(unleaked {metrics.get('unleaked', {}).get('mrr', float('nan')):.4f}; "
      f"{report['bits_per_param']:.3f} bits/param, eval {t2 - t1:.1f} s)"
    )
    yield record


def run_cell(
  config: ml_collections.ConfigDict,
  specs: Sequence[QuantSpec],
  graph: data.Graph | None = None,
  workdir: str | None = None,
  split: str = "test",
  tables: Sequence[str] = quantize.TABLES,
  eval_batch_size: int = 64,
  log=print,
) -> list[dict[str, Any]]:
  """Trains `config` on `graph` (default: the shipped WordNet graph) and returns one
  record per spec. Every spec is checked before training starts."""
  graph = graph or data.shipped_graph()
  for spec in specs:
    quantize.check_spec(spec, tables)
  graph.split(split)  # an unknown split raises before training
  result = train.train(config, graph, workdir=workdir, log=log)
  return list(evaluate_specs(config, graph, result, specs, split, tables, eval_batch_size, log=log))


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  c = train.default_config()
  parser.add_argument(
    "--graph_dir", default="", help="train/valid/test triples files; '' = the shipped WordNet graph"
  )
  parser.add_argument("--model", default=c.model.name, help="transe or rotate")
  for key, value in [*c.model.items(), *c.data.items(), *c.train.items()]:
    if key not in ("name", "graph"):
      parser.add_argument(f"--{key}", type=type(value), default=value)
  parser.add_argument("--bits", default="16,2,3,4,8", help="comma list of k; 16 = none")
  parser.add_argument("--dtype", default="int")
  parser.add_argument("--blocksize", type=int, default=64)
  parser.add_argument("--split", default="test")
  parser.add_argument("--workdir", default="", help="checkpoint here and resume ('' = no)")
  parser.add_argument("--out", default="", help="append the records to this JSON lines file")
  args = parser.parse_args(argv)
  c.model.name = args.model
  for section in (c.model, c.data, c.train):
    for key in section:
      if key not in ("name", "graph"):
        section[key] = getattr(args, key)
  specs = [
    QuantSpec(bits=16)
    if int(k) == 16
    else QuantSpec(bits=int(k), dtype=args.dtype, blocksize=args.blocksize)
    for k in args.bits.split(",")
  ]
  graph = data.load_graph(args.graph_dir) if args.graph_dir else data.shipped_graph()
  records = run_cell(c, specs, graph=graph, workdir=args.workdir or None, split=args.split)
  if args.out:
    with open(args.out, "a", encoding="utf-8") as f:
      for record in records:
        f.write(json.dumps(record, sort_keys=True) + "\n")
  return records


if __name__ == "__main__":
  main()

"""Everything the `eval` config section asks for, for one set of parameters: the recipe.

    metrics = evaluate.evaluate(params, net, config)   # config: {"data", "eval"} sections

zero-shot tasks (tasks.py, their mean: the study's mean zero-shot accuracy) and k-bit
probes (probes.py), all scored together as log-likelihood requests (scoring.py); then
perplexity on `eval.ppl_split` and on `eval.text_file` (perplexity.py).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from kbit_jax.config import eval_section
from kbit_jax.evals import builtin_tasks, perplexity, probes, scoring, tasks
from kbit_jax.model import transformer
from kbit_jax.train import data


def load_task(task: str, eval_cfg) -> list[tasks.Item]:
  """Items of `task`: from eval.task_dir's official file, or built in when it is empty."""
  if task not in tasks.TASKS:
    raise ValueError(f"eval.tasks: task {task!r} is unknown; allowed: {list(tasks.TASKS)}")
  if eval_cfg.task_dir:
    return tasks.load_file_task(task, eval_cfg.task_dir, eval_cfg.items_per_task)
  records = builtin_tasks.builtin_records(task, eval_cfg.items_per_task, eval_cfg.task_seed)
  return [tasks.TO_ITEM[task](r, f"builtin:{task}:{i}") for i, r in enumerate(records)]


def load_items(eval_cfg: ml_collections.ConfigDict) -> dict[str, list[tasks.Item]]:
  """{name: items} of eval.tasks, then of the probes (probes.py: "probe/k<k>", "probe/file")."""
  ec = eval_section.with_defaults(eval_cfg)
  items = {name: load_task(name, ec) for name in tasks.task_names(ec)}
  items.update(probes.load_probes(ec))
  return items


def evaluate_tasks(
  params: Any,
  net: transformer.Transformer,
  tokenizer: data.Tokenizer,
  eval_cfg: ml_collections.ConfigDict,
  item_scores: dict | None = None,
) -> dict[str, dict[str, float]]:
  """{task: metrics} for eval.tasks, and "mean": the mean of their acc (the study's
  mean zero-shot accuracy); {probe: metrics} for the probes and "probe/summary". All
  files are read before anything is compiled; the requests of all tasks and probes are
  scored together, so they share the buckets' compiles. An `item_scores` dict receives
  each task's per-item accuracy as one "0"/"1" character per item."""
  eval_section.validate(eval_cfg)
  if tokenizer.vocab_size > net.p.vocab_size:
    raise ValueError(
      f"the tokenizer has {tokenizer.vocab_size} pieces but the model's "
      f"vocab_size is {net.p.vocab_size}"
    )
  items = load_items(eval_cfg)
  pairs = [pair for name in items for item in items[name] for pair in item.requests]
  add_bos = scoring.prepends_bos(tokenizer, eval_section.with_defaults(eval_cfg).bos)
  results = iter(
    scoring.loglikelihoods(
      params,
      net,
      scoring.encode_requests(tokenizer, pairs, add_bos),
      eval_cfg.batch_size,
      eval_cfg.max_len,
    )
  )
  out = {}
  for name, name_items in items.items():
    per_item = [[next(results) for _ in item.requests] for item in name_items]
    if item_scores is not None and not name.startswith("probe/"):
      item_scores[name] = "".join(str(int(a)) for a in tasks.item_acc(name, name_items, per_item))
    out[name] = (
      probes.score_probe(name_items, per_item)
      if name.startswith("probe/")
      else tasks.score_items(name, name_items, per_item)
    )
  task_metrics = {n: out[n] for n in tasks.task_names(eval_cfg)}
  if task_metrics:
    out["mean"] = tasks.mean_accuracy(task_metrics)
  probe_metrics = {n: m for n, m in out.items() if n.startswith("probe/")}
  if probe_metrics:
    out["probe/summary"] = probes.summary(
      probe_metrics, eval_section.with_defaults(eval_cfg).probe_threshold
    )
  return out


def evaluate(
  params: Any,
  net: transformer.Transformer,
  config: ml_collections.ConfigDict,
  item_scores: dict | None = None,
) -> dict[str, dict[str, float]]:
  """Everything the `eval` section asks for: tasks (and their mean), perplexity on
  `eval.ppl_split` (key "ppl/<split>") and on `eval.text_file` (key "ppl/text_file").
  An `item_scores` dict receives the per-item scores: each task's (evaluate_tasks) and
  the split's per-row NLL sums and tokens ("ppl/<split>")."""
  ec = config.eval
  eval_section.validate(ec, config.data)
  data.validate(config.data)
  max_batches = ec.ppl_max_batches or None
  out = evaluate_tasks(params, net, data.load_tokenizer(config.data.tokenizer), ec, item_scores)
  if ec.ppl_split:
    rows = None if item_scores is None else item_scores.setdefault(f"ppl/{ec.ppl_split}", {})
    out[f"ppl/{ec.ppl_split}"] = perplexity.perplexity(
      params, net, config.data, ec.ppl_split, ec.batch_size, max_batches, rows
    )
  if ec.text_file:
    out["ppl/text_file"] = perplexity.text_file_perplexity(
      params, net, config.data, ec.text_file, ec.batch_size, max_batches
    )
  return out

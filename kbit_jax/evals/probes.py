"""k-bit reasoning probes: multiple-choice tasks whose answer carries a known number of bits.

A question with 2^k equally likely answers carries k bits. A probe item is a context and
2^k options, one of them right; the model scores each option by its summed
log-likelihood (scoring.loglikelihoods), P(option | context) = softmax over the options,
and the probe reports how much of the k bits the model recovers:

    information (bits) = k - H(answer | model),  H = mean over items of -log2 P(right option)

H is the cross-entropy, in bits, of the right answer under the model's option
distribution, so the information is k for a model that puts all mass on the right
answer and 0 for a uniform one. A confidently wrong model has H > k: `bits_unclipped`
is then negative, `bits` (= max(0, bits_unclipped), clipped at 0 because information
cannot be negative) is 0. Both are reported, with accuracy, macro-F1 over answer
positions and the standard error of accuracy.

Built-in probes (eval.probes = "1,2,...", k in 1..6): "which of 2^k passages does this
sentence continue?", generated deterministically from the embedded corpus's test split (as
tasks.py's built-in tasks): a sentence, its true preceding passage (up to 30 words ending at
a sentence end) and 2^k - 1 passages of other documents closest to it in word count
(`length_matched`). Every option scores the *same* text, the sentence, under its own passage
(as Winogrande's partial scoring), so the softmax over options is the posterior of the
passage under a uniform prior and no option wins by being a more probable string: with
options scored as continuations, whole sentences differ by tens of nats of unconditional
log-likelihood and small models came out confidently wrong. The i-th item's right answer is
option i mod 2^k, so answer positions are balanced for any eval.probe_items that is a
multiple of 2^k.

A probe file (eval.probe_file), one JSON object per line, any number (>= 2) of options:

    {"context": "The capital of France is", "options": ["Paris", "Rome"], "label": 0}

Each option is scored as the continuation " " + option. Its items carry log2(#options)
bits each (not necessarily an integer).

`max_k`: the largest k such that every built-in probe k' <= k has accuracy above
eval.probe_threshold (0 if the 1-bit probe is at or below it).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from etils import epath

from kbit_jax.evals import builtin_tasks, tasks

PROBE_BITS = tuple(range(1, 7))
SEED_OFFSET = 100  # rng stream of probe k: [task_seed, SEED_OFFSET + k]
CONTEXT_WORDS = 30
FILE_PROBE = "probe/file"


def probe_name(k: int) -> str:
  return f"probe/k{k}"


# ----------------------------------------------------------------------------- config


def parse_probes(value: str) -> tuple[int, ...]:
  """'1,2,3' -> (1, 2, 3); raises ValueError naming a bad or repeated k."""
  out = []
  for part in (p.strip() for p in str(value).split(",")):
    if not part:
      continue
    try:
      k = int(part)
    except ValueError:
      raise ValueError(
        f"eval.probes={value!r}: {part!r} is not an integer; allowed: "
        f"comma-separated k in {list(PROBE_BITS)}"
      ) from None
    if k not in PROBE_BITS:
      raise ValueError(f"eval.probes={value!r}: k={k} is out of range; allowed: {list(PROBE_BITS)}")
    if k in out:
      raise ValueError(f"eval.probes={value!r} names k={k} twice")
    out.append(k)
  return tuple(sorted(out))


# ----------------------------------------------------------------------------- items


def builtin_items(k: int, n: int, seed: int) -> list[tasks.Item]:
  """n items of the k-bit continuation probe, the same for the same (k, n, seed)."""
  if k not in PROBE_BITS:
    raise ValueError(f"probe k={k} is out of range; allowed: {list(PROBE_BITS)}")
  rng = np.random.default_rng([seed, SEED_OFFSET + k])
  pool = builtin_tasks.continuation_candidates(
    builtin_tasks.documents(), CONTEXT_WORDS, split_sentence=False
  )
  num = 2**k
  if len({doc for doc, _, _ in pool}) < 2 or len(pool) < num + n:
    raise ValueError(
      f"eval.probe_items={n} at k={k} but the corpus's {builtin_tasks.BUILTIN_SPLIT} "
      f"split offers only {len(pool)} passages"
    )
  items = []
  for i, (doc, context, sentence) in enumerate(builtin_tasks.sample(pool, n, rng, probe_name(k))):
    label = i % num
    contexts = builtin_tasks.with_label(
      context, length_matched(pool, doc, context, num - 1, rng), label
    )
    items.append(
      tasks.Item(
        requests=tuple((c, " " + sentence) for c in contexts),
        label=label,
        choice_chars=(len(sentence),) * num,
      )
    )
  return items


def length_matched(
  pool: list[tuple[int, str, str]], doc: int, true: str, count: int, rng: np.random.Generator
) -> list[str]:
  """`count` different passages (contexts) of other documents, those closest in word
  count to `true` first (random among equals)."""
  words = len(true.split())
  order = rng.permutation(len(pool))
  order = order[np.argsort([abs(len(pool[j][1].split()) - words) for j in order], kind="stable")]
  picked: list[str] = []
  for j in order:
    other_doc, text, _ = pool[j]
    if other_doc != doc and text != true and text not in picked:
      picked.append(text)
      if len(picked) == count:
        break
  return picked


def file_item(record: dict[str, Any], where: str) -> tasks.Item:
  """{"context": str, "options": [str, ...] (>= 2), "label": int} -> Item."""
  context = tasks.field(record, "context", where)
  options = tasks.field(record, "options", where)
  if not isinstance(context, str):
    raise ValueError(f"{where}: context={context!r} must be a string")
  if (
    not isinstance(options, list)
    or len(options) < 2
    or not all(isinstance(o, str) and o.strip() for o in options)
  ):
    raise ValueError(f"{where}: options={options!r} must be a list of at least 2 non-empty strings")
  label = tasks.parse_label(tasks.field(record, "label", where), len(options), "label", where)
  return tasks.choice_item(context, options, label)


def load_file(path: str) -> list[tasks.Item]:
  """Every item of a probe JSONL file; errors name the file and line."""
  file = epath.Path(path)
  if not file.exists():
    raise ValueError(f"eval.probe_file={path!r} does not exist")
  items = [file_item(record, where) for record, where in tasks.read_jsonl(file)]
  if not items:
    raise ValueError(f"eval.probe_file={path!r} has no records")
  return items


def load_probes(eval_cfg) -> dict[str, list[tasks.Item]]:
  """{probe name: items} for eval.probes (built-in) and eval.probe_file."""
  out = {
    probe_name(k): builtin_items(k, eval_cfg.probe_items, eval_cfg.task_seed)
    for k in parse_probes(eval_cfg.probes)
  }
  if eval_cfg.probe_file:
    out[FILE_PROBE] = load_file(eval_cfg.probe_file)
  return out


# ----------------------------------------------------------------------------- metrics


def option_log_probs(lls: Sequence[float]) -> np.ndarray:
  """log P(option) under softmax over the options' summed log-likelihoods (nats)."""
  x = np.asarray(lls, np.float64)
  top = x.max()
  return x - top - math.log(np.exp(x - top).sum())


def macro_f1(labels: Sequence[int], predictions: Sequence[int]) -> float:
  """Mean over the answer positions that occur (as label or prediction) of their F1."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  scores = []
  for c in np.union1d(labels, predictions):
    tp = np.sum((labels == c) & (predictions == c))
    denominator = np.sum(labels == c) + np.sum(predictions == c)
    scores.append(2 * tp / denominator)
  return float(np.mean(scores))


def score_probe(
  items: Sequence[tasks.Item], results: Sequence[Sequence[tuple[float, bool]]]
) -> dict[str, float]:
  """Probe metrics from per-item lists of (log-likelihood, is_greedy), one per option."""
  if len(items) != len(results):
    raise ValueError(f"{len(items)} probe items but {len(results)} results")
  log_probs = [option_log_probs([ll for ll, _ in r]) for r in results]
  labels = [item.label for item in items]
  predictions = [int(np.argmax(lp)) for lp in log_probs]
  hits = [float(p == y) for p, y in zip(predictions, labels)]
  k = float(np.mean([math.log2(len(item.requests)) for item in items]))
  cross_entropy = float(np.mean([-lp[y] for lp, y in zip(log_probs, labels)])) / math.log(2)
  return {
    "n": len(items),
    "k": k,
    "acc": float(np.mean(hits)),
    "acc_stderr": tasks.mean_stderr(hits),
    "chance": float(np.mean([1 / len(item.requests) for item in items])),
    "macro_f1": macro_f1(labels, predictions),
    "cross_entropy_bits": cross_entropy,
    "bits": max(0.0, k - cross_entropy),
    "bits_unclipped": k - cross_entropy,
  }


def max_k(per_probe: dict[str, dict[str, float]], threshold: float) -> int:
  """The largest k whose built-in probe, and every smaller one, has acc > threshold."""
  best = 0
  for k in PROBE_BITS:
    metrics = per_probe.get(probe_name(k))
    if metrics is None:
      continue
    if metrics["acc"] <= threshold:
      break
    best = k
  return best


def summary(per_probe: dict[str, dict[str, float]], threshold: float) -> dict[str, float]:
  """`probe/summary`: max_k and the recovered bits summed over the built-in probes."""
  builtin = [m for name, m in per_probe.items() if name != FILE_PROBE]
  return {
    "max_k": max_k(per_probe, threshold),
    "threshold": threshold,
    "bits": float(sum(m["bits"] for m in builtin)),
    "bits_offered": float(sum(m["k"] for m in builtin)),
  }

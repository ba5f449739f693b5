"""The four zero-shot tasks of the k-bit study, in lm-evaluation-harness conventions.

A task turns records into `Item`s: one (context, continuation) string pair per choice and
the gold choice. Records come from the standard released files in `eval.task_dir`, read
with their official field names, or, when `eval.task_dir` is empty, from built-in
offline tasks generated from the embedded corpus's test split (builtin_tasks.py). Both
go through the same record -> Item conversion, so the prompts are lm-eval's either way:

| task       | file in task_dir          | request per choice (context, continuation)  | metrics  |
|------------|---------------------------|---------------------------------------------|----------|
| lambada    | lambada_test.jsonl        | text up to its last ' '-word, ' ' + word    | acc, ppl |
| hellaswag  | hellaswag_val.jsonl       | preprocess(label: ctx_a Ctx_b), ' ' + end   | acc(norm)|
| piqa       | valid.jsonl (+ labels)    | 'Question: goal\nAnswer:', ' ' + sol        | acc(norm)|
| winogrande | dev.jsonl (1.1, xl dev)   | sentence up to '_' + option, ' ' + rest     | acc      |

acc: the choice of highest summed log-likelihood is the gold one. acc_norm: the same
after dividing each log-likelihood by its choice's length in characters (lm-eval's
`completion_len`, the choice text without the leading space). LAMBADA's acc is 1 when
greedy decoding reproduces the whole target, token for token; its perplexity is
exp(-mean over items of the target's summed log-likelihood), lm-eval's aggregation.
Winogrande scores the shared continuation after the blank under each option's context
(lm-eval's partial evaluation). Every acc has the standard error lm-eval reports: the
sample standard deviation (n - 1) of the per-item 0/1 scores over sqrt(n).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from etils import epath

TASKS = ("lambada", "hellaswag", "piqa", "winogrande")
# The official released files, as lm-eval's data sets hold them (validation splits,
# except LAMBADA's OpenAI test file).
TASK_FILES = {
  "lambada": "lambada_test.jsonl",
  "hellaswag": "hellaswag_val.jsonl",
  "piqa": "valid.jsonl",
  "winogrande": "dev.jsonl",
}
PIQA_LABELS_FILE = "valid-labels.lst"


@dataclasses.dataclass(frozen=True)
class Item:
  """One test example: a log-likelihood request per choice, and which choice is right."""

  requests: tuple[tuple[str, str], ...]  # (context, continuation) per choice
  label: int  # gold choice; 0 for LAMBADA's single request
  choice_chars: tuple[int, ...]  # len() of each choice text, for acc_norm


Record = dict[str, Any]


# ----------------------------------------------------------------------------- records


def field(record: Record, name: str, where: str) -> Any:
  if name not in record:
    raise ValueError(f"{where}: missing field {name!r}; the record has {sorted(record)}")
  return record[name]


def parse_label(value: Any, num_choices: int, name: str, where: str) -> int:
  try:
    label = int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: {name}={value!r} is not an integer") from None
  if not 0 <= label < num_choices:
    raise ValueError(f"{where}: {name}={value!r} is out of range; allowed: 0..{num_choices - 1}")
  return label


def choice_item(context: str, choices: Sequence[str], label: int) -> Item:
  return Item(
    requests=tuple((context, " " + c) for c in choices),
    label=label,
    choice_chars=tuple(len(c) for c in choices),
  )


def lambada_item(record: Record, where: str) -> Item:
  """lambada_openai: the context is the text up to its last space-separated word."""
  text = field(record, "text", where)
  context, _, word = text.rpartition(" ")
  return Item(requests=((context, " " + word),), label=0, choice_chars=(len(word),))


def hellaswag_preprocess(text: str) -> str:
  """lm-eval's clean-up of HellaSwag text (WikiHow's bracketed artefacts)."""
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


def hellaswag_item(record: Record, where: str) -> Item:
  if "ctx_a" in record and "ctx_b" in record:
    ctx = record["ctx_a"] + " " + record["ctx_b"].capitalize()
  else:
    ctx = field(record, "ctx", where)
  query = hellaswag_preprocess(field(record, "activity_label", where) + ": " + ctx)
  endings = field(record, "endings", where)
  if not isinstance(endings, list) or len(endings) < 2:
    raise ValueError(f"{where}: endings={endings!r} must be a list of at least 2 strings")
  label = parse_label(field(record, "label", where), len(endings), "label", where)
  return choice_item(query, [hellaswag_preprocess(e) for e in endings], label)


def piqa_item(record: Record, where: str) -> Item:
  goal, sol1, sol2 = (field(record, k, where) for k in ("goal", "sol1", "sol2"))
  label = parse_label(field(record, "label", where), 2, "label", where)
  return choice_item(f"Question: {goal}\nAnswer:", [sol1, sol2], label)


def winogrande_item(record: Record, where: str) -> Item:
  """Partial evaluation: each option completes the context, the rest is scored."""
  sentence = field(record, "sentence", where)
  options = [field(record, k, where) for k in ("option1", "option2")]
  answer = field(record, "answer", where)
  if answer not in ("1", "2"):
    raise ValueError(f"{where}: answer={answer!r} is unknown; allowed: ['1', '2']")
  blank = sentence.find("_")
  if blank < 0:
    raise ValueError(f"{where}: sentence={sentence!r} has no blank '_'")
  rest = " " + sentence[blank + 1 :].strip()
  return Item(
    requests=tuple((sentence[:blank] + o, rest) for o in options),
    label=int(answer) - 1,
    choice_chars=(len(rest),) * 2,
  )


TO_ITEM: dict[str, Callable[[Record, str], Item]] = {
  "lambada": lambada_item,
  "hellaswag": hellaswag_item,
  "piqa": piqa_item,
  "winogrande": winogrande_item,
}


# ----------------------------------------------------------------------------- files


def read_jsonl(path: epath.Path) -> Iterator[tuple[Record, str]]:
  """(record, "file:line") for each non-blank line; errors name the file and line."""
  if not path.exists():
    raise FileNotFoundError(f"task file {path} does not exist")
  with path.open("r") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: malformed JSON line ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
      yield record, where


def task_paths(task: str, task_dir: str) -> list[epath.Path]:
  """The files `task` reads from `task_dir` (PiQA's labels file only if its jsonl lacks
  labels, so it is not listed here)."""
  return [epath.Path(task_dir) / TASK_FILES[task]]


def _piqa_labels(records: list[tuple[Record, str]], jsonl: epath.Path) -> None:
  """Official PiQA keeps labels in valid-labels.lst, one per line; add them to records."""
  if all("label" in r for r, _ in records):
    return
  labels_path = jsonl.parent / PIQA_LABELS_FILE
  if not labels_path.exists():
    raise FileNotFoundError(
      f"{jsonl} has no 'label' field and the labels file {labels_path} does not exist"
    )
  labels = [
    (line.strip(), f"{labels_path}:{i}")
    for i, line in enumerate(labels_path.read_text().splitlines(), start=1)
    if line.strip()
  ]
  if len(labels) != len(records):
    raise ValueError(
      f"{labels_path} has {len(labels)} labels but {jsonl} has {len(records)} records"
    )
  for (record, _), (label, where) in zip(records, labels):
    record["label"] = parse_label(label, 2, "label", where)


def load_file_task(task: str, task_dir: str, limit: int = 0) -> list[Item]:
  """Items of `task` from its official file in `task_dir`; the first `limit` (0 = all)."""
  path = task_paths(task, task_dir)[0]
  records = list(read_jsonl(path))
  if task == "piqa":
    _piqa_labels(records, path)
  if limit:
    records = records[:limit]
  if not records:
    raise ValueError(f"task file {path} has no records")
  return [TO_ITEM[task](record, where) for record, where in records]


def task_names(eval_cfg) -> list[str]:
  return [t.strip() for t in eval_cfg.tasks.split(",") if t.strip()]


# ----------------------------------------------------------------------------- metrics


def mean_stderr(scores: Sequence[float]) -> float:
  """Standard error of the mean, lm-eval's: sample std (n - 1) / sqrt(n) (scipy's sem);
  nan if n < 2 (without scipy's small-sample warning)."""
  if len(scores) < 2:
    return float("nan")
  from scipy import stats  # here, not at the top: importing scipy.stats costs ~0.6 s

  return float(stats.sem(np.asarray(scores, np.float64)))


def item_acc(
  task: str, items: Sequence[Item], results: Sequence[Sequence[tuple[float, bool]]]
) -> list[float]:
  """Per item, 1.0 if answered right (lambada: greedy decoding reproduces the word; the
  others: the most likely choice is the label), else 0.0."""
  if task == "lambada":
    return [float(r[0][1]) for r in results]
  return [float(np.argmax([ll for ll, _ in r]) == item.label) for r, item in zip(results, items)]


def score_items(
  task: str, items: Sequence[Item], results: Sequence[Sequence[tuple[float, bool]]]
) -> dict[str, float]:
  """Task metrics from per-item lists of (log-likelihood, is_greedy), one per choice."""
  if len(items) != len(results):
    raise ValueError(f"{task}: {len(items)} items but {len(results)} results")
  metrics: dict[str, float] = {"n": len(items)}
  acc = item_acc(task, items, results)
  if task == "lambada":
    lls = np.array([r[0][0] for r in results], np.float64)
    metrics["perplexity"] = float(np.exp(-lls.mean()))
  else:
    lls_per_item = [np.array([ll for ll, _ in r], np.float64) for r in results]
    if task != "winogrande":  # its choices share one continuation: acc_norm == acc
      acc_norm = [
        float(np.argmax(lls / np.array(item.choice_chars)) == item.label)
        for lls, item in zip(lls_per_item, items)
      ]
      metrics.update(acc_norm=float(np.mean(acc_norm)), acc_norm_stderr=mean_stderr(acc_norm))
  metrics.update(acc=float(np.mean(acc)), acc_stderr=mean_stderr(acc))
  return metrics


def mean_accuracy(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
  """The study's headline number: the unweighted mean of the tasks' acc, with the
  standard error of a mean of independent estimates."""
  accs = [m["acc"] for m in per_task.values()]
  stderrs = [m["acc_stderr"] for m in per_task.values()]
  return {
    "acc": float(np.mean(accs)),
    "acc_stderr": float(math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)),
    "tasks": len(accs),
  }

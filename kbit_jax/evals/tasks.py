"""The four zero-shot tasks of the k-bit study, in lm-evaluation-harness conventions.

A task turns records into `Item`s: one (context, continuation) string pair per choice and
the gold choice. Records come from the standard released files in `eval.task_dir`, read
with their official field names, or, when `eval.task_dir` is empty, from built-in
offline tasks generated from the embedded corpus's test split (end of this file). Both
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
import functools
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


def load_task(task: str, eval_cfg) -> list[Item]:
  """Items of `task`: from eval.task_dir's official file, or built in when it is empty."""
  if task not in TASKS:
    raise ValueError(f"eval.tasks: task {task!r} is unknown; allowed: {list(TASKS)}")
  if eval_cfg.task_dir:
    return load_file_task(task, eval_cfg.task_dir, eval_cfg.items_per_task)
  records = builtin_records(task, eval_cfg.items_per_task, eval_cfg.task_seed)
  return [TO_ITEM[task](r, f"builtin:{task}:{i}") for i, r in enumerate(records)]


def task_names(eval_cfg) -> list[str]:
  return [t.strip() for t in eval_cfg.tasks.split(",") if t.strip()]


# ----------------------------------------------------------------------------- metrics


def mean_stderr(scores: Sequence[float]) -> float:
  """Standard error of the mean, lm-eval's: sample std (n - 1) / sqrt(n); nan if n < 2."""
  n = len(scores)
  if n < 2:
    return float("nan")
  return float(np.std(np.asarray(scores, np.float64), ddof=1) / math.sqrt(n))


def score_items(
  task: str, items: Sequence[Item], results: Sequence[Sequence[tuple[float, bool]]]
) -> dict[str, float]:
  """Task metrics from per-item lists of (log-likelihood, is_greedy), one per choice."""
  if len(items) != len(results):
    raise ValueError(f"{task}: {len(items)} items but {len(results)} results")
  metrics: dict[str, float] = {"n": len(items)}
  if task == "lambada":
    lls = np.array([r[0][0] for r in results], np.float64)
    acc = [float(r[0][1]) for r in results]
    metrics["perplexity"] = float(np.exp(-lls.mean()))
  else:
    lls_per_item = [np.array([ll for ll, _ in r], np.float64) for r in results]
    acc = [float(np.argmax(lls) == item.label) for lls, item in zip(lls_per_item, items)]
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


# ----------------------------------------------------------------------------- built-in

# Built-in offline tasks: records in the official formats above, generated from the
# embedded corpus's test split (perplexity uses validation, so the two never share text).
# Passages are whitespace-split words rejoined by single spaces and start at a sentence
# start. Label positions are balanced: the k-th sampled item's gold choice is k mod the
# number of choices.
BUILTIN_SPLIT = "test"
_END = (".", "!", "?")
_CLAUSE_END = _END + (";", ":", ",")
_PUNCT = ".,;:!?\"'()[]{}"
_STOPWORDS = frozenset(
  "that with this they them their there then than unto shall from have which were "
  "when what will your into also been would this these those thou thee thine upon "
  "said hath even every some very more most only such other about after before".split()
)


@dataclasses.dataclass(frozen=True)
class _Words:
  doc: int
  words: tuple[str, ...]


def _bare(word: str) -> str:
  return word.strip(_PUNCT)


def _is_content(word: str) -> bool:
  """A word worth predicting: letters only, 4+ of them, not a function word."""
  return word.isalpha() and len(word) >= 4 and word.lower() not in _STOPWORDS


def _is_end(word: str, ends: tuple[str, ...] = _END) -> bool:
  return word.rstrip("\"')").endswith(ends)


def _passage_start(words: Sequence[str], last: int, max_words: int) -> int:
  """First index of the longest run of whole sentences ending at `last`, <= max_words."""
  for j in range(max(0, last - max_words + 1), last + 1):
    if j == 0 or _is_end(words[j - 1]):
      return j
  return max(0, last - max_words + 1)


@functools.lru_cache(maxsize=1)
def documents() -> tuple[_Words, ...]:
  from kbit_jax.train import data

  return tuple(
    _Words(d, tuple(doc.split())) for d, doc in enumerate(data.corpus_documents(BUILTIN_SPLIT))
  )


def _sentence_ends(words: Sequence[str], ends: tuple[str, ...] = _END) -> list[int]:
  return [i for i, w in enumerate(words) if _is_end(w, ends)]


def _lambada_candidates(docs: Sequence[_Words]) -> list[tuple[int, Record]]:
  """Clause-final content words that already occurred in the passage."""
  out = []
  for d in docs:
    w = d.words
    for i in _sentence_ends(w, _CLAUSE_END):
      target, start = _bare(w[i]), _passage_start(w, i - 1, 60)
      if (
        _is_content(target)
        and i - start >= 15
        and target.lower() in {_bare(x).lower() for x in w[start:i]}
      ):
        out.append((d.doc, {"text": " ".join(w[start:i] + (target,))}))
  return out


def continuation_candidates(
  docs: Sequence[_Words], context_words: int, split_sentence: bool
) -> list[tuple[int, str, str]]:
  """(doc, context, true continuation). Whole next sentence (HellaSwag-style), or a
  sentence cut in half (PiQA-style), after up to `context_words` words of context."""
  out = []
  for d in docs:
    w, ends = d.words, _sentence_ends(d.words)
    for prev, end in zip([-1] + ends, ends):
      first = prev + 1
      cut = first + (end - first + 1) // 2 if split_sentence else first
      if not 4 <= end + 1 - cut <= 30 or cut - first > 30:
        continue
      start = _passage_start(w, cut - 1, context_words)
      if cut - start >= 8:
        out.append((d.doc, " ".join(w[start:cut]), " ".join(w[cut : end + 1])))
  return out


def _winogrande_candidates(docs: Sequence[_Words]) -> list[tuple[int, tuple[str, ...], int]]:
  """(doc, passage words, blank index): the last content word of a passage that occurs
  earlier in it, followed by at least two words."""
  out = []
  for d in docs:
    w = d.words
    for i in _sentence_ends(w):
      start = _passage_start(w, i, 40)
      passage = w[start : i + 1]
      for b in range(len(passage) - 3, 0, -1):
        word = passage[b]
        if _is_content(word) and word.lower() in {_bare(x).lower() for x in passage[:b]}:
          out.append((d.doc, passage, b))
          break
  return out


def sample(candidates: list, n: int, rng: np.random.Generator, task: str) -> list:
  if len(candidates) < n:
    raise ValueError(
      f"eval.items_per_task={n} but the corpus's {BUILTIN_SPLIT} split "
      f"offers only {len(candidates)} built-in {task} items"
    )
  return [candidates[i] for i in rng.permutation(len(candidates))[:n]]


def distractors(
  pool: list[tuple[int, str, str]], doc: int, true: str, k: int, rng: np.random.Generator
) -> list[str]:
  """k different continuations of other documents' passages."""
  picked: list[str] = []
  while len(picked) < k:
    other_doc, _, text = pool[int(rng.integers(len(pool)))]
    if other_doc != doc and text != true and text not in picked:
      picked.append(text)
  return picked


def with_label(true: str, others: list[str], label: int) -> list[str]:
  return others[:label] + [true] + others[label:]


def _winogrande_record(
  passage: tuple[str, ...], b: int, label: int, rng: np.random.Generator
) -> Record | None:
  target = passage[b]
  earlier = {_bare(x) for x in passage[:b]}
  others = sorted(x for x in earlier if _is_content(x) and x.lower() != target.lower())
  same_case = [x for x in others if x[0].isupper() == target[0].isupper()]
  others = same_case or others
  if not others:
    return None
  options = with_label(target, [others[int(rng.integers(len(others)))]], label)
  return {
    "sentence": " ".join(passage[:b] + ("_",) + passage[b + 1 :]),
    "option1": options[0],
    "option2": options[1],
    "answer": str(label + 1),
  }


def builtin_records(task: str, n: int, seed: int) -> list[Record]:
  """n records of `task` in its official format, the same for the same (n, seed)."""
  if task not in TASKS:
    raise ValueError(f"eval.tasks: task {task!r} is unknown; allowed: {list(TASKS)}")
  rng = np.random.default_rng([seed, TASKS.index(task)])
  docs = documents()
  if task == "lambada":
    return [r for _, r in sample(_lambada_candidates(docs), n, rng, task)]
  if task == "winogrande":
    candidates = _winogrande_candidates(docs)
    records = []
    for _, passage, b in sample(candidates, len(candidates), rng, task):
      record = _winogrande_record(passage, b, len(records) % 2, rng)
      if record is not None:
        records.append(record)
      if len(records) == n:
        return records
    raise ValueError(
      f"eval.items_per_task={n} but the corpus's {BUILTIN_SPLIT} split "
      f"offers only {len(records)} built-in {task} items"
    )
  pool = continuation_candidates(
    docs, 50 if task == "hellaswag" else 30, split_sentence=task == "piqa"
  )
  records = []
  for k, (doc, context, true) in enumerate(sample(pool, n, rng, task)):
    if task == "hellaswag":
      label = k % 4
      endings = with_label(true, distractors(pool, doc, true, 3, rng), label)
      records.append(
        {"activity_label": "Passage", "ctx": context, "endings": endings, "label": label}
      )
    else:
      label = k % 2
      sols = with_label(true, distractors(pool, doc, true, 1, rng), label)
      records.append({"goal": context, "sol1": sols[0], "sol2": sols[1], "label": label})
  return records

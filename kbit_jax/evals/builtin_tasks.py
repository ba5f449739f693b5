"""Built-in offline tasks: records in the official formats of the four study tasks
(tasks.py), generated deterministically from the embedded corpus's test split (perplexity
uses validation, so the two never share text).

    records = builtin_tasks.builtin_records("hellaswag", n=25, seed=0)

Passages are whitespace-split words rejoined by single spaces and start at a sentence
start. Label positions are balanced: the k-th sampled item's gold choice is k mod the
number of choices. The k-bit probes (probes.py) draw their passages from the same
candidates (`continuation_candidates`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Sequence

import numpy as np

from kbit_jax.evals.tasks import TASKS, Record

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
  """n records of `task` in its official format, the same for the same (n, seed).

  Made once per process (a grid evaluates the same items in every cell, and making
  them is a pass over the corpus in Python: 0.25 s per cell of the default grid); each
  call gets its own copy."""
  return copy.deepcopy(_builtin_records(task, n, seed))


@functools.lru_cache(maxsize=None)
def _builtin_records(task: str, n: int, seed: int) -> list[Record]:
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

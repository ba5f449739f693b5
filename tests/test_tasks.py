"""Zero-shot tasks: official file formats, lm-eval's prompts and metrics, built-in tasks."""

import json
import math

import ml_collections
import numpy as np
import pytest

from kbit_jax.config import defaults
from kbit_jax.evals import builtin_tasks, evaluate, tasks


def _eval_cfg(**overrides) -> ml_collections.ConfigDict:
  """The default `eval` section (config/defaults.py), smaller for tests."""
  cfg = defaults.base_config().eval
  cfg.update({"items_per_task": 40, "batch_size": 8, **overrides})
  return cfg


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


# ----------------------------------------------------------------------------- formats


def test_lambada_context_is_text_up_to_last_space_word(tmp_path):
  _write_jsonl(
    tmp_path / "lambada_test.jsonl", [{"text": "he saw the  dog and the dog"}, {"text": "single"}]
  )
  first, second = tasks.load_file_task("lambada", str(tmp_path))
  assert first.requests == (("he saw the  dog and the", " dog"),)
  assert (first.label, first.choice_chars) == (0, (3,))
  assert second.requests == (("", " single"),)


def test_hellaswag_uses_ctx_a_ctx_b_and_lm_eval_preprocessing(tmp_path):
  record = {
    "activity_label": "Cooking",
    "ctx_a": "A man cuts onions.",
    "ctx_b": "he",
    "ctx": "ignored when ctx_a and ctx_b exist",
    "endings": ["chops them [header] fast.", "sings.", " x [title]y", "eats."],
    "label": "2",
  }
  (item,) = tasks.load_file_task(
    "hellaswag", str(_write_jsonl(tmp_path / "hellaswag_val.jsonl", [record]).parent)
  )
  assert item.requests[0] == ("Cooking: A man cuts onions. He", " chops them fast.")
  assert item.requests[2][1] == " x. y"
  assert item.label == 2
  assert item.choice_chars == (len("chops them fast."), 6, 4, 5)
  del record["ctx_a"], record["ctx_b"]
  item = tasks.hellaswag_item(record, "x")
  assert item.requests[1] == ("Cooking: ignored when ctx_a and ctx_b exist", " sings.")


def test_piqa_labels_file_or_label_field(tmp_path):
  records = [
    {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid"},
    {"goal": "Dry hair", "sol1": "use a towel", "sol2": "use water"},
  ]
  _write_jsonl(tmp_path / "valid.jsonl", records)
  (tmp_path / "valid-labels.lst").write_text("0\n1\n")
  first, second = tasks.load_file_task("piqa", str(tmp_path))
  assert first.requests == (
    ("Question: Open a jar\nAnswer:", " twist the lid"),
    ("Question: Open a jar\nAnswer:", " eat the lid"),
  )
  assert (first.label, second.label) == (0, 1)
  assert first.choice_chars == (13, 11)
  (tmp_path / "valid-labels.lst").unlink()
  _write_jsonl(tmp_path / "valid.jsonl", [dict(records[0], label=1)])
  assert tasks.load_file_task("piqa", str(tmp_path))[0].label == 1


def test_winogrande_partial_contexts_share_the_continuation(tmp_path):
  record = {
    "sentence": "Sarah was a better cook than Maria because _ had practised.",
    "option1": "Sarah",
    "option2": "Maria",
    "answer": "1",
  }
  (item,) = tasks.load_file_task(
    "winogrande", str(_write_jsonl(tmp_path / "dev.jsonl", [record]).parent)
  )
  assert item.requests == (
    ("Sarah was a better cook than Maria because Sarah", " had practised."),
    ("Sarah was a better cook than Maria because Maria", " had practised."),
  )
  assert item.label == 0


def test_items_per_task_limits_file_records(tmp_path):
  _write_jsonl(tmp_path / "lambada_test.jsonl", [{"text": f"a b{i}"} for i in range(5)])
  cfg = _eval_cfg(task_dir=str(tmp_path), items_per_task=3)
  assert len(evaluate.load_task("lambada", cfg)) == 3
  assert (
    len(evaluate.load_task("lambada", _eval_cfg(task_dir=str(tmp_path), items_per_task=0))) == 5
  )


# ----------------------------------------------------------------------------- errors


def test_missing_task_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/dev.jsonl does not exist"):
    tasks.load_file_task("winogrande", str(tmp_path))


def test_malformed_line_names_file_and_line(tmp_path):
  path = tmp_path / "lambada_test.jsonl"
  path.write_text('{"text": "a b"}\n\n{"text": "c d"\n')
  with pytest.raises(ValueError, match=f"{path}:3: malformed JSON line"):
    tasks.load_file_task("lambada", str(tmp_path))
  path.write_text('{"text": "a b"}\n["a list"]\n')
  with pytest.raises(ValueError, match=f"{path}:2: expected a JSON object"):
    tasks.load_file_task("lambada", str(tmp_path))


@pytest.mark.parametrize(
  "task, record, message",
  [
    ("lambada", {"txt": "a b"}, r"missing field 'text'; the record has \['txt'\]"),
    (
      "hellaswag",
      {"ctx": "c", "endings": ["a", "b"], "label": 0},
      "missing field 'activity_label'",
    ),
    (
      "hellaswag",
      {"ctx": "c", "activity_label": "l", "endings": ["a", "b"], "label": 2},
      r"label=2 is out of range; allowed: 0..1",
    ),
    (
      "hellaswag",
      {"ctx": "c", "activity_label": "l", "endings": ["a", "b"], "label": ""},
      "label='' is not an integer",
    ),
    ("piqa", {"goal": "g", "sol1": "a", "label": 0}, "missing field 'sol2'"),
    (
      "winogrande",
      {"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "3"},
      r"answer='3' is unknown; allowed: \['1', '2'\]",
    ),
    (
      "winogrande",
      {"sentence": "no blank", "option1": "x", "option2": "y", "answer": "1"},
      "sentence=.no blank. has no blank",
    ),
  ],
)
def test_bad_records_are_named_with_file_and_line(tmp_path, task, record, message):
  path = _write_jsonl(tmp_path / tasks.TASK_FILES[task], [record])
  with pytest.raises(ValueError, match=f"{path}:1: {message}"):
    tasks.load_file_task(task, str(tmp_path))


def test_piqa_label_file_errors(tmp_path):
  _write_jsonl(tmp_path / "valid.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b"}] * 2)
  with pytest.raises(FileNotFoundError, match="valid-labels.lst does not exist"):
    tasks.load_file_task("piqa", str(tmp_path))
  (tmp_path / "valid-labels.lst").write_text("0\n")
  with pytest.raises(ValueError, match="has 1 labels but .*valid.jsonl has 2 records"):
    tasks.load_file_task("piqa", str(tmp_path))
  (tmp_path / "valid-labels.lst").write_text("0\n7\n")
  with pytest.raises(ValueError, match=r"valid-labels.lst:2: label='7' is out of range"):
    tasks.load_file_task("piqa", str(tmp_path))


def test_unknown_task_is_named():
  with pytest.raises(ValueError, match=r"task 'arc' is unknown; allowed: \['lambada'"):
    evaluate.load_task("arc", _eval_cfg())


# ----------------------------------------------------------------------------- metrics


def test_acc_and_acc_norm_differ_exactly_as_defined():
  item = tasks.Item(requests=(("q", " a"), ("q", " bbbbbbbbbb")), label=1, choice_chars=(1, 10))
  # acc: argmax(-2, -5) = 0, wrong. acc_norm: argmax(-2/1, -5/10) = 1, right.
  m = tasks.score_items("piqa", [item], [[(-2.0, False), (-5.0, False)]])
  assert (m["acc"], m["acc_norm"], m["n"]) == (0.0, 1.0, 1)


def test_hellaswag_acc_norm_uses_characters_not_tokens():
  item = tasks.hellaswag_item(
    {"activity_label": "L", "ctx": "c", "label": 0, "endings": ["abcd", "ab", "abcdefgh", "a"]}, "x"
  )
  lls = [-4.0, -3.0, -6.0, -2.5]  # per char: -1, -1.5, -0.75, -2.5
  m = tasks.score_items("hellaswag", [item], [[(ll, False) for ll in lls]])
  assert (m["acc"], m["acc_norm"]) == (0.0, 0.0)
  m = tasks.score_items(
    "hellaswag", [tasks.dataclasses.replace(item, label=2)], [[(ll, False) for ll in lls]]
  )
  assert (m["acc"], m["acc_norm"]) == (0.0, 1.0)


def test_winogrande_picks_the_option_whose_context_best_predicts_the_continuation():
  items = [
    tasks.winogrande_item({"sentence": "A _ b c", "option1": "x", "option2": "y", "answer": a}, "x")
    for a in ("1", "2", "2")
  ]
  results = [[(-1.0, False), (-3.0, False)]] * 3
  m = tasks.score_items("winogrande", items, results)
  assert m["acc"] == pytest.approx(1 / 3)
  assert "acc_norm" not in m
  assert m["acc_stderr"] == pytest.approx(np.std([1, 0, 0], ddof=1) / math.sqrt(3))


def test_lambada_acc_is_greedy_and_perplexity_is_exp_of_mean_target_nll():
  items = [tasks.lambada_item({"text": f"a b{i}"}, "x") for i in range(4)]
  results = [[(-1.0, True)], [(-2.0, False)], [(-3.0, True)], [(-6.0, True)]]
  m = tasks.score_items("lambada", items, results)
  assert m["acc"] == 0.75
  assert m["perplexity"] == pytest.approx(math.exp(3.0))
  assert m["acc_stderr"] == pytest.approx(0.25)  # std([1,0,1,1], ddof=1) = 0.5; / sqrt(4)


def test_stderr_and_mean_accuracy():
  assert math.isnan(tasks.mean_stderr([1.0]))
  mean = tasks.mean_accuracy(
    {"a": {"acc": 0.5, "acc_stderr": 0.3}, "b": {"acc": 0.7, "acc_stderr": 0.4}}
  )
  assert mean == {"acc": pytest.approx(0.6), "acc_stderr": pytest.approx(0.25), "tasks": 2}


# ----------------------------------------------------------------------------- built-in


@pytest.fixture(scope="module")
def builtin():
  return {t: builtin_tasks.builtin_records(t, 40, seed=0) for t in tasks.TASKS}


def test_builtin_tasks_are_deterministic_and_seeded(builtin):
  for task in tasks.TASKS:
    assert builtin_tasks.builtin_records(task, 40, seed=0) == builtin[task]
    assert builtin_tasks.builtin_records(task, 40, seed=1) != builtin[task]


def test_builtin_labels_are_balanced(builtin):
  for task, key, num in (
    ("hellaswag", "label", 4),
    ("piqa", "label", 2),
    ("winogrande", "answer", 2),
  ):
    counts = np.unique([r[key] for r in builtin[task]], return_counts=True)[1]
    assert list(counts) == [40 // num] * num, task


def test_builtin_items_are_what_they_claim(builtin):
  for r in builtin["lambada"]:
    context, _, target = r["text"].rpartition(" ")
    assert target.isalpha() and target.lower() in context.lower()
  for r in builtin["winogrande"]:
    before = r["sentence"].split("_")[0]
    right, wrong = (r["option1"], r["option2"])[:: 1 if r["answer"] == "1" else -1]
    assert right.lower() in before.lower() and wrong in before and right != wrong
    assert len(r["sentence"].split("_")[1].split()) >= 2
  for task, key in (("hellaswag", "endings"), ("piqa", None)):
    for r in builtin[task]:
      choices = r[key] if key else [r["sol1"], r["sol2"]]
      assert len(set(choices)) == len(choices)
  items = {t: evaluate.load_task(t, _eval_cfg(items_per_task=40)) for t in tasks.TASKS}
  assert [len(v) for v in items.values()] == [40] * 4
  assert items["hellaswag"][0].requests[0][0].startswith("Passage: ")
  assert items["piqa"][0].requests[0][0].startswith("Question: ")


def test_builtin_items_come_from_the_test_split_only(builtin):
  from kbit_jax.train import data

  validation = " ".join(" ".join(d.split()) for d in data.corpus_documents("validation"))
  test = " ".join(" ".join(d.split()) for d in data.corpus_documents("test"))
  for r in builtin["piqa"]:
    assert r["goal"] in test and r["goal"] not in validation


def test_too_many_builtin_items_is_an_error():
  with pytest.raises(ValueError, match=r"eval.items_per_task=100000 but .* offers only \d+"):
    builtin_tasks.builtin_records("lambada", 100_000, seed=0)

"""k-bit probes: the information metric, built-in generation, probe files, config errors."""

import json
import math

import ml_collections
import numpy as np
import pytest

from kbit_jax.config import eval_section
from kbit_jax.evals import probes, tasks


def _items(num_options, labels):
  return [tasks.choice_item("c", [f"o{i}" for i in range(num_options)], y) for y in labels]


def _results(lls_per_item):
  return [[(float(ll), False) for ll in lls] for lls in lls_per_item]


def _eval_cfg(**overrides):
  cfg = ml_collections.ConfigDict(
    dict(
      tasks="",
      task_dir="",
      items_per_task=4,
      task_seed=0,
      batch_size=8,
      max_len=0,
      ppl_split="",
      ppl_max_batches=0,
      text_file="",
      probes="",
      probe_items=8,
      probe_file="",
      probe_threshold=0.5,
    )
  )
  cfg.update(overrides)
  return cfg


# ----------------------------------------------------------------------------- metric


@pytest.mark.parametrize("k", probes.PROBE_BITS)
def test_a_certain_right_model_recovers_k_bits_and_a_uniform_one_none(k):
  labels = [i % 2**k for i in range(2**k)]
  certain = [np.where(np.arange(2**k) == y, 0.0, -1e4) for y in labels]
  m = probes.score_probe(_items(2**k, labels), _results(certain))
  assert m["bits"] == pytest.approx(k) and m["bits_unclipped"] == pytest.approx(k)
  assert (m["acc"], m["macro_f1"], m["k"]) == (1.0, 1.0, k)
  uniform = probes.score_probe(_items(2**k, labels), _results([np.full(2**k, -3.0)] * 2**k))
  assert uniform["bits"] == pytest.approx(0.0, abs=1e-12)
  assert uniform["cross_entropy_bits"] == pytest.approx(k)


def test_information_matches_a_hand_computed_case_and_clips_at_zero():
  # Item 1: P = (1/2, 1/4, 1/4), right = 0 -> 1 bit of cross-entropy. Item 2: P = (1/4, 1/2,
  # 1/4), right = 2 -> 2 bits. Each carries log2(3) bits: I = log2(3) - 1.5.
  lls = [np.log([0.5, 0.25, 0.25]) - 7, np.log([0.25, 0.5, 0.25]) + 3]
  m = probes.score_probe(_items(3, [0, 2]), _results(lls))
  assert m["cross_entropy_bits"] == pytest.approx(1.5)
  assert m["bits_unclipped"] == pytest.approx(math.log2(3) - 1.5)
  assert m["acc"] == 0.5
  # Confidently wrong: P(right) = 1/16 on a 1-bit item -> 4 bits of cross-entropy.
  wrong = probes.score_probe(_items(2, [0]), _results([np.log([1 / 16, 15 / 16])]))
  assert wrong["bits_unclipped"] == pytest.approx(1 - 4) and wrong["bits"] == 0.0


def test_macro_f1_by_hand():
  # class 0: tp 1, 2 true, 1 predicted -> 2/3; class 1: tp 1, 1 true, 2 predicted -> 2/3
  assert probes.macro_f1([0, 0, 1], [0, 1, 1]) == pytest.approx(2 / 3)
  assert probes.macro_f1([0, 1], [1, 0]) == 0.0


def test_max_k_is_the_largest_k_above_threshold_with_all_smaller_ones():
  per = {
    probes.probe_name(k): {"acc": acc, "bits": 0.0, "k": k}
    for k, acc in ((1, 0.9), (2, 0.7), (3, 0.4), (4, 0.6))
  }
  assert probes.max_k(per, 0.5) == 2
  assert probes.max_k(per, 0.95) == 0
  assert probes.summary(per, 0.5)["bits_offered"] == 10


# ----------------------------------------------------------------------------- built-in


def test_builtin_probes_are_deterministic_and_balanced():
  for k in (1, 3, 6):
    items = probes.builtin_items(k, 2**k * 2, seed=0)
    assert items == probes.builtin_items(k, 2**k * 2, seed=0)
    assert items != probes.builtin_items(k, 2**k * 2, seed=1)
    assert all(len(item.requests) == 2**k for item in items)
    assert np.bincount([item.label for item in items]).tolist() == [2] * 2**k
    for item in items:
      contexts = [context for context, _ in item.requests]  # options: the passages
      assert len(set(contexts)) == len(contexts) and len({x for _, x in item.requests}) == 1


def test_builtin_probes_come_from_the_test_split():
  from kbit_jax.train import data

  test = " ".join(" ".join(d.split()) for d in data.corpus_documents("test"))
  for item in probes.builtin_items(2, 8, seed=0):
    context, right = item.requests[item.label]
    assert (context + right) in test


# ----------------------------------------------------------------------------- files + config


def _write(path, lines):
  path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
  return str(path)


def test_probe_file_items(tmp_path):
  path = _write(
    tmp_path / "p.jsonl",
    [
      {"context": "The capital of France is", "options": ["Paris", "Rome", "Oslo"], "label": 0},
      {"context": "Two plus two is", "options": ["four", "five"], "label": "1"},
    ],
  )
  first, second = probes.load_file(path)
  assert first.requests[2] == ("The capital of France is", " Oslo")
  assert (first.label, second.label) == (0, 1)


@pytest.mark.parametrize(
  "record, message",
  [
    (
      {"context": "c", "options": ["a"], "label": 0},
      r"options=\[.a.\] must be a list of at least 2",
    ),
    (
      {"context": "c", "options": ["a", "b"], "label": 2},
      r"label=2 is out of range; allowed: 0..1",
    ),
    ({"context": "c", "options": ["a", "b"]}, "missing field 'label'"),
    ({"context": "c", "options": "ab", "label": 0}, "options=.ab. must be a list"),
  ],
)
def test_probe_file_errors_name_file_and_line(tmp_path, record, message):
  path = _write(
    tmp_path / "p.jsonl", [{"context": "c", "options": ["a", "b"], "label": 0}, "", record]
  )
  with pytest.raises(ValueError, match=f"{path}:3: {message}"):
    probes.load_file(path)
  with pytest.raises(ValueError, match=f"{path}:3: {message}"):
    eval_section.validate(_eval_cfg(probe_file=path))


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(probes="1,7"), r"k=7 is out of range; allowed: \[1, 2, 3, 4, 5, 6\]"),
    (dict(probes="0"), "k=0 is out of range"),
    (dict(probes="2,2"), "names k=2 twice"),
    (dict(probes="x"), "'x' is not an integer"),
    (dict(probes="1", probe_items=0), "eval.probe_items=0 must be an int >= 1"),
    (dict(probe_threshold=1.0), r"eval.probe_threshold=1.0 must be a number in \[0, 1\)"),
    (dict(probe_file="/nonexistent.jsonl"), "eval.probe_file='/nonexistent.jsonl' does not"),
  ],
)
def test_bad_probe_config_is_named(overrides, message):
  with pytest.raises(ValueError, match=message):
    eval_section.validate(_eval_cfg(**overrides))


def test_sections_without_probe_keys_keep_their_fingerprint():
  old = _eval_cfg(probe_items=64)
  for key in eval_section.EVAL_DEFAULTS:
    if key in old:  # _eval_cfg writes the probe keys; bos and the harness keys it lacks
      del old[key]
  eval_section.validate(old)
  assert eval_section.fingerprint_dict(old) == eval_section.fingerprint_dict(
    _eval_cfg(probe_items=64)
  )
  assert eval_section.fingerprint_dict(_eval_cfg(probes="1")) != eval_section.fingerprint_dict(old)

"""Filtered ranks and metrics: a hand-computed TransE graph, a numpy reference, ties."""

import numpy as np
import pytest

from kbit_jax.kg import models, ranking


def hand_graph():
  """5 entities on a 2-D grid, relations right (r0) and up (r1), TransE with L1.

  e3 (0,1)  e4 (1,1)
  e0 (0,0)  e1 (1,0)  e2 (2,0)          r0 = (1, 0), r1 = (0, 1)
  """
  params = {
    "entity": np.array([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1]], np.float32),
    "relation": np.array([[1, 0], [0, 1]], np.float32),
  }
  train = np.array([[0, 0, 1], [1, 0, 2], [0, 1, 3], [1, 1, 4]], np.int32)
  valid = np.array([[0, 1, 4]], np.int32)
  test = np.array([[3, 0, 4], [2, 1, 4]], np.int32)
  return params, train, valid, test


def test_transe_scores_and_filtered_ranks_by_hand():
  params, train, valid, test = hand_graph()
  model = models.TransE(5, 2, 2, norm=1)
  # Tail query (e3, r0, ?): q = e3 + r0 = (1, 1); score(e) = -|q - e|_1
  #   e0 -(1+1) = -2, e1 -(0+1) = -1, e2 -(1+1) = -2, e3 -(1+0) = -1, e4 0.
  tail = model.apply(
    {"params": params}, np.array([3]), np.array([0]), method=models.TransE.tail_scores
  )
  np.testing.assert_array_equal(tail, [[-2, -1, -2, -1, 0]])
  # Head query (?, r1, e4): score(e) = -|e + r1 - e4|_1 = -|e - (1, 0)|_1
  #   e0 -1, e1 0, e2 -1, e3 -(1+1) = -2, e4 -(0+1) = -1.
  head = model.apply(
    {"params": params}, np.array([1]), np.array([4]), method=models.TransE.head_scores
  )
  np.testing.assert_array_equal(head, [[-1, 0, -1, -2, -1]])
  # (e2, r1, e4) as one triple: -|(2,0) + (0,1) - (1,1)|_1 = -1.
  np.testing.assert_array_equal(model.apply({"params": params}, 2, 1, 4), -1)

  evaluator = ranking.Evaluator(
    model, test, np.concatenate([train, valid, test]), batch_size=4
  )  # 2 queries padded to one batch of 4
  tail_ranks, head_ranks = evaluator.ranks(params)
  # (e3, r0, e4): tail scores above, target e4 = 0 is the unique best -> 1.
  #   head (?, r0, e4): score(e) = -|e - (0, 1)|_1 = [-1, -2, -3, 0, -1], target e3 = 0 -> 1.
  # (e2, r1, e4): tail q = (2, 1): [-3, -2, -1, -2, -1]; target e4 = -1, none higher,
  #   e2 ties and is no true (e2, r1, ?) answer -> 1 + 0 + 1/2 = 1.5.
  #   head (?, r1, e4): [-1, 0, -1, -2, -1]; target e2 = -1; e1 (0) is higher but
  #   (e1, r1, e4) is in train: filtered; ties e0 (filtered: (e0, r1, e4) is in valid)
  #   and e4 -> 1 + 0 + 1/2 = 1.5 (unfiltered it would be 1 + 1 + 2/2 = 3).
  np.testing.assert_array_equal(tail_ranks, [1.0, 1.5])
  np.testing.assert_array_equal(head_ranks, [1.0, 1.5])
  m = evaluator.evaluate(params)
  # Per triple (1/tail + 1/head) / 2: 1 and (2/3 + 2/3) / 2 = 2/3; MRR = (1 + 2/3) / 2.
  assert m["mrr"] == pytest.approx(5 / 6)
  # Sample std of (1, 2/3) is (1/3)/sqrt(2); over sqrt(2) triples: 1/6.
  assert m["mrr_stderr"] == pytest.approx(1 / 6)
  assert m["hits@1"] == 0.5 and m["hits@3"] == 1.0 and m["hits@10"] == 1.0
  assert m["mean_rank"] == pytest.approx((1 + 1.5 + 1 + 1.5) / 4)
  assert m["num_triples"] == 2


def numpy_scores(name, params, h, r, t_or_none, side):
  """Scores of every entity as the answer of one query, in float64 numpy."""
  ent = params["entity"].astype(np.float64)
  rel = params["relation"].astype(np.float64)
  if name == "transe":
    if side == "tail":
      return -np.abs(ent[h] + rel[r] - ent).sum(-1)
    return -np.abs(ent + rel[r] - ent[t_or_none]).sum(-1)
  k = ent.shape[1] // 2
  z = ent[:, :k] + 1j * ent[:, k:]
  rot = np.exp(1j * rel[r] * np.pi / ((6.0 + 2.0) / k))
  if side == "tail":
    return 6.0 - np.abs(z[h] * rot - z).sum(-1)
  return 6.0 - np.abs(z * rot - z[t_or_none]).sum(-1)


def numpy_rank(scores, answer, known):
  others = [e for e in range(len(scores)) if e != answer and e not in known]
  higher = sum(scores[e] > scores[answer] for e in others)
  tied = sum(scores[e] == scores[answer] for e in others)
  return 1 + higher + tied / 2


@pytest.mark.parametrize("name", ["transe", "rotate"])
def test_filtered_ranks_equal_numpy_on_a_random_graph(name):
  rng = np.random.default_rng(0)
  num_entities, num_relations = 30, 3
  triples = np.unique(
    rng.integers(0, [num_entities, num_relations, num_entities], (300, 3)), axis=0
  ).astype(np.int32)
  test = triples[rng.choice(len(triples), 40, replace=False)]
  model = models.make_model(name, num_entities, num_relations, 8)
  params = {
    "entity": rng.normal(size=(num_entities, 8)).astype(np.float32),
    "relation": rng.normal(size=(num_relations, 8 if name == "transe" else 4)).astype(np.float32),
  }
  tail_ranks, head_ranks = ranking.Evaluator(model, test, triples, batch_size=16).ranks(params)
  true = set(map(tuple, triples.tolist()))
  for i, (h, r, t) in enumerate(test.tolist()):
    known_tails = {e for e in range(num_entities) if (h, r, e) in true}
    known_heads = {e for e in range(num_entities) if (e, r, t) in true}
    assert tail_ranks[i] == numpy_rank(
      numpy_scores(name, params, h, r, None, "tail"), t, known_tails
    ), i
    assert head_ranks[i] == numpy_rank(
      numpy_scores(name, params, None, r, t, "head"), h, known_heads
    ), i
  assert len(set(tail_ranks.tolist())) > 5  # the ranks are not all alike


def test_all_tied_scores_rank_in_the_middle():
  """Collapsed tables (all entities equal) must not rank first: (E + 1) / 2."""
  model = models.TransE(7, 1, 4)
  params = {"entity": np.ones((7, 4), np.float32), "relation": np.zeros((1, 4), np.float32)}
  test = np.array([[0, 0, 1], [2, 0, 3]], np.int32)
  tail, head = ranking.Evaluator(model, test, test, batch_size=2).ranks(params)
  np.testing.assert_array_equal(tail, [4.0, 4.0])  # 1 + 0 higher + 6 tied / 2
  np.testing.assert_array_equal(head, [4.0, 4.0])


def test_one_compile_serves_every_params_of_one_shape():
  rng = np.random.default_rng(1)
  model = models.RotatE(9, 2, 6)
  test = np.array([[0, 0, 1], [2, 1, 3], [4, 0, 5]], np.int32)
  evaluator = ranking.Evaluator(model, test, test, batch_size=2)
  for _ in range(3):
    evaluator.ranks(
      {
        "entity": rng.normal(size=(9, 6)).astype(np.float32),
        "relation": rng.normal(size=(2, 3)).astype(np.float32),
      }
    )
  assert evaluator.rank_fn._cache_size() == 1


def test_filter_lists_exclude_the_answer_itself():
  true = np.array([[0, 0, 1], [0, 0, 2], [3, 0, 2], [0, 1, 2]], np.int32)
  queries = np.array([[0, 0, 1], [3, 0, 2]], np.int32)
  assert [x.tolist() for x in ranking.filter_lists(true, queries, "tail")] == [[2], []]
  assert [x.tolist() for x in ranking.filter_lists(true, queries, "head")] == [[], [0]]
  with pytest.raises(ValueError, match=r"side='middle' is unknown; allowed: \['head', 'tail'\]"):
    ranking.filter_lists(true, queries, "middle")

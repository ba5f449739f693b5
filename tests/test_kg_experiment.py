"""experiment.run_cell: one training, one record per spec, readable by the results store."""

import numpy as np
import pytest

from kbit_jax.analysis import results
from kbit_jax.kg import data, experiment, ranking
from kbit_jax.quant.spec import QuantSpec


def small_graph():
  """Random triples; 20 of them are in train reversed (a leaked symmetric pair)."""
  rng = np.random.default_rng(0)
  triples = sorted(
    {(f"e{h}", f"r{r}", f"e{t}") for h, r, t in rng.integers(0, [40, 3, 40], (260, 3)) if h != t}
  )
  train = triples[:200] + [(t, r, h) for h, r, t in triples[200:220]]
  return data.from_triples(train, triples[200:230], triples[230:], name="small")


def test_run_cell_records(tmp_path):
  g = small_graph()
  c = experiment.train.default_config()
  c.model.name, c.model.dim = "rotate", 64
  c.data.num_train = 150
  c.train.update(steps=30, batch_size=50, negatives=4, log_every=10)
  specs = [
    QuantSpec(bits=16),
    QuantSpec(bits=4, blocksize=64),
    QuantSpec(bits=2, dtype="nf", blocksize=32),
  ]
  records = experiment.run_cell(c, specs, graph=g, split="valid", log=lambda _: None)
  assert [r["key"]["bits"] for r in records] == [16, 4, 2]
  k16, k4, k2 = records
  assert k16["key"] == dict(
    task="kg_link_prediction",
    graph="small",
    model="rotate",
    dim=64,
    norm=None,
    gamma=6.0,
    train_triples=150,
    train_steps=30,
    seed=0,
    bits=16,
    dtype="none",
    exponent_bits=0,
    blocksize=None,
    double_quant=False,
    targets="none",
    eval_id="valid-filtered-realistic-v1",
  )
  assert k4["key"]["targets"] == "entity,relation" and k4["key"]["blocksize"] == 64
  num_entities, relation = g.num_entities, 3 * 32  # RotatE: dim/2 phases per relation
  assert k16["model"]["params"] == num_entities * 64 + 3 * 32
  assert k16["model"]["entity_params"] == num_entities * 64
  assert k16["model"]["relation_params"] == relation
  # k = 4, B = 64: (4 + 16/64) bits per entity value; the 96 relation phases form 2 blocks.
  assert k4["bits"]["total_bits"] == num_entities * 64 * 4 + num_entities * 16 + 96 * 4 + 2 * 16
  assert k16["bits"]["total_bits"] == 16 * k16["model"]["params"]
  assert k2["bits"]["bits_per_param"] < k4["bits"]["bits_per_param"] < 16
  for r in records:
    m = r["metrics"]
    assert m["num_triples"] == len(g.valid_Nx3)
    assert 0 < m["mrr"] <= 1 and m["mrr_stderr"] > 0
    assert m["hits@1"] <= m["hits@3"] <= m["hits@10"]
  # The 16-bit record is the unquantized model's evaluation (training is deterministic).
  result = experiment.train.train(c, g, log=lambda _: None)
  direct = ranking.Evaluator(result.model, g.valid_Nx3, g.all_true_Nx3()).evaluate(result.params)
  assert {k: v for k, v in k16["metrics"].items() if k != "unleaked"} == direct
  # Without the triples whose reversed twin is in train (WN18RR's symmetric leakage):
  unleaked = ~data.reverse_in_train(result.graph, "valid")
  assert 0 < unleaked.sum() < len(unleaked)
  tail, head = ranking.Evaluator(result.model, g.valid_Nx3, g.all_true_Nx3()).ranks(result.params)
  assert k16["metrics"]["unleaked"] == ranking.metrics_from_ranks(tail[unleaked], head[unleaked])
  # Writable to, and read back from, the results store as one row per cell.
  for r in records:
    results.write(tmp_path, r)
  df = results.load(tmp_path)
  assert len(df) == 3 and set(df["bits"]) == {16, 4, 2}
  assert df.set_index("bits").loc[4, "mrr"] == pytest.approx(k4["metrics"]["mrr"])


def test_bad_spec_raises_before_training(tmp_path):
  with pytest.raises(ValueError, match=r"quant.outlier_share=0.1 is not supported"):
    experiment.run_cell(
      experiment.train.default_config(),
      [QuantSpec(bits=16), QuantSpec(bits=4, outlier_share=0.1)],
      graph=small_graph(),
      workdir=str(tmp_path / "w"),
    )
  assert not (tmp_path / "w").exists()  # no checkpoint: training never started

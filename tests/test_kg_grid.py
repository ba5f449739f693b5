"""The KG grid (`kbit kg`): every cell validated before training, one training per model,
one record per cell, exact resume without retraining or re-evaluating."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kbit_jax.analysis import kg_cells, results, stage
from kbit_jax.config import files
from kbit_jax.kg import data, grid, ranking, train
from kbit_jax.kg import plan as kg_plan
from kbit_jax.train import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
  """test_kg_experiment's small graph as a WN18RR-style directory: 40 entities, 3
  relations, 220 training triples, 20 of them the reversed twin of a valid triple."""
  rng = np.random.default_rng(0)
  triples = sorted(
    {(f"e{h}", f"r{r}", f"e{t}") for h, r, t in rng.integers(0, [40, 3, 40], (260, 3)) if h != t}
  )
  train_t = triples[:200] + [(t, r, h) for h, r, t in triples[200:220]]
  d = tmp_path_factory.mktemp("graph")
  for split, rows in (("train", train_t), ("valid", triples[200:230]), ("test", triples[230:])):
    (d / f"{split}.txt").write_bytes(data.write_triples(rows))
  return str(d)


def tiny_config(graph_dir, **grid):
  c = files.get_config(os.path.join(REPO, "configs", "kg.py"))
  c.grid.update(dict(models=("transe", "rotate"), dims=(8,), num_train=(100, 0), bits=(4, 16)))
  c.grid.update(grid)
  c.data.graph_dir = graph_dir
  c.train.update(dict(steps=6, batch_size=20, negatives=4, log_every=3, checkpoint_every=3))
  c.eval.split = "valid"
  return c


@pytest.fixture
def counted(monkeypatch):
  """Counts trainings that ran steps, trainings restored without a step, and rankings."""
  counts = {"trained": 0, "restored": 0, "ranked": 0}
  real_train, real_ranks = train.train, ranking.Evaluator.ranks

  def counting_train(config, *args, **kwargs):
    result = real_train(config, *args, **kwargs)
    counts["trained" if result.resumed_from < config.train.steps else "restored"] += 1
    return result

  def counting_ranks(self, params):
    counts["ranked"] += 1
    return real_ranks(self, params)

  monkeypatch.setattr(grid.train, "train", counting_train)
  monkeypatch.setattr(ranking.Evaluator, "ranks", counting_ranks)
  return counts


def _records(workdir):
  return {p.name: p.read_text() for p in (workdir / "results").iterdir()}


def test_grid_trains_once_stores_every_cell_and_resumes_exactly(graph_dir, tmp_path, counted):
  w = tmp_path / "w"
  config = tiny_config(graph_dir)
  plan = kg_plan.make_plan(config)
  assert [r.name for r in plan.runs] == [
    "transe-d8-n100-seed0",
    "transe-d8-n220-seed0",
    "rotate-d8-n100-seed0",
    "rotate-d8-n220-seed0",
  ]
  assert [c.name for c in plan.runs[0].cells] == ["transe d8 n100 k16", "transe d8 n100 k4 int B64"]
  out = grid.run(plan, str(w), log=lambda _: None)
  assert out["evaluated"] == 8 and out["trained"] == 4 and out["restored"] == 0
  assert counted == {"trained": 4, "restored": 0, "ranked": 8}
  first = _records(w)
  assert sorted(first) == sorted(f"{c.id}.json" for c in plan.cells)  # one record per cell
  for c in plan.cells:
    record = results.read(w / "results" / f"{c.id}.json")
    assert record["key"] == c.key_dict and record["name"] == c.name
    assert record["time"]["train_reused"] is False and record["compiles"]["cell"] >= 0
  summary = json.loads((w / "models" / "rotate-d8-n220-seed0" / grid.SUMMARY).read_text())
  assert summary["steps"] == 6 and summary["resumed_from"] == 0

  # Rerun: every cell found finished, no model touched.
  again = grid.run(kg_plan.make_plan(config), str(w), log=lambda _: None)
  assert again["evaluated"] == 0 and again["skipped"] == 4
  assert counted == {"trained": 4, "restored": 0, "ranked": 8}

  # A new k: each model restored from its final checkpoint (no step), 4 new cells only;
  # the first run's records are not rewritten.
  config3 = tiny_config(graph_dir, bits=(2, 4, 16))
  third = grid.run(kg_plan.make_plan(config3), str(w), log=lambda _: None)
  assert third["evaluated"] == 4 and third["trained"] == 0 and third["restored"] == 4
  assert counted == {"trained": 4, "restored": 4, "ranked": 12}
  records = _records(w)
  assert len(records) == 12 and all(records[name] == text for name, text in first.items())

  # A lost record is redone from the restored model, with the same metrics exactly.
  cell = plan.runs[3].cells[1]
  lost = results.read(w / "results" / f"{cell.id}.json")
  os.remove(w / "results" / f"{cell.id}.json")
  fourth = grid.run(kg_plan.make_plan(config3), str(w), log=lambda _: None)
  assert fourth["evaluated"] == 1 and fourth["restored"] == 1 and fourth["skipped"] == 3
  redone = results.read(w / "results" / f"{cell.id}.json")
  assert redone["metrics"] == lost["metrics"] and redone["bits"] == lost["bits"]
  assert redone["time"]["train_s"] == lost["time"]["train_s"]  # the training run's, kept
  assert redone["model"]["train_loss"] == lost["model"]["train_loss"]
  assert redone["time"]["train_reused"] is True

  # The store is a KG store: `kbit fit` reads it through the KG analysis.
  a = stage.fit(str(w / "results"), str(tmp_path / "fit"), n_boot=2)
  assert len(a.cells) == 12 and set(a.cells["family"]) == {
    kg_cells.family_label(m, n) for m in ("transe", "rotate") for n in (100, 220)
  }


ALLOWED = r"is not allowed; allowed:"
BAD = [
  (
    dict(models=("transe", "distmult")),
    r"model distmult .*model.name='distmult' is unknown; allowed: \['transe', 'rotate'\]",
  ),
  (dict(dims=(8, 33)), r"model rotate dim 33 .*model.dim=33 is odd; RotatE needs an even dim"),
  (dict(dtypes=("int", "int7")), rf"cell k4 int7 B64: quant.dtype='int7' {ALLOWED} \["),
  (dict(bits=(4, 17)), rf"cell k17 int B64: quant.bits=17 {ALLOWED} \["),
  (dict(blocksizes=(64, 48)), rf"cell k4 int B48: quant.blocksize=48 {ALLOWED}"),
  (dict(num_train=(100, 500)), rf"grid.num_train=500 {ALLOWED} 0 \(all\) or 1..220"),
  (dict(num_train=(220, 0)), r"num_train=\(220, 0\) names one training set twice \(0 = all 220"),
  (dict(tables="entity,head"), rf"grid.tables=\['entity', 'head'\] {ALLOWED} distinct"),
  (dict(seeds=(0, -1)), rf"grid.seeds=-1 {ALLOWED} an int >= 0"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[str(b) for b, _ in BAD])
def test_bad_cells_are_refused_before_anything_trains(graph_dir, tmp_path, counted, bad, message):
  with pytest.raises(ValueError, match=message):
    grid.plan_and_run(tiny_config(graph_dir, **bad), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists() and counted["trained"] == 0


def test_bad_sections_and_training_keys_are_named(graph_dir):
  c = tiny_config(graph_dir)
  c.grid.sizes = (1,)
  with pytest.raises(ValueError, match=r"grid.sizes is unknown; allowed: \['models', 'dims'"):
    kg_plan.make_plan(c)
  c = tiny_config(graph_dir)
  c.train.batch_size = 101  # more than the 100-triple subsample holds
  with pytest.raises(
    ValueError, match=r"model transe dim 8 num_train 100 seed 0: train.batch_size=101"
  ):
    kg_plan.make_plan(c)
  c = tiny_config(graph_dir)
  c.eval.split = "dev"
  with pytest.raises(
    ValueError, match=r"eval.split='dev' is unknown; allowed: \['train', 'valid', 'test'\]"
  ):
    kg_plan.make_plan(c)


def test_a_workdir_of_another_run_is_refused_before_any_work(graph_dir, tmp_path, counted):
  w = tmp_path / "w"
  config = tiny_config(graph_dir, models=("transe",), num_train=(100,), bits=(16,))
  grid.run(kg_plan.make_plan(config), str(w), log=lambda _: None)
  config.train.lr = 3e-3
  config.grid.bits = (4, 16)
  with pytest.raises(checkpoint.WorkdirError, match=r"transe-d8-n100-seed0: .*train.lr=0.003"):
    grid.run(kg_plan.make_plan(config), str(w), log=lambda _: None)
  assert counted["trained"] == 1 and len(os.listdir(w / "results")) == 1
  config.train.lr, config.train.steps = 1e-2, 3  # the saved run has 6 steps
  with pytest.raises(checkpoint.WorkdirError, match=r"holds a training run of 6 steps"):
    grid.run(kg_plan.make_plan(config), str(w), log=lambda _: None)


@pytest.mark.parametrize(
  "spec", ["configs/kg.py", "configs/kg.py:runlocal", "experiments/kg_embeddings/config.py"]
)
def test_shipped_configs_plan(spec):
  plan = kg_plan.make_plan(files.get_config(os.path.join(REPO, spec)))
  assert len(plan.cells) == len(plan.runs) * len(plan.config.grid.bits)
  assert plan.graph.num_entities == 22_324


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
  config = files.get_config(os.path.join(REPO, "configs", "kg.py:runlocal"))
  out = grid.plan_and_run(config, str(tmp_path / "w"), dry_run=True)
  assert out == dict(cells=16, todo=16, evaluated=0, trained=0, restored=0, skipped=0)
  printed = capsys.readouterr().out
  assert "kg grid plan: 8 models, 16 cells (0 already finished)" in printed
  assert "rotate-d16-n42054-seed0" in printed and not (tmp_path / "w" / "models").exists()


def test_kbit_kg_command_reports_a_bad_config_in_one_line(tmp_path):
  """The one subprocess of this file (~6 s: a fresh JAX import): main.py's error line."""
  bad = subprocess.run(
    [sys.executable, "-m", "kbit_jax.main", "kg", "--config", "configs/kg.py:runlocal",
     "--config.grid.dims=(8,33)", "--workdir", str(tmp_path / "w")],
    cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
    timeout=600,
  )  # fmt: skip
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1] == (
    "kbit kg: invalid config: kg grid model rotate dim 33 num_train 5000 seed 0: "
    "model.dim=33 is odd; RotatE needs an even dim (dim/2 complex numbers per entity, real "
    "then imaginary parts)"
  )
  assert not (tmp_path / "w").exists()

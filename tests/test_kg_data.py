"""Triples files, vocabularies, subsamples, and the shipped WordNet graph."""

import hashlib
import lzma
import re

import numpy as np
import pytest

from kbit_jax.kg import build_wordnet, data


def write(path, text):
  path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
  return path


def test_read_triples_plain_xz_and_crlf(tmp_path):
  text = "a\tr1\tb\nb\tr2\tc\n"
  assert data.read_triples(write(tmp_path / "t.txt", text)) == [("a", "r1", "b"), ("b", "r2", "c")]
  assert data.read_triples(write(tmp_path / "t.tsv.xz", lzma.compress(text.encode()))) == [
    ("a", "r1", "b"),
    ("b", "r2", "c"),
  ]
  assert data.read_triples(write(tmp_path / "w.txt", "a\tr\tb\r\nc\tr\td")) == [
    ("a", "r", "b"),
    ("c", "r", "d"),
  ]


@pytest.mark.parametrize(
  "text, line, fields",
  [
    ("a\tr\tb\na\tb\n", 2, "2 field"),  # a missing column
    ("a\tr\tb\tc\n", 1, "4 field"),  # one too many
    ("a\tr\tb\n\na\tr\tc\n", 2, "1 field"),  # an empty line
    ("a\t\tb\n", 1, "3 field"),  # an empty relation
    ("a r b\n", 1, "1 field"),  # spaces, not tabs
  ],
)
def test_read_triples_names_file_and_line(tmp_path, text, line, fields):
  path = write(tmp_path / "bad.txt", text)
  with pytest.raises(
    data.TriplesFormatError,
    match=rf"^{re.escape(str(path))}:{line}: expected head<TAB>relation<TAB>"
    rf"tail \(3 non-empty fields\), got {fields}",
  ):
    data.read_triples(path)


def test_read_triples_not_utf8_names_the_line(tmp_path):
  path = write(tmp_path / "bin.txt", b"a\tr\tb\nc\tr\t\xff\n")
  with pytest.raises(data.TriplesFormatError, match=rf"^{re.escape(str(path))}:2: not UTF-8"):
    data.read_triples(path)


def test_from_triples_vocabulary_from_train_and_dropped_counts():
  train = [("b", "likes", "a"), ("a", "is", "c")]
  valid = [("a", "likes", "c"), ("a", "likes", "z")]  # z: never in train
  test = [("c", "is", "b"), ("a", "hates", "b")]  # hates: never in train
  g = data.from_triples(train, valid, test, name="toy")
  assert g.entities == ("a", "b", "c") and g.relations == ("is", "likes")
  np.testing.assert_array_equal(g.train_Nx3, [[1, 1, 0], [0, 0, 2]])
  np.testing.assert_array_equal(g.valid_Nx3, [[0, 1, 2]])
  np.testing.assert_array_equal(g.test_Nx3, [[2, 0, 1]])
  assert g.dropped == {"valid": 1, "test": 1}
  assert g.all_true_Nx3().shape == (4, 3)
  with pytest.raises(
    ValueError,
    match=r"split='dev' is unknown; allowed: \['train', 'valid', "
    r"'test'\]",
  ):
    g.split("dev")


def test_load_graph_needs_one_file_per_split(tmp_path):
  write(tmp_path / "train.txt", "a\tr\tb\n")
  write(tmp_path / "valid.txt", "")
  with pytest.raises(FileNotFoundError, match=r"need exactly one test file .* found none"):
    data.load_graph(tmp_path)
  write(tmp_path / "test.txt", "b\tr\ta\n")
  g = data.load_graph(tmp_path)
  assert g.name == tmp_path.name and len(g.test_Nx3) == 1 and len(g.valid_Nx3) == 0
  write(tmp_path / "test.tsv.xz", lzma.compress(b"b\tr\ta\n"))
  with pytest.raises(FileNotFoundError, match=r"found \['test.txt', 'test.tsv.xz'\]"):
    data.load_graph(tmp_path)


def test_subsample_is_nested_and_independent_of_file_order():
  rng = np.random.default_rng(0)
  train = [(f"e{h}", f"r{r}", f"e{t}") for h, r, t in rng.integers(0, [50, 3, 50], (300, 3))]
  g = data.from_triples(train, [], [], name="toy")
  shuffled = data.from_triples([train[i] for i in rng.permutation(len(train))], [], [])

  def texts(graph):
    return {
      (graph.entities[h], graph.relations[r], graph.entities[t])
      for h, r, t in graph.train_Nx3.tolist()
    }

  small, large = data.subsample_train(g, 50), data.subsample_train(g, 200)
  assert len(small.train_Nx3) == 50 and texts(small) <= texts(large)
  assert texts(data.subsample_train(shuffled, 50)) == texts(small)
  assert small.entities == g.entities  # ids stay those of the full graph
  with pytest.raises(ValueError, match=r"num_train=0 is not allowed; allowed: 1\.\.300"):
    data.subsample_train(g, 0)


def test_reverse_in_train_marks_the_leaked_symmetric_twins():
  train = [("a", "sim", "b"), ("b", "hyp", "c"), ("c", "sim", "d")]
  test = [("b", "sim", "a"), ("c", "hyp", "a"), ("d", "sim", "c"), ("a", "sim", "c")]
  g = data.from_triples(train, [], test)
  np.testing.assert_array_equal(data.reverse_in_train(g), [True, False, True, False])


SHIPPED = ("train.tsv.xz", "valid.tsv.xz", "test.tsv.xz", "LICENSE")


def test_shipped_files_match_the_checksums_in_wordnet_md():
  doc = (data.ASSETS / "WORDNET.md").read_text()
  for name in SHIPPED:
    digest = hashlib.sha256((data.WORDNET_DIR / name).read_bytes()).hexdigest()
    lines = [line for line in doc.splitlines() if f"`{name}`" in line and digest in line]
    assert lines, f"WORDNET.md lists no sha256 {digest} for {name}"


def test_shipped_graph_counts_and_relation_set():
  g = data.shipped_graph()
  # The numbers of assets/WORDNET.md.
  assert (g.num_entities, g.num_relations) == (22324, 11)
  assert (len(g.train_Nx3), len(g.valid_Nx3), len(g.test_Nx3)) == (42054, 1109, 1090)
  assert g.dropped == {"valid": 0, "test": 0}  # the build already removed them
  assert set(g.relations) == set(build_wordnet.RELATIONS.values())
  assert len(np.unique(g.all_true_Nx3(), axis=0)) == 42054 + 1109 + 1090  # no duplicates
  hyp = g.relations.index("_hypernym")
  true = set(map(tuple, g.all_true_Nx3().tolist()))
  # Inverses are gone: no hypernym triple is also present reversed.
  assert not any((t, hyp, h) in true for h, r, t in true if r == hyp)

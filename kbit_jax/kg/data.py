"""Knowledge graphs as integer triples: the TSV loader, vocabularies, splits, subsamples.

A triples file has one `head<TAB>relation<TAB>tail` per line (WN18RR's and FB15k-237's
train.txt / valid.txt / test.txt are such files); `.xz` files are decompressed on the fly.
`load_graph(directory)` reads a directory of the three splits; `shipped_graph()` the
WordNet graph in assets/wordnet/ (provenance in assets/WORDNET.md).

Vocabularies come from the train split only, sorted, so ids are stable for a given train
file. Valid and test triples with an entity or relation absent from train cannot be
scored by an embedding model; as in the standard protocol they are dropped, and the
number dropped is kept on the graph (`Graph.dropped`) so that it can be reported.

Arrays are int32 (N, 3) with columns (head, relation, tail): `train_Nx3` etc.
"""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import pathlib
from typing import Iterable, Sequence

import numpy as np

ASSETS = pathlib.Path(__file__).parent / "assets"
WORDNET_DIR = ASSETS / "wordnet"
SPLITS = ("train", "valid", "test")
SUFFIXES = (".txt", ".tsv", ".txt.xz", ".tsv.xz")  # looked for, in this order, per split

Triple = tuple[str, str, str]


class TriplesFormatError(ValueError):
  """A triples file has a malformed line; the message names file:line."""


def read_triples(path: str | pathlib.Path) -> list[Triple]:
  """Every `head<TAB>relation<TAB>tail` line of `path` (`.xz`: decompressed), in order.

  A line ending in \\r\\n is accepted (files copied from Windows). Any other deviation, an
  empty line included, raises TriplesFormatError naming `path:line` and what was there.
  """
  path = pathlib.Path(path)
  raw = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[: e.start].count(b"\n") + 1
    raise TriplesFormatError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None
  lines = text.split("\n")
  if lines[-1] == "":  # the newline ending the last line (or an empty file)
    lines.pop()
  triples = []
  for number, line in enumerate(lines, start=1):
    fields = line.removesuffix("\r").split("\t")
    if len(fields) != 3 or not all(fields):
      raise TriplesFormatError(
        f"{path}:{number}: expected head<TAB>relation<TAB>tail (3 non-empty fields), got "
        f"{len(fields)} field(s): {line[:80]!r}"
      )
    triples.append((fields[0], fields[1], fields[2]))
  return triples


def write_triples(triples: Iterable[Triple]) -> bytes:
  """The TSV text of `triples` (UTF-8, one line each, in the order given)."""
  return "".join(f"{h}\t{r}\t{t}\n" for h, r, t in triples).encode("utf-8")


@dataclasses.dataclass(frozen=True)
class Graph:
  """A link-prediction graph: vocabularies and three int32 (N, 3) splits."""

  entities: tuple[str, ...]
  relations: tuple[str, ...]
  train_Nx3: np.ndarray
  valid_Nx3: np.ndarray
  test_Nx3: np.ndarray
  dropped: dict[str, int]  # valid/test triples dropped: an entity or relation not in train
  name: str = ""

  @property
  def num_entities(self) -> int:
    return len(self.entities)

  @property
  def num_relations(self) -> int:
    return len(self.relations)

  def split(self, name: str) -> np.ndarray:
    if name not in SPLITS:
      raise ValueError(f"split={name!r} is unknown; allowed: {list(SPLITS)}")
    return getattr(self, f"{name}_Nx3")

  def all_true_Nx3(self) -> np.ndarray:
    """Every known true triple (train, valid, test): what filtered ranking removes."""
    return np.concatenate([self.train_Nx3, self.valid_Nx3, self.test_Nx3])


def _ids(triples: Sequence[Triple], entity_id: dict, relation_id: dict) -> np.ndarray:
  kept = [
    (entity_id[h], relation_id[r], entity_id[t])
    for h, r, t in triples
    if h in entity_id and t in entity_id and r in relation_id
  ]
  return np.asarray(kept, np.int32).reshape(-1, 3)


def from_triples(
  train: Sequence[Triple], valid: Sequence[Triple], test: Sequence[Triple], name: str = ""
) -> Graph:
  """Builds the vocabularies from `train` and maps the three splits to ids."""
  if not train:
    raise ValueError(f"graph {name!r}: the train split has no triples")
  entities = tuple(sorted({h for h, _, _ in train} | {t for _, _, t in train}))
  relations = tuple(sorted({r for _, r, _ in train}))
  entity_id = {e: i for i, e in enumerate(entities)}
  relation_id = {r: i for i, r in enumerate(relations)}
  arrays = {
    s: _ids(triples, entity_id, relation_id) for s, triples in zip(SPLITS, (train, valid, test))
  }
  dropped = {s: len(triples) - len(arrays[s]) for s, triples in zip(SPLITS[1:], (valid, test))}
  return Graph(entities, relations, arrays["train"], arrays["valid"], arrays["test"], dropped, name)


def split_files(directory: str | pathlib.Path) -> dict[str, pathlib.Path]:
  """split -> its file in `directory`: `<split>` + one of SUFFIXES, exactly one each."""
  directory = pathlib.Path(directory)
  files = {}
  for split in SPLITS:
    found = [directory / f"{split}{s}" for s in SUFFIXES if (directory / f"{split}{s}").is_file()]
    if len(found) != 1:
      raise FileNotFoundError(
        f"{directory}: need exactly one {split} file named {split}{{{','.join(SUFFIXES)}}}; "
        f"found {[p.name for p in found] or 'none'}"
      )
    files[split] = found[0]
  return files


def load_graph(directory: str | pathlib.Path, name: str = "") -> Graph:
  """A graph from a directory holding train/valid/test triples files (WN18RR's layout)."""
  files = split_files(directory)
  return from_triples(
    *(read_triples(files[s]) for s in SPLITS), name=name or pathlib.Path(directory).name
  )


def shipped_graph() -> Graph:
  """The WordNet 3.0 graph shipped in assets/wordnet/ (see assets/WORDNET.md)."""
  return load_graph(WORDNET_DIR, name="wordnet3-semcor")


def triple_hash(h: str, r: str, t: str) -> int:
  """A stable 64-bit hash of a triple's text (sha256): orders the training subsamples."""
  return int.from_bytes(hashlib.sha256(f"{h}\t{r}\t{t}".encode("utf-8")).digest()[:8], "big")


def subsample_train(graph: Graph, num_train: int) -> Graph:
  """`graph` with only `num_train` of its training triples: those of smallest
  `triple_hash`, so smaller subsamples are subsets of larger ones and the choice does not
  depend on file order. Vocabularies, valid and test stay as they are (every data size is
  evaluated on the same queries); an entity left without training triples keeps its
  initial embedding, as any entity unseen in training would (`unseen_entities` counts
  them)."""
  total = len(graph.train_Nx3)
  if not 1 <= num_train <= total:
    raise ValueError(
      f"num_train={num_train} is not allowed; allowed: 1..{total} (the "
      f"training triples of graph {graph.name!r})"
    )
  keys = [
    triple_hash(graph.entities[h], graph.relations[r], graph.entities[t])
    for h, r, t in graph.train_Nx3
  ]
  keep = np.sort(np.argsort(np.asarray(keys, np.uint64), kind="stable")[:num_train])
  return dataclasses.replace(graph, train_Nx3=graph.train_Nx3[keep])


def unseen_entities(graph: Graph, split: str = "test") -> int:
  """Entities of `split` that appear in no training triple of `graph` (after a subsample)."""
  seen = np.zeros(graph.num_entities, bool)
  seen[graph.train_Nx3[:, 0]] = seen[graph.train_Nx3[:, 2]] = True
  queried = np.unique(graph.split(split)[:, [0, 2]])
  return int((~seen[queried]).sum())


def reverse_in_train(graph: Graph, split: str = "test") -> np.ndarray:
  """Per triple (h, r, t) of `split`: whether (t, r, h) is a training triple. For the
  symmetric relations of WN18RR-style graphs that answers the query outright (the
  split's "leaked" share); the other triples measure generalization."""
  train = set(map(tuple, graph.train_Nx3.tolist()))
  return np.asarray([(t, r, h) in train for h, r, t in graph.split(split).tolist()], bool)

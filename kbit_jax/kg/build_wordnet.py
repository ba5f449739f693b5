"""Rebuild the shipped WordNet link-prediction graph (assets/wordnet/) from Debian's
`wordnet-base` (WordNet 3.0), byte for byte. Users never need this: the outputs are
committed; it documents and reproduces how they were made (see assets/WORDNET.md):

  apt-get update && apt-get download wordnet-base        # downloads, installs nothing
  python -m kbit_jax.kg.build_wordnet --deb_dir .        # needs dpkg-deb

What it does, and why:
- Entities are synsets, named by part of speech and data-file offset (`n02084071`;
  adjective satellites `s` are filed under `a`, as their pointers are). Relations are
  WN18RR's 11 (Dettmers et al. 2018), read from the data files' pointers with the head
  the synset holding the pointer and the tail its target. Lexical pointers (between two
  words) become links between the words' synsets, as in WN18. Of every inverse pair only
  WN18RR's direction is kept (`DROPPED_INVERSES`), so no hypernym can be read off its
  hyponym link and so on; the four symmetric relations keep both directions (WordNet
  lists both; see the split below).
- The subset: synsets with at least one sense tagged in WordNet's semantic concordance
  (for some lemma, among the first `tagsense_cnt` offsets of its index.pos line), i.e.
  the concepts seen in running text, and the triples between two of them. That keeps the
  graph CPU sized (22k entities) without biasing it towards one relation, as a k-core
  would (derivationally related forms dominate the dense core).
- Split by a hash of each triple's text (3% valid, 3% test), as WN18RR's random split:
  the two directions of a symmetric relation are split independently, so a test triple's
  reversed twin is often in train. That is WN18RR's known property (its "inverse model"
  baseline scores MRR 0.35 on it); `stats['reverse_in_train']` counts them. Valid
  and test triples with an entity absent from train are dropped and counted, as the
  standard protocol does.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import lzma
import pathlib
import subprocess
import tempfile

from kbit_jax.kg import data

PACKAGE = "wordnet-base"
WORDNET_PATH = "usr/share/wordnet"
COPYRIGHT_PATH = "usr/share/doc/wordnet-base/copyright"
POS_FILES = ("noun", "verb", "adj", "adv")
LICENSE_FILE = "LICENSE"
VALID_BUCKETS, TEST_BUCKETS = range(0, 3), range(3, 6)  # of sha256(pair) mod 100
# WordNet pointer symbol -> WN18RR relation name (wninput(5WN) lists the symbols).
RELATIONS = {
  "@": "_hypernym",
  "@i": "_instance_hypernym",
  "%m": "_member_meronym",
  "%p": "_has_part",
  ";c": "_synset_domain_topic_of",
  "-r": "_member_of_domain_region",
  "-u": "_member_of_domain_usage",
  "+": "_derivationally_related_form",
  "^": "_also_see",
  "$": "_verb_group",
  "&": "_similar_to",
}
# The other halves of WN18RR's inverse pairs, which WN18 had and WN18RR removed.
DROPPED_INVERSES = {
  "~": "hyponym (of @)",
  "~i": "instance hyponym (of @i)",
  "#m": "member holonym (of %m)",
  "#p": "part holonym (of %p)",
  "-c": "member of domain topic (of ;c)",
  ";r": "domain region (of -r)",
  ";u": "domain usage (of -u)",
}


class WordNetFormatError(ValueError):
  """A WordNet database line that does not parse; the message names file:line."""


@dataclasses.dataclass(frozen=True)
class Built:
  splits: dict[str, list[data.Triple]]  # sorted triples per split
  stats: dict[str, object]


def _lines(path: pathlib.Path):
  """(line number, line) of a WordNet database file, past its licence header."""
  for number, line in enumerate(path.read_text("ascii").splitlines(), start=1):
    if not line.startswith("  "):  # header lines are "  <n> <licence text>"
      yield number, line


def _synset(pos: str, offset: str) -> str:
  return ("a" if pos == "s" else pos) + offset


def read_pointers(path: pathlib.Path) -> list[tuple[str, str, str]]:
  """(source synset, pointer symbol, target synset) of every pointer in a data.pos file.

  Line format (wndb(5WN)): offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt
  [symbol offset pos source/target]... [frames] | gloss.
  """
  pointers = []
  for number, line in _lines(path):
    fields = line.split(" | ")[0].split()
    try:
      source = _synset(fields[2], fields[0])
      at = 4 + 2 * int(fields[3], 16)
      count = int(fields[at])
      for i in range(at + 1, at + 1 + 4 * count, 4):
        symbol, offset, pos = fields[i], fields[i + 1], fields[i + 2]
        if len(offset) != 8 or not offset.isdigit() or pos not in "nvasr":
          raise ValueError(f"bad pointer {fields[i : i + 4]}")
        pointers.append((source, symbol, _synset(pos, offset)))
    except (IndexError, ValueError) as e:
      raise WordNetFormatError(
        f"{path}:{number}: not a data-file synset line ({e}): {line[:80]!r}"
      ) from None
  return pointers


def read_tagged(path: pathlib.Path) -> set[str]:
  """Synsets with a sense tagged in the semantic concordance, from an index.pos file.

  Line format: lemma pos synset_cnt p_cnt [symbol]... sense_cnt tagsense_cnt offset...;
  offsets are in sense order, the tagged (most frequent) senses first.
  """
  tagged = set()
  for number, line in _lines(path):
    fields = line.split()
    try:
      pos, synset_cnt, p_cnt = fields[1], int(fields[2]), int(fields[3])
      tagsense_cnt = int(fields[5 + p_cnt])
      offsets = fields[6 + p_cnt :]
      if len(offsets) != synset_cnt or not 0 <= tagsense_cnt <= synset_cnt:
        raise ValueError(
          f"{len(offsets)} offsets, synset_cnt {synset_cnt}, tagsense_cnt {tagsense_cnt}"
        )
    except (IndexError, ValueError) as e:
      raise WordNetFormatError(f"{path}:{number}: not an index line ({e}): {line[:80]!r}") from None
    tagged.update(_synset(pos, o) for o in offsets[:tagsense_cnt])
  return tagged


def split_of(triple: data.Triple) -> str:
  """valid (3%), test (3%) or train, from sha256 of the triple's TSV line."""
  bucket = data.triple_hash(*triple) % 100
  return "valid" if bucket in VALID_BUCKETS else "test" if bucket in TEST_BUCKETS else "train"


def build(wordnet_dir: pathlib.Path) -> Built:
  """The graph from a WordNet database directory (data.* and index.* of POS_FILES)."""
  pointers = [p for pos in POS_FILES for p in read_pointers(wordnet_dir / f"data.{pos}")]
  tagged = set().union(*(read_tagged(wordnet_dir / f"index.{pos}") for pos in POS_FILES))
  symbols = collections.Counter(symbol for _, symbol, _ in pointers)
  triples = {
    (s, RELATIONS[symbol], t) for s, symbol, t in pointers if symbol in RELATIONS and s != t
  }  # 19 lexical self-links in WordNet 3.0
  all_synsets = {s for s, _, t in triples} | {t for s, _, t in triples}
  triples = {x for x in triples if x[0] in tagged and x[2] in tagged}
  splits = {s: [] for s in data.SPLITS}
  for triple in sorted(triples):
    splits[split_of(triple)].append(triple)
  seen = {h for h, _, _ in splits["train"]} | {t for _, _, t in splits["train"]}
  unseen = {
    s: sum(1 for h, _, t in splits[s] if h not in seen or t not in seen) for s in data.SPLITS[1:]
  }
  for s in data.SPLITS[1:]:
    splits[s] = [x for x in splits[s] if x[0] in seen and x[2] in seen]
  train = set(splits["train"])
  reverse_in_train = {
    s: sum(1 for h, r, t in splits[s] if (t, r, h) in train) for s in data.SPLITS[1:]
  }
  stats = dict(
    pointers={symbol: symbols[symbol] for symbol in sorted(symbols)},
    synsets_with_a_relation=len(all_synsets),
    tagged_synsets=len(tagged),
    entities=len(seen),
    triples=len(triples),
    dropped_unseen=unseen,
    reverse_in_train=reverse_in_train,
    split_sizes={s: len(splits[s]) for s in data.SPLITS},
    relation_counts={
      s: dict(sorted(collections.Counter(r for _, r, _ in splits[s]).items())) for s in data.SPLITS
    },
  )
  return Built(splits, stats)


def licence_text(copyright_file: str) -> str:
  """The WordNet 3.0 licence paragraph of the package's debian/copyright, unindented.

  The licence asks that its notice appear on all copies of the database, modified ones
  included: it is shipped beside the graph.
  """
  lines = copyright_file.splitlines()
  start = lines.index("License: WordNet3.0") + 1
  body = []
  for line in lines[start:]:
    if not line.startswith(" "):
      break
    body.append("" if line == " ." else line[1:])
  return "\n".join(body) + "\n"


def xz(raw: bytes) -> bytes:
  """Deterministic xz: fixed preset and check, no timestamps or names in the stream."""
  return lzma.compress(
    raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME
  )


def write(built: Built, licence: str, out_dir: pathlib.Path) -> dict[str, str]:
  """Writes `<split>.tsv.xz` and LICENSE into out_dir; returns file name -> sha256."""
  out_dir.mkdir(parents=True, exist_ok=True)
  files = {f"{s}.tsv.xz": xz(data.write_triples(built.splits[s])) for s in data.SPLITS}
  files[LICENSE_FILE] = licence.encode("ascii")
  for name, content in files.items():
    (out_dir / name).write_bytes(content)
  return {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}


def extract(deb_dir: pathlib.Path, out_dir: pathlib.Path) -> tuple[str, str]:
  """`dpkg-deb -x` the one wordnet-base .deb in deb_dir; returns (version, .deb sha256)."""
  debs = sorted(deb_dir.glob(f"{PACKAGE}_*.deb"))
  if len(debs) != 1:
    raise FileNotFoundError(f"need exactly one {PACKAGE}_*.deb in {deb_dir}, found {debs}")
  subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(out_dir)], check=True)
  version = subprocess.run(
    ["dpkg-deb", "-f", str(debs[0]), "Version"], check=True, capture_output=True, text=True
  ).stdout.strip()
  return version, hashlib.sha256(debs[0].read_bytes()).hexdigest()


def build_from_deb(deb_dir: pathlib.Path, out_dir: pathlib.Path) -> dict[str, object]:
  """extract + build + write; returns the stats with the package and the checksums."""
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    version, deb_sha = extract(deb_dir, root)
    built = build(root / WORDNET_PATH)
    licence = licence_text((root / COPYRIGHT_PATH).read_text("utf-8"))
  checksums = write(built, licence, out_dir)
  return dict(package=PACKAGE, version=version, deb_sha256=deb_sha, sha256=checksums, **built.stats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--deb_dir", type=pathlib.Path, required=True, help=f"folder holding {PACKAGE}_*.deb"
  )
  parser.add_argument("--out_dir", type=pathlib.Path, default=data.WORDNET_DIR)
  args = parser.parse_args()
  for key, value in build_from_deb(args.deb_dir, args.out_dir).items():
    print(f"{key}: {value}")


if __name__ == "__main__":
  main()

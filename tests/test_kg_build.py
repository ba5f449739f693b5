"""The WordNet build: a synthetic database in WordNet's format, byte-exact rebuilds."""

import os
import pathlib
import re

import pytest

from kbit_jax.kg import build_wordnet, data

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n"

# Synsets (offsets are arbitrary here; real files use byte offsets). Pointers:
#   dog  @ canine, ~ puppy (hyponym: an inverse, dropped), + bark_v (lexical 0101), %p paw
#   paw  #p dog (part holonym: an inverse, dropped), @ paw (a self-link: dropped)
#   canine ~ dog (dropped), @ rare (rare is untagged: the triple is outside the subset)
#   bark_v + dog (lexical), $ growl_v
#   big_a & large_s (similar to; large is a satellite, filed as "a"), ! small_a (antonym:
#   not a WN18RR relation)
DATA = {
  "noun": [
    "00000001 05 n 01 dog 0 004 @ 00000002 n 0000 ~ 00000004 n 0000 + 00000011 v 0101 "
    "%p 00000003 n 0000 | a dog",
    "00000002 05 n 01 canine 0 002 ~ 00000001 n 0000 @ 00000005 n 0000 | a canine",
    "00000003 08 n 01 paw 0 002 #p 00000001 n 0000 @ 00000003 n 0000 | a paw",
    "00000004 05 n 01 puppy 0 000 | a puppy",
    "00000005 03 n 01 rare 0 000 | an untagged synset",
  ],
  "verb": [
    "00000011 32 v 01 bark 0 002 + 00000001 n 0101 $ 00000012 v 0000 01 + 02 00 | bark",
    "00000012 32 v 01 growl 0 000 01 + 02 00 | growl",
  ],
  "adj": [
    "00000021 00 a 01 big 0 002 & 00000022 a 0000 ! 00000023 a 0101 | big",
    "00000022 00 s 01 large 0 001 & 00000021 a 0000 | large",
    "00000023 00 a 01 small 0 000 | small",
  ],
  "adv": [],
}
# lemma pos synset_cnt p_cnt [symbols] sense_cnt tagsense_cnt offsets (tagged ones first)
INDEX = {
  "noun": [
    "canine n 1 0 1 1 00000002",
    "dog n 2 1 @ 2 1 00000001 00000004",
    "paw n 1 0 1 1 00000003",
    "puppy n 1 0 1 1 00000004",
    "rare n 1 0 1 0 00000005",
  ],
  "verb": ["bark v 1 0 1 1 00000011", "growl v 1 0 1 1 00000012"],
  "adj": ["big a 1 0 1 1 00000021", "large a 1 0 1 1 00000022", "small a 1 0 1 1 00000023"],
  "adv": [],
}


def write_wordnet(root: pathlib.Path, data_lines=None) -> pathlib.Path:
  root.mkdir(parents=True, exist_ok=True)
  for pos in build_wordnet.POS_FILES:
    lines = (data_lines or DATA)[pos]
    (root / f"data.{pos}").write_text(HEADER + "".join(f"{x}  \n" for x in lines))
    (root / f"index.{pos}").write_text(HEADER + "".join(f"{x}  \n" for x in INDEX[pos]))
  return root


def test_build_relation_set_inverses_subset_and_split(tmp_path):
  built = build_wordnet.build(write_wordnet(tmp_path / "wn"))
  expected = {
    ("n00000001", "_hypernym", "n00000002"),
    ("n00000001", "_derivationally_related_form", "v00000011"),
    ("n00000001", "_has_part", "n00000003"),
    ("v00000011", "_derivationally_related_form", "n00000001"),
    ("v00000011", "_verb_group", "v00000012"),
    ("a00000021", "_similar_to", "a00000022"),
    ("a00000022", "_similar_to", "a00000021"),
  }
  found = {x for split in built.splits.values() for x in split}
  kept = {x for x in expected if build_wordnet.split_of(x) == "train"}
  train_entities = {e for h, _, t in kept for e in (h, t)}
  # Every triple lands in the split its hash names; valid/test ones whose entities are
  # missing from train are dropped (and counted).
  for split, triples in built.splits.items():
    assert triples == sorted(triples)
    for x in triples:
      assert build_wordnet.split_of(x) == split
  assert set(built.splits["train"]) == kept
  survivors = {x for x in expected - kept if x[0] in train_entities and x[2] in train_entities}
  assert found == kept | survivors
  assert sum(built.stats["dropped_unseen"].values()) == len(expected) - len(found)
  assert built.stats["triples"] == len(expected)
  assert built.stats["tagged_synsets"] == 9  # all but n00000005 (rare)
  assert built.stats["pointers"]["~"] == 2 and built.stats["pointers"]["!"] == 1


def test_build_is_deterministic_bytes(tmp_path):
  root = write_wordnet(tmp_path / "wn")
  first = build_wordnet.write(build_wordnet.build(root), "licence\n", tmp_path / "a")
  second = build_wordnet.write(build_wordnet.build(root), "licence\n", tmp_path / "b")
  assert first == second
  for name in first:
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  g = data.load_graph(tmp_path / "a")  # the written files read back with the TSV loader
  assert len(g.train_Nx3) == len(build_wordnet.build(root).splits["train"])


def test_malformed_data_line_names_file_and_line(tmp_path):
  lines = dict(DATA, verb=[DATA["verb"][0], "00000012 32 v 01 growl 0 002 $ 0000 | cut short"])
  root = write_wordnet(tmp_path / "wn", lines)
  with pytest.raises(
    build_wordnet.WordNetFormatError,
    match=rf"^{re.escape(str(root / 'data.verb'))}:3: not a data-file synset",
  ):
    build_wordnet.build(root)


def test_licence_text_from_debian_copyright():
  copyright_file = (
    "Files: *\nLicense: WordNet3.0\n This software and database\n .\n"
    " WordNet 3.0 Copyright 2006\n\nFiles: debian/*\n"
  )
  assert build_wordnet.licence_text(copyright_file) == (
    "This software and database\n\nWordNet 3.0 Copyright 2006\n"
  )


@pytest.mark.skipif(
  not os.environ.get("KBIT_WORDNET_DEB_DIR"),
  reason="set KBIT_WORDNET_DEB_DIR to a folder holding wordnet-base_*.deb "
  "(apt-get download wordnet-base)",
)
def test_rebuild_from_the_deb_gives_the_shipped_bytes(tmp_path):
  stats = build_wordnet.build_from_deb(pathlib.Path(os.environ["KBIT_WORDNET_DEB_DIR"]), tmp_path)
  assert stats["version"] == "1:3.0-37"
  for name in stats["sha256"]:
    assert (tmp_path / name).read_bytes() == (data.WORDNET_DIR / name).read_bytes(), name

"""Rebuild the shipped corpus and tokenizer in `kbit_jax/assets/` from two Debian packages.

Users never need this: the outputs are committed. It documents, and reproduces byte for
byte, how `corpus.txt.xz` and `tokenizer.model` were made (see assets/CORPUS.md):

  apt-get update && apt-get download bible-kjv-text jargon-text   # downloads, installs nothing
  python -m kbit_jax.build_assets --deb_dir .                     # needs dpkg-deb and gzip

Sources, both public domain: the King James Bible (`bible-kjv-text`, /usr/lib/bible.data,
in the `bible` program's block-compressed format) and the Jargon File 4.4.7 (`jargon-text`,
/usr/share/doc/jargon-text/jargon.txt.gz). Output format: documents separated by one blank
line, each document's paragraphs (or verses) one per line.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import lzma
import pathlib
import re
import struct
import subprocess
import tempfile

import sentencepiece as spm

from kbit_jax.train import data

PACKAGES = ("bible-kjv-text", "jargon-text")
BIBLE_PATH = "usr/lib/bible.data"
JARGON_PATH = "usr/share/doc/jargon-text/jargon.txt.gz"

_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (\S.*)$")
_ENTRY = re.compile(r"^ {3}:[^:]+:")
_BOX = re.compile(r"[\u2500-\u257f]")
_XREF = re.compile(r"\{([^{}]*)\}")
_TYPOGRAPHY = str.maketrans(
  {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\xa0": " "}
)


def extract(deb_dir: pathlib.Path, out_dir: pathlib.Path) -> dict[str, str]:
  """`dpkg-deb -x` each package's .deb into out_dir; returns package -> version."""
  versions = {}
  for package in PACKAGES:
    debs = sorted(deb_dir.glob(f"{package}_*.deb"))
    if len(debs) != 1:
      raise FileNotFoundError(f"need exactly one {package}_*.deb in {deb_dir}, found {debs}")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(out_dir)], check=True)
    versions[package] = subprocess.run(
      ["dpkg-deb", "-f", str(debs[0]), "Version"], check=True, capture_output=True, text=True
    ).stdout.strip()
  return versions


def read_bible_data(raw: bytes) -> str:
  """Decode the `bible` program's `EC02` file: a table of block offsets, each block LZW.

  Header (big-endian u32 from byte 0x50): 0, uncompressed block size, number of blocks n,
  then n + 1 file offsets. Block i is `raw[off[i]:off[i+1]]`, an LZW stream in Unix
  `compress` format (16 bits, block mode) without its 3-byte magic, so `gzip -d` reads it
  once the magic is put back.
  """
  if raw[:4] != b"EC02":
    raise ValueError(f"not a bible.data file: magic {raw[:4]!r}, expected b'EC02'")
  _, _, num_blocks = struct.unpack(">3I", raw[0x50:0x5C])
  offsets = struct.unpack(f">{num_blocks + 1}I", raw[0x5C : 0x5C + 4 * (num_blocks + 1)])
  blocks = []
  for start, end in zip(offsets[:-1], offsets[1:]):
    blocks.append(
      subprocess.run(
        ["gzip", "-dc"], input=b"\x1f\x9d\x90" + raw[start:end], check=True, capture_output=True
      ).stdout
    )
  return b"".join(blocks).decode("ascii")


def bible_documents(text: str) -> list[str]:
  """One document per chapter; the `Ge1:1 ` verse references are dropped."""
  chapters: dict[tuple[str, str], list[str]] = {}
  for line in text.splitlines()[1:]:  # line 0 is the file's title
    match = _VERSE.match(line)
    if match is None:
      raise ValueError(f"unexpected line in bible.data: {line[:80]!r}")
    book, chapter, _, verse = match.groups()
    chapters.setdefault((book, chapter), []).append(" ".join(verse.split()))
  return ["\n".join(verses) for verses in chapters.values()]


def _is_stub(paragraph: str) -> bool:
  """Table-of-contents and glossary-index items: one short line that ends no sentence."""
  return len(paragraph) <= 60 and not paragraph.endswith((".", "!", "?", ":", ";", '"', ")"))


def jargon_documents(text: str) -> list[str]:
  """One document per lexicon entry, chapter or appendix section.

  Paragraphs are unwrapped onto one line; box-drawing tables, the table of contents, the
  glossary index and decorative rules are dropped; `{cross references}` lose their braces;
  curly quotes become ASCII quotes.
  """
  docs: list[list[str]] = [[]]
  for block in re.split(r"\n\s*\n", text.translate(_TYPOGRAPHY)):
    lines = [line for line in block.splitlines() if line.strip() and not _BOX.search(line)]
    if not lines:
      continue
    paragraph = " ".join(_XREF.sub(r"\1", " ".join(lines)).split())
    if len(lines) == 1 and (not lines[0].startswith(" ") or _ENTRY.match(lines[0])):
      docs.append([paragraph])  # a heading or `:headword:` starts a doc
    elif not (len(lines) == 1 and _is_stub(paragraph)):
      docs[-1].append(paragraph)
  return ["\n".join(doc) for doc in docs if len(doc) > 1]


def train_tokenizer(lines: list[str]) -> bytes:
  """BPE, 4096 pieces, byte fallback, fixed special ids, one thread: deterministic bytes.

  Identity normalization and no dummy prefix or whitespace folding make decode(encode(s))
  == s for every string. Training from an iterator keeps file paths out of the model.
  """
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(lines),
    model_writer=model,
    model_type="bpe",
    vocab_size=data.VOCAB_SIZE,
    byte_fallback=True,
    character_coverage=0.9995,
    pad_id=data.PAD_ID,
    unk_id=data.UNK_ID,
    bos_id=data.BOS_ID,
    eos_id=data.EOS_ID,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    split_digits=True,
    max_sentence_length=1 << 16,
    num_threads=1,
    minloglevel=2,
  )
  return model.getvalue()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--deb_dir",
    type=pathlib.Path,
    required=True,
    help="folder holding bible-kjv-text_*.deb and jargon-text_*.deb",
  )
  parser.add_argument("--out_dir", type=pathlib.Path, default=data.ASSETS)
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    versions = extract(args.deb_dir, root)
    bible = read_bible_data((root / BIBLE_PATH).read_bytes())
    jargon = gzip.decompress((root / JARGON_PATH).read_bytes()).decode("utf-8")
  docs = bible_documents(bible) + jargon_documents(jargon)
  text = "\n\n".join(docs)
  raw = text.encode("utf-8")
  packed = lzma.compress(
    raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME
  )
  args.out_dir.mkdir(parents=True, exist_ok=True)
  (args.out_dir / data.CORPUS_FILE.name).write_bytes(packed)

  train_docs = [doc for doc in docs if data.split_of(doc) == "train"]
  model = train_tokenizer([line for doc in train_docs for line in doc.split("\n")])
  (args.out_dir / data.TOKENIZER_FILE.name).write_bytes(model)

  print(f"packages: {versions}")
  print(
    f"raw sources: bible.data decoded {len(bible.encode())} B, jargon.txt {len(jargon.encode())} B"
  )
  print(
    f"documents: {len(docs)} (bible {len(bible_documents(bible))}); corpus {len(raw)} B raw, "
    f"{len(packed)} B xz, sha256 {hashlib.sha256(packed).hexdigest()}"
  )
  print(f"tokenizer: {len(model)} B, sha256 {hashlib.sha256(model).hexdigest()}")


if __name__ == "__main__":
  main()

"""Text in, packed int32 batches out: the embedded corpus, the tokenizer, the TFDS path.

The embedded corpus (assets/corpus.txt.xz, provenance in assets/CORPUS.md) is the King
James Bible and the Jargon File, ~5 MB of public-domain English, so every experiment runs
offline on a CPU. Its documents go to train / validation / test by a hash of their text.

The tokenizer (assets/tokenizer.model) is SentencePiece BPE with 4096 pieces, trained on
the train split only. Why BPE-4k: sequences stay short enough for CPU training, the
embedding table of a sub-1M-parameter model stays small (4096 x d_model), and byte
fallback means no text is out of vocabulary and `decode(encode(s)) == s` for any string.

A split's documents, each followed by eos, form one token stream; row i of a packed split
is `stream[i*L : i*L + L + 1]` (consecutive rows share one token, so every next-token
transition is trained on), inputs are `row[:-1]` and targets `row[1:]`.
`TrainIterator` shuffles rows per epoch from (seed, epoch); its state is two ints, and the
same global batch is cut into contiguous per-host slices whatever the number of hosts.

`data.source == "tfds"` takes documents from `tfds.data_source` (ArrayRecord random
access; TensorFlow is not needed) and packs them exactly as above.

Shape suffixes: N rows, L seq_len, B batch (per host unless named global).
"""

from __future__ import annotations

import functools
import hashlib
import lzma
import pathlib
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import sentencepiece as spm
from etils import epath

ASSETS = pathlib.Path(__file__).parents[1] / "assets"
CORPUS_FILE = ASSETS / "corpus.txt.xz"
TOKENIZER_FILE = ASSETS / "tokenizer.model"
SOURCES = ("embedded", "tfds")
SPLITS = ("train", "validation", "test")
VOCAB_SIZE = 4096  # presets.TOKENIZER_VOCAB
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
DOC_SEPARATOR = "\n\n"  # between documents in corpus.txt.xz and in corpus_text()


# ----------------------------------------------------------------------------- corpus


def split_of(document: str) -> str:
  """The split a document belongs to: ~3% validation, ~3% test, the rest train.

  3% (~180 KB, ~48k tokens each) so that the default evaluation, 8 batches of 32 rows of
  128 tokens, fits in validation. A hash of the text, not its position, so the split is
  stable under reordering and duplicate documents never straddle two splits.
  """
  bucket = int.from_bytes(hashlib.sha256(document.encode("utf-8")).digest()[:8], "big") % 100
  return "validation" if bucket < 3 else "test" if bucket < 6 else "train"


@functools.lru_cache(maxsize=1)
def _all_documents() -> tuple[str, ...]:
  return tuple(lzma.decompress(CORPUS_FILE.read_bytes()).decode("utf-8").split(DOC_SEPARATOR))


@functools.lru_cache(maxsize=None)
def corpus_documents(split: str) -> tuple[str, ...]:
  """The embedded corpus's documents of `split`, in corpus order."""
  _check_choice("split", split, SPLITS)
  return tuple(doc for doc in _all_documents() if split_of(doc) == split)


def corpus_text(split: str) -> str:
  """The embedded corpus's `split` as one string, documents separated by a blank line."""
  return DOC_SEPARATOR.join(corpus_documents(split))


# ----------------------------------------------------------------------------- tokenizer


class Tokenizer:
  """A SentencePiece model with the special ids the packer needs.

  `add_bos` is False: the packed training streams put eos between documents and no bos
  (the embedded tokenizer's bos piece is never used), so scoring adds none either
  (evals/scoring.py `prepends_bos`; convert/tokenizer.py has Hugging Face's setting).
  """

  add_bos = False

  def __init__(self, model_proto: bytes, name: str):
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.name = name
    self.vocab_size: int = self._sp.vocab_size()
    self.pad_id: int = self._sp.pad_id()
    self.unk_id: int = self._sp.unk_id()
    self.bos_id: int = self._sp.bos_id()
    self.eos_id: int = self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts), out_type=int, num_threads=0)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def __repr__(self) -> str:
    return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str = "embedded") -> Tokenizer:
  """`"embedded"` (the shipped BPE-4k), a path (local or gs://) to a SentencePiece .model,
  or a directory holding a Hugging Face tokenizer (tokenizer.json or vocab.json +
  merges.txt, e.g. a `kbit import` workdir), which gets the same interface."""
  file = TOKENIZER_FILE if path == "embedded" else epath.Path(path)
  if path != "embedded" and file.is_dir():
    from kbit_jax.convert import tokenizer as hf_tokenizer

    return hf_tokenizer.load_hf_tokenizer(path)
  tokenizer = Tokenizer(file.read_bytes(), path)
  if tokenizer.eos_id < 0:
    raise ValueError(
      f"data.tokenizer={path!r} has no eos piece; packing needs one to separate documents"
    )
  return tokenizer


# ----------------------------------------------------------------------------- config


def _check_choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
  if value not in allowed:
    raise ValueError(f"{key}={value!r} is unknown; allowed: {list(allowed)}")


def validate(data_cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad `data.*` key. Reads no data, loads nothing."""
  _check_choice("data.source", data_cfg.source, SOURCES)
  if not isinstance(data_cfg.seq_len, int) or data_cfg.seq_len <= 0:
    raise ValueError(f"data.seq_len={data_cfg.seq_len!r} must be a positive int")
  if data_cfg.tokenizer != "embedded" and not epath.Path(data_cfg.tokenizer).exists():
    raise ValueError(
      f"data.tokenizer={data_cfg.tokenizer!r} does not exist; allowed: "
      "'embedded' or the path of a SentencePiece .model file"
    )
  if data_cfg.source == "tfds":
    for key in ("tfds_name", "tfds_train_split", "tfds_eval_split", "text_key"):
      if not data_cfg[key]:
        raise ValueError(
          f"data.{key}={data_cfg[key]!r} must be set when data.source='tfds' "
          "(e.g. tfds_name='lm1b', text_key='text')"
        )


def _source_split(data_cfg: ml_collections.ConfigDict, split: str) -> str:
  """Embedded: one of SPLITS. TFDS: 'train' and 'validation' name the configured splits;
  any other string is a TFDS split as is (e.g. 'test', 'validation[:10%]')."""
  if data_cfg.source == "embedded":
    _check_choice("split", split, SPLITS)
    return split
  return {"train": data_cfg.tfds_train_split, "validation": data_cfg.tfds_eval_split}.get(
    split, split
  )


def _source_key(data_cfg: ml_collections.ConfigDict) -> tuple[str, str, str, str]:
  """(source, tfds_name, tfds_data_dir, text_key), the TFDS fields blank when unused."""
  _check_choice("data.source", data_cfg.source, SOURCES)
  if data_cfg.source == "tfds":
    return "tfds", data_cfg.tfds_name, data_cfg.tfds_data_dir, data_cfg.text_key
  return data_cfg.source, "", "", ""


# ----------------------------------------------------------------------------- documents


def _tfds_documents(name: str, split: str, data_dir: str, text_key: str) -> list[str]:
  # Imported here: only this source needs it, and it is slow to import.
  import tensorflow_datasets as tfds

  source = tfds.data_source(name, split=split, data_dir=data_dir or None)
  docs = []
  # One record at a time, as the source's own __iter__ does: the batched __getitems__
  # is faster, but tfds 4.9.10's mock_data patches it without binding self (TypeError),
  # and the documents are read once per process (token streams are cached).
  for example in source:
    if text_key not in example:
      raise ValueError(
        f"data.text_key={text_key!r} is not a feature of {name}; allowed: {sorted(example)}"
      )
    text = example[text_key]
    docs.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
  return docs


def _documents(
  source: str, tfds_name: str, tfds_data_dir: str, text_key: str, split: str
) -> Sequence[str]:
  if source == "embedded":
    return corpus_documents(split)
  return _tfds_documents(tfds_name, split, tfds_data_dir, text_key)


def documents(data_cfg: ml_collections.ConfigDict, split: str) -> Sequence[str]:
  """The documents of `split` from the configured source: the only source-specific step."""
  return _documents(*_source_key(data_cfg), _source_split(data_cfg, split))


# ----------------------------------------------------------------------------- packing


@functools.lru_cache(maxsize=8)
def _token_stream(
  source: str, tfds_name: str, tfds_data_dir: str, text_key: str, split: str, tokenizer: str
) -> np.ndarray:
  tok = load_tokenizer(tokenizer)
  ids = tok.encode_batch(_documents(source, tfds_name, tfds_data_dir, text_key, split))
  stream = np.fromiter(
    (i for doc in ids for i in (*doc, tok.eos_id)),
    dtype=np.int32,
    count=sum(len(doc) + 1 for doc in ids),
  )
  stream.setflags(write=False)
  return stream


def token_stream(data_cfg: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """All of `split` as one read-only int32 array, each document followed by eos (cached)."""
  return _token_stream(*_source_key(data_cfg), _source_split(data_cfg, split), data_cfg.tokenizer)


def packed(data_cfg: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(inputs_NxL, targets_NxL): views of the token stream, rows L tokens apart."""
  stream, seq_len = token_stream(data_cfg, split), data_cfg.seq_len
  num_rows = (len(stream) - 1) // seq_len
  if num_rows == 0:
    raise ValueError(
      f"split {split!r} has {len(stream)} tokens, fewer than data.seq_len + 1 = {seq_len + 1}"
    )
  used = num_rows * seq_len
  return stream[:used].reshape(num_rows, seq_len), stream[1 : used + 1].reshape(num_rows, seq_len)


# ----------------------------------------------------------------------------- iterators


class TrainIterator:
  """Endless shuffled batches of packed rows; `get_state()`/`set_state()` resume exactly.

  Epoch e visits rows in the order `permutation(seed, e)`, global_batch rows per step; a
  final partial batch is skipped. The state counts rows of the global batch, so it is the
  same on every host and stays valid if the number of hosts changes.
  """

  def __init__(
    self,
    inputs_NxL: np.ndarray,
    targets_NxL: np.ndarray,
    global_batch: int,
    seed: int,
    process_index: int,
    process_count: int,
  ):
    num_rows = len(inputs_NxL)
    if seed < 0:
      raise ValueError(f"train.seed={seed} must be >= 0 (it seeds numpy's SeedSequence)")
    if global_batch <= 0 or global_batch % process_count:
      raise ValueError(
        f"train.batch_size={global_batch} must be a positive multiple of the "
        f"process count {process_count}"
      )
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    if num_rows < global_batch:
      raise ValueError(
        f"the train split has {num_rows} rows, fewer than train.batch_size="
        f"{global_batch}; lower the batch size or data.seq_len"
      )
    self._inputs_NxL, self._targets_NxL = inputs_NxL, targets_NxL
    self.num_rows, self.global_batch, self.seed = num_rows, global_batch, seed
    self.host_batch = global_batch // process_count
    self._host_offset = process_index * self.host_batch
    self._epoch, self._index = 0, 0
    self._order_epoch, self._order_N = -1, np.empty(0, np.int64)

  def _order(self, epoch: int) -> np.ndarray:
    if self._order_epoch != epoch:
      self._order_epoch = epoch
      self._order_N = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    return self._order_N

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._index + self.global_batch > self.num_rows:
      self._epoch, self._index = self._epoch + 1, 0
    start = self._index + self._host_offset
    rows_B = self._order(self._epoch)[start : start + self.host_batch]
    self._index += self.global_batch
    return {"inputs": self._inputs_NxL[rows_B], "targets": self._targets_NxL[rows_B]}

  def get_state(self) -> dict[str, int]:
    """JSON-able: where the next batch starts, plus what the state is only valid for."""
    return {
      "epoch": self._epoch,
      "index": self._index,
      "seed": self.seed,
      "num_rows": self.num_rows,
    }

  def set_state(self, state: dict[str, int]) -> None:
    for key in ("seed", "num_rows"):
      if key in state and int(state[key]) != getattr(self, key):
        raise ValueError(
          f"iterator state has {key}={state[key]} but this iterator has "
          f"{key}={getattr(self, key)}: restoring would not resume the same data"
        )
    epoch, index = int(state["epoch"]), int(state["index"])
    if epoch < 0 or not 0 <= index <= self.num_rows:
      raise ValueError(
        f"iterator state epoch={epoch}, index={index} is out of range "
        f"(epoch >= 0, 0 <= index <= {self.num_rows})"
      )
    self._epoch, self._index = epoch, index


def make_train_iterator(
  data_cfg: ml_collections.ConfigDict,
  global_batch: int,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> TrainIterator:
  """Batches {"inputs", "targets"}: int32 [global_batch // process_count, seq_len] each.

  process_index/count default to jax's (read at call time, so importing this module never
  initializes a backend before `jax.distributed.initialize()`).
  """
  validate(data_cfg)
  inputs_NxL, targets_NxL = packed(data_cfg, "train")
  return TrainIterator(
    inputs_NxL,
    targets_NxL,
    global_batch,
    seed,
    jax.process_index() if process_index is None else process_index,
    jax.process_count() if process_count is None else process_count,
  )


def eval_batches(
  data_cfg: ml_collections.ConfigDict, split: str, batch_size: int, num_batches: int
) -> list[dict[str, np.ndarray]]:
  """The first num_batches * batch_size rows of `split`, in order, as global batches."""
  validate(data_cfg)
  inputs_NxL, targets_NxL = packed(data_cfg, split)
  needed = batch_size * num_batches
  if len(inputs_NxL) < needed:
    raise ValueError(
      f"split {split!r} has {len(inputs_NxL)} rows of data.seq_len="
      f"{data_cfg.seq_len}; {num_batches} batches of {batch_size} need {needed}"
    )
  return [
    {
      "inputs": inputs_NxL[i : i + batch_size].copy(),
      "targets": targets_NxL[i : i + batch_size].copy(),
    }
    for i in range(0, needed, batch_size)
  ]

"""The embedded corpus and tokenizer, packing, the checkpointable iterator, the TFDS path."""

import hashlib
import json
import lzma
import re
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kbit_jax.config import defaults
from kbit_jax.model import presets
from kbit_jax.train import build_assets, data


def _cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = defaults.base_config().data
  cfg.seq_len = 16
  cfg.update(overrides)
  return cfg


def test_corpus_is_large_split_disjoint_and_pinned():
  raw = lzma.decompress(data.CORPUS_FILE.read_bytes())
  assert len(raw) >= 2_000_000 and data.CORPUS_FILE.stat().st_size < 2_500_000
  splits = {s: set(data.corpus_documents(s)) for s in data.SPLITS}
  assert not splits["train"] & splits["validation"]
  assert not splits["train"] & splits["test"]
  assert not splits["validation"] & splits["test"]
  assert sum(map(len, splits.values())) == len(data._all_documents())
  for split in ("validation", "test"):
    assert len(data.corpus_text(split).encode()) >= 30_000
  # Pinned: the split of a document never changes, and CORPUS.md describes this file.
  assert [data.split_of(t) for t in "ajl"] == ["train", "test", "validation"]
  assert {s: len(docs) for s, docs in splits.items()} == {
    "train": 3323,
    "validation": 110,
    "test": 109,
  }  # as in CORPUS.md
  corpus_md = (data.ASSETS / "CORPUS.md").read_text()
  assert hashlib.sha256(data.CORPUS_FILE.read_bytes()).hexdigest() in corpus_md
  assert hashlib.sha256(data.TOKENIZER_FILE.read_bytes()).hexdigest() in corpus_md
  assert f"{len(raw):,} bytes" in corpus_md


def test_cleaning_drops_markup():
  bible = "Title line.\nGe1:1 In the  beginning.\nGe1:2 And.\nGe2:1 Thus.\n"
  assert build_assets.bible_documents(bible) == ["In the beginning.\nAnd.", "Thus."]
  jargon = (
    "Chapter 1. Intro\n\n   Table of Contents\n\n   Verb Doubling\n\n"
    "   It is “good”, see {foo}\n   bar.\n\n   :foo: n.\n\n   A  thing.\n\n"
    "   │table│\n"
  )
  assert build_assets.jargon_documents(jargon) == [
    'Chapter 1. Intro\nIt is "good", see foo bar.',
    ":foo: n.\nA thing.",
  ]


def test_tokenizer_round_trips_and_has_fixed_ids():
  tok = data.load_tokenizer()
  assert tok.vocab_size == presets.TOKENIZER_VOCAB == 4096
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  text = data.corpus_text("validation")
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert 0.25 < len(ids) / len(text.encode()) < 0.30  # ~3.7 bytes per token
  for odd in ("", "  two  spaces\tand\ttabs\n\n", "naïve café 東京 🙂", "x" * 3):
    assert tok.decode(tok.encode(odd)) == odd
  assert tok.unk_id not in tok.encode("東京 🙂")  # byte fallback, never unk
  assert data.load_tokenizer() is tok  # cached
  by_path = data.load_tokenizer(str(data.TOKENIZER_FILE))
  assert by_path is not tok and by_path.encode(text) == ids


def test_packing_shifts_targets_by_one_and_covers_the_stream():
  cfg = _cfg()
  stream = data.token_stream(cfg, "validation")
  assert stream.dtype == np.int32 and (stream == data.EOS_ID).sum() == len(
    data.corpus_documents("validation")
  )
  inputs_NxL, targets_NxL = data.packed(cfg, "validation")
  assert len(inputs_NxL) == (len(stream) - 1) // 16
  np.testing.assert_array_equal(inputs_NxL[:, 1:], targets_NxL[:, :-1])
  np.testing.assert_array_equal(inputs_NxL.ravel(), stream[: inputs_NxL.size])
  np.testing.assert_array_equal(targets_NxL.ravel(), stream[1 : inputs_NxL.size + 1])


def test_train_iterator_shapes_and_determinism():
  it = data.make_train_iterator(_cfg(), global_batch=8, seed=0, process_index=0, process_count=1)
  batch = next(it)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
    "inputs": ((8, 16), np.int32),
    "targets": ((8, 16), np.int32),
  }
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  again = data.make_train_iterator(_cfg(), 8, 0, 0, 1)
  other_seed = data.make_train_iterator(_cfg(), 8, 1, 0, 1)
  np.testing.assert_array_equal(next(again)["inputs"], batch["inputs"])
  assert not np.array_equal(next(other_seed)["inputs"], batch["inputs"])


def _small_iterator(seed=0, process_index=0, process_count=1) -> data.TrainIterator:
  """24 rows, batches of 8: an epoch is 3 steps."""
  inputs_NxL, targets_NxL = data.packed(_cfg(), "validation")
  return data.TrainIterator(
    inputs_NxL[:24], targets_NxL[:24], 8, seed, process_index, process_count
  )


def test_epochs_visit_every_row_once_and_reshuffle():
  it = _small_iterator()
  inputs_NxL = data.packed(_cfg(), "validation")[0][:24]
  epochs = [np.concatenate([next(it)["inputs"] for _ in range(3)]) for _ in range(2)]
  for seen in epochs:
    order = [int(np.flatnonzero((inputs_NxL == row).all(1))[0]) for row in seen]
    assert sorted(order) == list(range(24))
  assert not np.array_equal(epochs[0], epochs[1])


def test_state_restore_gives_identical_batches_across_an_epoch_boundary():
  it = _small_iterator()
  for _ in range(2):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # as Orbax's JsonSave keeps it
  assert state == {"epoch": 0, "index": 16, "seed": 0, "num_rows": 24}
  expected = [next(it) for _ in range(4)]  # steps 3..6 cross into epoch 2
  restored = _small_iterator()
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    np.testing.assert_array_equal(got["inputs"], want["inputs"])
    np.testing.assert_array_equal(got["targets"], want["targets"])
  with pytest.raises(ValueError, match="seed=0.*seed=5"):
    _small_iterator(seed=5).set_state(state)


def test_two_hosts_see_the_one_host_global_batch():
  one = _small_iterator()
  hosts = [_small_iterator(process_index=i, process_count=2) for i in range(2)]
  for _ in range(4):
    global_batch = next(one)
    halves = [next(h) for h in hosts]
    assert halves[0]["inputs"].shape == (4, 16)
    for key in ("inputs", "targets"):
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), global_batch[key])


def test_eval_batches_are_the_first_rows_in_order():
  cfg = _cfg()
  batches = data.eval_batches(cfg, "validation", batch_size=4, num_batches=3)
  inputs_NxL, targets_NxL = data.packed(cfg, "validation")
  np.testing.assert_array_equal(np.concatenate([b["inputs"] for b in batches]), inputs_NxL[:12])
  np.testing.assert_array_equal(np.concatenate([b["targets"] for b in batches]), targets_NxL[:12])
  with pytest.raises(ValueError, match=r"split 'test' has \d+ rows"):
    data.eval_batches(cfg, "test", batch_size=1000, num_batches=1000)


def test_tfds_source_packs_like_the_embedded_path():
  cfg = _cfg(source="tfds", tfds_name="lm1b", seq_len=8)
  # USE_CODE: the builder's code gives the features (lm1b: "text"); examples are random,
  # served through a mocked ArrayRecordDataSource, so nothing is downloaded.
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    docs = list(data.documents(cfg, "train"))
    it = data.make_train_iterator(cfg, global_batch=4, seed=0, process_index=0, process_count=1)
  assert len(docs) == 40 and all(isinstance(d, str) for d in docs)
  tok = data.load_tokenizer()
  expected = [i for d in docs for i in tok.encode(d) + [tok.eos_id]]
  np.testing.assert_array_equal(data.token_stream(cfg, "train"), expected)
  batch = next(it)
  assert batch["inputs"].shape == batch["targets"].shape == (4, 8)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert "tensorflow" not in sys.modules


class KbitTinyText(tfds.core.GeneratorBasedBuilder):
  """A real (not mocked) TFDS data set, written as ArrayRecord without TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self, features=tfds.features.FeaturesDict({"body": tfds.features.Text()})
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(30):
      yield i, {"body": f"Document {i}: naïve text."}


def test_tfds_source_reads_prepared_array_records(tmp_path):
  KbitTinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  cfg = _cfg(
    source="tfds",
    tfds_name="kbit_tiny_text",
    tfds_data_dir=str(tmp_path),
    tfds_eval_split="train[:10]",
    text_key="body",
    seq_len=8,
  )
  docs = data.documents(cfg, "train")
  assert sorted(docs) == sorted(f"Document {i}: naïve text." for i in range(30))
  assert len(data.documents(cfg, "validation")) == 10  # the configured eval split
  batches = data.eval_batches(cfg, "validation", batch_size=2, num_batches=3)
  stream = data.token_stream(cfg, "validation")
  np.testing.assert_array_equal(batches[0]["inputs"].ravel(), stream[:16])
  with pytest.raises(
    ValueError,
    match=re.escape("data.text_key='text' is not a feature of kbit_tiny_text; allowed: ['body']"),
  ):
    data.documents(
      _cfg(source="tfds", tfds_name="kbit_tiny_text", tfds_data_dir=str(tmp_path)), "train"
    )
  assert "tensorflow" not in sys.modules


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(source="hf"), "data.source='hf' is unknown; allowed: ['embedded', 'tfds']"),
    (dict(source="tfds"), "data.tfds_name='' must be set"),
    (dict(tokenizer="/no/such.model"), "data.tokenizer='/no/such.model' does not exist"),
    (dict(seq_len=0), "data.seq_len=0 must be a positive int"),
  ],
)
def test_bad_config_names_key_value_and_allowed(overrides, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    data.validate(_cfg(**overrides))
  with pytest.raises(ValueError, match=re.escape("split='dev' is unknown")):
    data.corpus_documents("dev")

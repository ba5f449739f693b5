"""Tokenizers of Hugging Face model directories, with `data.Tokenizer`'s interface.

    tok = load_hf_tokenizer("~/hf/opt-125m")          # or an imported workdir
    tok.encode("Hello"), tok.decode(ids), tok.eos_id, tok.vocab_size

Reads `tokenizer.json` with the `tokenizers` library, else a GPT-2 style byte-level BPE
from `vocab.json` + `merges.txt` (OPT's hub directories have only these). Special tokens
come from `special_tokens_map.json` / `tokenizer_config.json`, else from config.json's
`*_token_id`. `encode` adds no special tokens (no BOS), as lm-evaluation-harness scores
causal models; `decode` drops special tokens, as SentencePiece drops control pieces, so
`evals/perplexity.py` counts the same bytes and words for either tokenizer.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any, Sequence

SPECIALS = ("pad", "unk", "bos", "eos")


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  return json.loads(path.read_text()) if path.exists() else {}


def _token_text(value: Any) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


class HFTokenizer:
  """A `tokenizers.Tokenizer` with the special ids the packer and evaluation need."""

  def __init__(self, tokenizer: Any, name: str, special_ids: dict[str, int]):
    self._tok = tokenizer
    self.name = name
    self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
    self.pad_id: int = special_ids.get("pad", -1)
    self.unk_id: int = special_ids.get("unk", -1)
    self.bos_id: int = special_ids.get("bos", -1)
    self.eos_id: int = special_ids.get("eos", -1)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def __repr__(self) -> str:
    return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def _byte_level_bpe(vocab: pathlib.Path, merges: pathlib.Path):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  return tok


def tokenizer_dir(path: str | pathlib.Path) -> pathlib.Path:
  """A Hugging Face directory as is; an imported workdir's `tokenizer/` copy."""
  path = pathlib.Path(path).expanduser()
  return path / "tokenizer" if (path / "architecture.json").exists() else path


@functools.lru_cache(maxsize=8)
def load_hf_tokenizer(path: str) -> HFTokenizer:
  """The tokenizer of a Hugging Face model directory or of an imported workdir."""
  from tokenizers import Tokenizer

  directory = tokenizer_dir(path)
  if (directory / "tokenizer.json").exists():
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
  elif (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
    tok = _byte_level_bpe(directory / "vocab.json", directory / "merges.txt")
  else:
    raise FileNotFoundError(
      f"no tokenizer in {directory}: expected tokenizer.json, or vocab.json + merges.txt"
    )
  texts = {
    **_read_json(directory / "tokenizer_config.json"),
    **_read_json(directory / "special_tokens_map.json"),
  }
  config = _read_json(directory / "config.json")
  ids = {}
  for kind in SPECIALS:
    text = _token_text(texts.get(f"{kind}_token"))
    if text is not None and tok.token_to_id(text) is not None:
      tok.add_special_tokens([text])  # matched whole, never split into pieces
      ids[kind] = tok.token_to_id(text)
    elif isinstance(config.get(f"{kind}_token_id"), int):
      ids[kind] = config[f"{kind}_token_id"]
  if "eos" not in ids:
    raise ValueError(
      f"the tokenizer in {directory} names no eos token (special_tokens_map"
      ".json, tokenizer_config.json or config.json eos_token_id); packing "
      "documents needs one"
    )
  return HFTokenizer(tok, str(path), ids)

"""Perplexity of a token stream: per token, per byte (bits per byte) and per word.

    perplexity.perplexity(params, net, data_cfg, "validation", batch_size)
    perplexity.text_file_perplexity(params, net, data_cfg, path, batch_size)

Every token of the stream (a split of `data`, by default the corpus's validation split, or
a local UTF-8 file) is scored in rows of `data.seq_len` tokens, each row's context starting
fresh at its first token. The three perplexities come from the same total NLL: bytes and
words (whitespace-separated) are counted in the decoded text of the scored tokens, one
document at a time (eos tokens are scored but add no text). The parameters are an argument
of the jitted function, so every quantized variant of a model reuses one executable; the
last batch is padded with rows of weight 0.

Shape suffixes: B batch, L length, V vocab, T stream tokens.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from kbit_jax.model import transformer
from kbit_jax.train import data


def _nll_sums(
  params: Any,
  inputs_BxL: jax.Array,
  targets_BxL: jax.Array,
  weights_BxL: jax.Array,
  *,
  net: transformer.Transformer,
):
  """Per row: (weighted sum of next-token NLL in nats, sum of weights)."""
  nll_BxL = transformer.next_token_nll(net.apply({"params": params}, inputs_BxL), targets_BxL)
  return jnp.sum(nll_BxL * weights_BxL, axis=1), jnp.sum(weights_BxL, axis=1)


nll_sums = jax.jit(_nll_sums, static_argnames="net")


def _text_stats(tokenizer: data.Tokenizer, targets_T: np.ndarray) -> tuple[int, int]:
  """(UTF-8 bytes, whitespace-separated words) of the text the tokens decode to."""
  cuts = np.flatnonzero(targets_T == tokenizer.eos_id)
  num_bytes = num_words = 0
  for piece in np.split(targets_T, cuts):
    text = tokenizer.decode(piece[piece != tokenizer.eos_id])
    num_bytes += len(text.encode("utf-8"))
    num_words += len(text.split())
  return num_bytes, num_words


def stream_perplexity(
  params: Any,
  net: transformer.Transformer,
  stream_T: np.ndarray,
  tokenizer: data.Tokenizer,
  seq_len: int,
  batch_size: int,
  max_batches: int | None = None,
  rows: dict | None = None,
) -> dict[str, float]:
  """Perplexities of every next token of `stream_T` (the first `max_batches` batches).

  Row r predicts stream[r*L + 1 : r*L + L + 1] from stream[r*L : r*L + L]; the last row
  may be short and, like the padding rows of the last batch, is padded with weight 0.
  A `rows` dict receives each row's NLL sum and token count ("nll_sum", "tokens"): the
  per-item scores a resampling of the evaluation needs (analysis/noise.py).
  """
  num_targets = len(stream_T) - 1
  if num_targets < 1:
    raise ValueError(f"a token stream of {len(stream_T)} tokens has nothing to predict")
  num_rows = -(-num_targets // seq_len)
  if max_batches:
    num_rows = min(num_rows, max_batches * batch_size)
  num_targets = min(num_targets, num_rows * seq_len)
  padded_rows = -(-num_rows // batch_size) * batch_size
  size = padded_rows * seq_len
  inputs_T, targets_T, weights_T = (
    np.zeros(size, np.int32),
    np.zeros(size, np.int32),
    np.zeros(size, np.float32),
  )
  inputs_T[:num_targets] = stream_T[:num_targets]
  targets_T[:num_targets] = stream_T[1 : num_targets + 1]
  weights_T[:num_targets] = 1.0
  shape = (-1, batch_size, seq_len)
  sums = [
    nll_sums(params, x, y, w, net=net)
    for x, y, w in zip(inputs_T.reshape(shape), targets_T.reshape(shape), weights_T.reshape(shape))
  ]
  sums = np.asarray(jax.device_get(sums), np.float64)  # (batches, 2, batch_size)
  row_nll, row_tokens = sums[:, 0].reshape(-1)[:num_rows], sums[:, 1].reshape(-1)[:num_rows]
  nll, count = float(row_nll.sum()), int(round(row_tokens.sum()))
  if rows is not None:
    rows.update(nll_sum=row_nll.tolist(), tokens=[int(round(t)) for t in row_tokens])
  num_bytes, num_words = _text_stats(tokenizer, targets_T[:num_targets])
  return {
    "nll": nll / count,
    "perplexity": math.exp(nll / count),
    "bits_per_byte": nll / math.log(2) / max(num_bytes, 1),
    "byte_perplexity": math.exp(nll / max(num_bytes, 1)),
    "word_perplexity": math.exp(nll / max(num_words, 1)),
    "tokens": count,
    "bytes": num_bytes,
    "words": num_words,
  }


def perplexity(
  params: Any,
  net: transformer.Transformer,
  data_cfg: ml_collections.ConfigDict,
  split: str,
  batch_size: int,
  max_batches: int | None = None,
  rows: dict | None = None,
) -> dict[str, float]:
  """Perplexities on a split of the configured data source (embedded: train | validation
  | test; TFDS: any split string, 'validation' meaning data.tfds_eval_split); `rows` as
  stream_perplexity's."""
  data.validate(data_cfg)
  return stream_perplexity(
    params,
    net,
    data.token_stream(data_cfg, split),
    data.load_tokenizer(data_cfg.tokenizer),
    data_cfg.seq_len,
    batch_size,
    max_batches,
    rows,
  )


def text_file_perplexity(
  params: Any,
  net: transformer.Transformer,
  data_cfg: ml_collections.ConfigDict,
  path: str,
  batch_size: int,
  max_batches: int | None = None,
) -> dict[str, float]:
  """Perplexities on a local UTF-8 text file, read as one document between two eos, so
  every token of the file (and the closing eos) is predicted."""
  file = epath.Path(path)
  if not file.exists():
    raise FileNotFoundError(f"eval.text_file={path!r} does not exist")
  tokenizer = data.load_tokenizer(data_cfg.tokenizer)
  eos = [tokenizer.eos_id]
  stream_T = np.array(eos + tokenizer.encode(file.read_text()) + eos, np.int32)
  return stream_perplexity(
    params, net, stream_T, tokenizer, data_cfg.seq_len, batch_size, max_batches
  )

"""Perplexity and zero-shot accuracy of a Transformer: the two metrics of the k-bit study.

    results = evaluate(params, net, config)     # what the `eval` config section asks for

Perplexity (`perplexity`, `text_file_perplexity`) scores every token of a token stream
(a split of `data`: by default the corpus's validation split; or a local UTF-8 file) in
rows of `data.seq_len` tokens, each row's context starting fresh at its first token. It
reports per-token perplexity, bits per byte and per-word perplexity, all from the same
total NLL: bytes and words (whitespace-separated) are counted in the decoded text of the
scored tokens, one document at a time (eos tokens are scored but add no text).

Zero-shot tasks (`evaluate_tasks`, tasks in tasks.py) and k-bit probes (probes.py) reduce to
log-likelihood requests (context tokens, continuation tokens), scored by `loglikelihoods` as
lm-eval's `_loglikelihood_tokens` does: context + continuation, left-truncated to the last
max_len + 1 tokens, the model run on all but the last token; the result is the summed
log-probability of the continuation and whether greedy decoding reproduces it.

Compiles are bounded: rows are padded into fixed shapes (batch_size x bucket, buckets
are powers of two from 16 up to max_len) and the parameters are arguments of the jitted
functions, never constants in them, so every quantized variant of a model (same
shapes and net) reuses the same executables: at most one per bucket for scoring and one
for perplexity. The last batch of a shape is padded with rows of weight 0.

Shape suffixes: B batch, L length, V vocab, T stream tokens.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from kbit_jax.evals import probes, tasks
from kbit_jax.model import transformer
from kbit_jax.train import data

MIN_BUCKET = 16
LOG_EVERY = 50  # batches between progress lines
EVAL_KEYS = (
  "tasks",
  "task_dir",
  "items_per_task",
  "task_seed",
  "batch_size",
  "max_len",
  "ppl_split",
  "ppl_max_batches",
  "text_file",
  "probes",
  "probe_items",
  "probe_file",
  "probe_threshold",
)
# Keys added after grids had stored results: a section without one reads this default,
# and `fingerprint_dict` leaves a key at its default out of the cells' eval fingerprint,
# so adding them changed no existing cell key.
EVAL_DEFAULTS = {"probes": "", "probe_items": 64, "probe_file": "", "probe_threshold": 0.5}
Request = tuple[Sequence[int], Sequence[int]]  # (context tokens, continuation tokens)


# ----------------------------------------------------------------------------- config


def _int_at_least(eval_cfg: ml_collections.ConfigDict, key: str, low: int) -> None:
  value = eval_cfg[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"eval.{key}={value!r} must be an int >= {low}")


def with_defaults(eval_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `eval_cfg` with every missing EVAL_DEFAULTS key at its default."""
  out = ml_collections.ConfigDict(eval_cfg.to_dict())
  for key, value in EVAL_DEFAULTS.items():
    if key not in out:
      out[key] = value
  return out


def fingerprint_dict(eval_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The eval settings that identify an evaluation: EVAL_DEFAULTS keys at their default
  are left out (a section written before they existed has the same fingerprint)."""
  return {
    k: v
    for k, v in eval_cfg.to_dict().items()
    if not (k in EVAL_DEFAULTS and v == EVAL_DEFAULTS[k])
  }


def _validate_probes(eval_cfg: ml_collections.ConfigDict) -> None:
  """eval.probes, probe_items, probe_threshold; a probe file is read in full, so a bad
  record is reported (file:line) before anything is compiled."""
  ks = probes.parse_probes(eval_cfg.probes)
  if ks:
    _int_at_least(eval_cfg, "probe_items", 1)
  threshold = eval_cfg.probe_threshold
  if (
    isinstance(threshold, bool)
    or not isinstance(threshold, (int, float))
    or not (0 <= threshold < 1)
  ):
    raise ValueError(f"eval.probe_threshold={threshold!r} must be a number in [0, 1)")
  if eval_cfg.probe_file:
    probes.load_file(eval_cfg.probe_file)


def validate(
  eval_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict | None = None
) -> None:
  """Raises ValueError naming the first bad `eval.*` key. Reads no task file's records
  (but the whole probe file), compiles nothing; checks that every file named exists."""
  missing = [k for k in EVAL_KEYS if k not in eval_cfg and k not in EVAL_DEFAULTS]
  if missing:
    raise ValueError(f"eval.{missing[0]} is missing; the eval section needs {list(EVAL_KEYS)}")
  names = tasks.task_names(eval_cfg)
  for name in names:
    if name not in tasks.TASKS:
      raise ValueError(f"eval.tasks: task {name!r} is unknown; allowed: {list(tasks.TASKS)}")
  if len(set(names)) != len(names):
    raise ValueError(f"eval.tasks={eval_cfg.tasks!r} names a task twice")
  for key, low in (
    ("items_per_task", 0 if eval_cfg.task_dir else 1),
    ("task_seed", 0),
    ("batch_size", 1),
    ("max_len", 0),
    ("ppl_max_batches", 0),
  ):
    _int_at_least(eval_cfg, key, low)
  if 0 < eval_cfg.max_len < 2:
    raise ValueError(f"eval.max_len={eval_cfg.max_len} must be 0 (the model's max_len) or >= 2")
  if eval_cfg.task_dir and names:
    if not epath.Path(eval_cfg.task_dir).is_dir():
      raise ValueError(
        f"eval.task_dir={eval_cfg.task_dir!r} is not a directory; allowed: "
        "'' (built-in tasks) or a folder holding the released task files"
      )
    for name in names:
      for path in tasks.task_paths(name, eval_cfg.task_dir):
        if not path.exists():
          raise ValueError(
            f"eval.task_dir: {name}'s file {path} does not exist (expected "
            f"the official {tasks.TASK_FILES[name]})"
          )
  if eval_cfg.text_file and not epath.Path(eval_cfg.text_file).exists():
    raise ValueError(f"eval.text_file={eval_cfg.text_file!r} does not exist")
  _validate_probes(with_defaults(eval_cfg))
  if data_cfg is not None and data_cfg.source == "embedded" and eval_cfg.ppl_split:
    if eval_cfg.ppl_split not in data.SPLITS:
      raise ValueError(
        f"eval.ppl_split={eval_cfg.ppl_split!r} is unknown; allowed: "
        f"{list(data.SPLITS)} or '' (no perplexity)"
      )


def scoring_length(net: transformer.Transformer, max_len: int = 0) -> int:
  """The longest sequence scored: `max_len`, or the model's when 0."""
  cap = max_len or net.p.max_len
  if net.p.positions == "learned" and cap > net.p.max_len:
    raise ValueError(
      f"eval.max_len={max_len} exceeds the model's learned positions (max_len={net.p.max_len})"
    )
  return cap


def bucket_lengths(cap: int) -> tuple[int, ...]:
  """Padded row lengths: powers of two from MIN_BUCKET, and `cap` itself."""
  out, length = [], MIN_BUCKET
  while length < cap:
    out.append(length)
    length *= 2
  return tuple(out) + (cap,)


# ----------------------------------------------------------------------------- log-likelihood


def encode_requests(tokenizer: data.Tokenizer, pairs: Sequence[tuple[str, str]]) -> list[Request]:
  """(context, continuation) strings -> token ids, as lm-eval's `_encode_pair`.

  Trailing spaces of the context move to the continuation; the continuation's ids are
  those of context + continuation after the context's own ids; an empty context becomes
  [eos] (the document boundary the models are trained on).
  """
  contexts, wholes = [], []
  for context, continuation in pairs:
    spaces = len(context) - len(context.rstrip())
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    contexts.append(context)
    wholes.append(context + continuation)
  requests = []
  for context, whole, ctx_ids, whole_ids in zip(
    contexts, wholes, tokenizer.encode_batch(contexts), tokenizer.encode_batch(wholes)
  ):
    cont_ids = whole_ids[len(ctx_ids) :]
    if not cont_ids:
      raise ValueError(f"the continuation of {whole!r} after {context!r} encodes to no tokens")
    requests.append((ctx_ids if context else [tokenizer.eos_id], cont_ids))
  return requests


def _score_rows(
  params: Any,
  inputs_BxL: jax.Array,
  targets_BxL: jax.Array,
  mask_BxL: jax.Array,
  *,
  net: transformer.Transformer,
):
  """Per row: summed log-prob of the masked targets, and whether each is the argmax.

  "Is the argmax" is tested as target logit >= max logit: it differs from lm-eval's
  `argmax == target` only on exact ties, and XLA:CPU's argmax over V made scoring ~3x
  slower. No B x L x V log-prob array is formed: log p = logit - logsumexp(logits).
  """
  logits_BxLxV = net.apply({"params": params}, inputs_BxL)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  target_lp_BxL = target_logit_BxL - jax.nn.logsumexp(logits_BxLxV, axis=-1)
  ll_B = jnp.sum(jnp.where(mask_BxL, target_lp_BxL, 0.0), axis=-1)
  hit_BxL = target_logit_BxL >= jnp.max(logits_BxLxV, axis=-1)
  return ll_B, jnp.all(hit_BxL | ~mask_BxL, axis=-1)


score_rows = jax.jit(_score_rows, static_argnames="net")


def _request_row(
  context: Sequence[int], continuation: Sequence[int], cap: int
) -> tuple[list[int], list[int], int]:
  """(inputs, targets, continuation length) of one request, left-truncated to `cap`."""
  if not context or not continuation:
    raise ValueError(
      f"a request needs >= 1 context and >= 1 continuation token; got "
      f"{len(context)} and {len(continuation)}"
    )
  if len(continuation) > cap:
    raise ValueError(
      f"a continuation of {len(continuation)} tokens does not fit the "
      f"scoring length {cap} (eval.max_len or the model's max_len)"
    )
  whole = (list(context) + list(continuation))[-(cap + 1) :]
  return whole[:-1], whole[1:], len(continuation)


def _batches(
  order: list[int], bucket_of: list[int], batch_size: int
) -> list[tuple[list[int], int]]:
  """Consecutive runs of one bucket, cut into batches of at most batch_size rows."""
  batches, start = [], 0
  while start < len(order):
    end = start
    while end < len(order) and end - start < batch_size and bucket_of[end] == bucket_of[start]:
      end += 1
    batches.append((order[start:end], bucket_of[start]))
    start = end
  return batches


class ScoringBatch(NamedTuple):
  """One call of `score_rows`: which requests fill its rows, and the padded arrays."""

  requests: list[int]  # request indices of the first len(requests) rows
  inputs_BxL: np.ndarray
  targets_BxL: np.ndarray
  mask_BxL: np.ndarray  # True at the continuation's targets
  tokens: int  # unpadded input tokens


def pack_requests(requests: Sequence[Request], cap: int, batch_size: int) -> list[ScoringBatch]:
  """Requests -> fixed-shape batches: longest first (an out-of-memory shows at once, as
  in lm-eval), each batch one bucket long, padded rows all-zero with an empty mask."""
  buckets = bucket_lengths(cap)
  rows = [_request_row(c, x, cap) for c, x in requests]
  order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]), reverse=True)
  bucket_of = [buckets[int(np.searchsorted(buckets, len(rows[i][0])))] for i in order]
  out = []
  for chunk, length in _batches(order, bucket_of, batch_size):
    inputs_BxL = np.zeros((batch_size, length), np.int32)
    targets_BxL = np.zeros((batch_size, length), np.int32)
    mask_BxL = np.zeros((batch_size, length), bool)
    for b, i in enumerate(chunk):
      inputs, targets, cont_len = rows[i]
      inputs_BxL[b, : len(inputs)], targets_BxL[b, : len(targets)] = inputs, targets
      mask_BxL[b, len(targets) - cont_len : len(targets)] = True
    out.append(
      ScoringBatch(chunk, inputs_BxL, targets_BxL, mask_BxL, sum(len(rows[i][0]) for i in chunk))
    )
  return out


def loglikelihoods(
  params: Any,
  net: transformer.Transformer,
  requests: Sequence[Request],
  batch_size: int,
  max_len: int = 0,
) -> list[tuple[float, bool]]:
  """(sum of continuation log-probs in nats, is_greedy) per request, in request order.

  `max_len` (0: the model's) caps each request's length, its context left-truncated.
  One compile per bucket length used; outputs are fetched once, at the end, so the host
  never waits on the device except for a progress line every LOG_EVERY batches.
  """
  batches = pack_requests(requests, scoring_length(net, max_len), batch_size)
  pending, t0, tokens = [], time.perf_counter(), 0
  for n, batch in enumerate(batches, start=1):
    pending.append(score_rows(params, batch.inputs_BxL, batch.targets_BxL, batch.mask_BxL, net=net))
    tokens += batch.tokens
    if n % LOG_EVERY == 0 or n == len(batches):
      jax.block_until_ready(pending[-1])
      seconds = time.perf_counter() - t0
      logging.info(
        "log-likelihoods: batch %d/%d, %.0f tokens/s, ETA %.0f s",
        n,
        len(batches),
        tokens / seconds,
        seconds * (len(batches) / n - 1),
      )
  results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
  for batch, (ll_B, greedy_B) in zip(batches, jax.device_get(pending)):
    for b, i in enumerate(batch.requests):
      results[i] = (float(ll_B[b]), bool(greedy_B[b]))
  return results


# ----------------------------------------------------------------------------- perplexity


def _nll_sums(
  params: Any,
  inputs_BxL: jax.Array,
  targets_BxL: jax.Array,
  weights_BxL: jax.Array,
  *,
  net: transformer.Transformer,
):
  """(weighted sum of next-token NLL in nats, sum of weights)."""
  logits_BxLxV = net.apply({"params": params}, inputs_BxL)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  nll_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1) - target_logit_BxL
  return jnp.sum(nll_BxL * weights_BxL), jnp.sum(weights_BxL)


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
) -> dict[str, float]:
  """Perplexities of every next token of `stream_T` (the first `max_batches` batches).

  Row r predicts stream[r*L + 1 : r*L + L + 1] from stream[r*L : r*L + L]; the last row
  may be short and, like the padding rows of the last batch, is padded with weight 0.
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
  sums = np.asarray(jax.device_get(sums), np.float64)
  nll, count = float(sums[:, 0].sum()), int(round(sums[:, 1].sum()))
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
) -> dict[str, float]:
  """Perplexities on a split of the configured data source (embedded: train | validation
  | test; TFDS: any split string, 'validation' meaning data.tfds_eval_split)."""
  data.validate(data_cfg)
  return stream_perplexity(
    params,
    net,
    data.token_stream(data_cfg, split),
    data.load_tokenizer(data_cfg.tokenizer),
    data_cfg.seq_len,
    batch_size,
    max_batches,
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


# ----------------------------------------------------------------------------- tasks


def load_items(eval_cfg: ml_collections.ConfigDict) -> dict[str, list[tasks.Item]]:
  """{name: items} of eval.tasks, then of the probes (probes.py: "probe/k<k>", "probe/file")."""
  ec = with_defaults(eval_cfg)
  items = {name: tasks.load_task(name, ec) for name in tasks.task_names(ec)}
  items.update(probes.load_probes(ec))
  return items


def evaluate_tasks(
  params: Any,
  net: transformer.Transformer,
  tokenizer: data.Tokenizer,
  eval_cfg: ml_collections.ConfigDict,
) -> dict[str, dict[str, float]]:
  """{task: metrics} for eval.tasks, and "mean": the mean of their acc (the study's
  mean zero-shot accuracy); {probe: metrics} for the probes and "probe/summary". All
  files are read before anything is compiled; the requests of all tasks and probes are
  scored together, so they share the buckets' compiles."""
  validate(eval_cfg)
  if tokenizer.vocab_size > net.p.vocab_size:
    raise ValueError(
      f"the tokenizer has {tokenizer.vocab_size} pieces but the model's "
      f"vocab_size is {net.p.vocab_size}"
    )
  items = load_items(eval_cfg)
  pairs = [pair for name in items for item in items[name] for pair in item.requests]
  results = iter(
    loglikelihoods(
      params, net, encode_requests(tokenizer, pairs), eval_cfg.batch_size, eval_cfg.max_len
    )
  )
  out = {}
  for name, name_items in items.items():
    per_item = [[next(results) for _ in item.requests] for item in name_items]
    out[name] = (
      probes.score_probe(name_items, per_item)
      if name.startswith("probe/")
      else tasks.score_items(name, name_items, per_item)
    )
  task_metrics = {n: out[n] for n in tasks.task_names(eval_cfg)}
  if task_metrics:
    out["mean"] = tasks.mean_accuracy(task_metrics)
  probe_metrics = {n: m for n, m in out.items() if n.startswith("probe/")}
  if probe_metrics:
    out["probe/summary"] = probes.summary(probe_metrics, with_defaults(eval_cfg).probe_threshold)
  return out


def evaluate(
  params: Any, net: transformer.Transformer, config: ml_collections.ConfigDict
) -> dict[str, dict[str, float]]:
  """Everything the `eval` section asks for: tasks (and their mean), perplexity on
  `eval.ppl_split` (key "ppl/<split>") and on `eval.text_file` (key "ppl/text_file")."""
  ec = config.eval
  validate(ec, config.data)
  data.validate(config.data)
  max_batches = ec.ppl_max_batches or None
  out = evaluate_tasks(params, net, data.load_tokenizer(config.data.tokenizer), ec)
  if ec.ppl_split:
    out[f"ppl/{ec.ppl_split}"] = perplexity(
      params, net, config.data, ec.ppl_split, ec.batch_size, max_batches
    )
  if ec.text_file:
    out["ppl/text_file"] = text_file_perplexity(
      params, net, config.data, ec.text_file, ec.batch_size, max_batches
    )
  return out

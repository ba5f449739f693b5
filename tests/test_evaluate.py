"""Scoring engine: exact log-likelihoods, bucketing, compile bounds, perplexity, config.

Most tests use `Bigram`, a stand-in for `transformer.Transformer` whose logits at position i
are row tokens[i] of the parameter table, so every log-probability is known in closed
form: log_softmax(table[previous token])[next token].
"""

import dataclasses
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kbit_jax.config import defaults, eval_section
from kbit_jax.evals import evaluate, perplexity, scoring, tasks
from kbit_jax.grid import compiles
from kbit_jax.model import presets, transformer
from kbit_jax.train import data, loop


@dataclasses.dataclass(frozen=True)
class Bigram:
  p: presets.Preset
  tag: str = ""  # a distinct tag is a distinct static argument: a cold jit cache

  def apply(self, variables, tokens_BxL, positions_BxC=None):
    logits_BxLxV = variables["params"]["table"][tokens_BxL]
    if positions_BxC is None:
      return logits_BxLxV
    return jnp.take_along_axis(logits_BxLxV, positions_BxC[..., None], axis=1)


def _compiled(name: str) -> int:
  """Executables jax built for the jitted function `name` in this process (compiles.py)."""
  compiles.start()
  return compiles.by_function()[f"jit({name})"]


def _bigram(vocab=16, max_len=64, tag="", seed=0):
  p = presets.Preset(1, 8, 1, 8, vocab_size=vocab, max_len=max_len)
  table = np.random.default_rng(seed).normal(size=(vocab, vocab)).astype(np.float32) * 2
  return Bigram(p, tag), {"table": table}


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return (
    x
    - x.max(-1, keepdims=True)
    - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
  )


def _bigram_ll(table, context, continuation):
  tokens = list(context) + list(continuation)
  lp = _log_softmax(table)
  pairs = range(len(context) - 1, len(tokens) - 1)
  ll = sum(lp[tokens[i], tokens[i + 1]] for i in pairs)
  greedy = all(int(np.argmax(table[tokens[i]])) == tokens[i + 1] for i in pairs)
  return ll, greedy


def _eval_cfg(**overrides) -> ml_collections.ConfigDict:
  """The default `eval` section (config/defaults.py), smaller for tests."""
  cfg = defaults.base_config().eval
  cfg.update({"items_per_task": 40, "batch_size": 8, **overrides})
  return cfg


# ----------------------------------------------------------------------------- log-likelihoods


def test_loglikelihoods_are_exact_for_a_bigram_model():
  net, params = _bigram(tag="exact")
  rng = np.random.default_rng(1)
  requests = [
    (
      rng.integers(16, size=rng.integers(1, 40)).tolist(),
      rng.integers(16, size=rng.integers(1, 8)).tolist(),
    )
    for _ in range(23)
  ]
  got = scoring.loglikelihoods(params, net, requests, batch_size=4)
  for (ctx, cont), (ll, greedy) in zip(requests, got):
    want_ll, want_greedy = _bigram_ll(params["table"], ctx, cont)
    assert ll == pytest.approx(want_ll, abs=1e-4) and greedy == want_greedy


def test_greedy_match_is_token_for_token():
  net, params = _bigram(tag="greedy")
  table = np.full((16, 16), -1.0, np.float32)
  table[np.arange(16), (np.arange(16) + 1) % 16] = 3.0  # greedy next token: t + 1
  params = {"table": table}
  requests = [([1, 2, 3], [4, 5, 6]), ([1, 2, 3], [4, 5, 7]), ([9], [10])]
  got = scoring.loglikelihoods(params, net, requests, batch_size=2)
  assert [g for _, g in got] == [True, False, True]
  hit, miss = _log_softmax(table[0])[[1, 2]]
  assert got[0][0] == pytest.approx(3 * hit, abs=1e-5)
  assert got[1][0] == pytest.approx(2 * hit + miss, abs=1e-5)


def test_long_requests_are_left_truncated_like_lm_eval():
  inputs, targets, n = scoring._request_row(list(range(100, 110)), [1, 2, 3], cap=8)
  assert inputs == [104, 105, 106, 107, 108, 109, 1, 2]
  assert targets == [105, 106, 107, 108, 109, 1, 2, 3] and n == 3
  with pytest.raises(ValueError, match="continuation of 9 tokens does not fit"):
    scoring._request_row([1], list(range(9)), cap=8)
  with pytest.raises(ValueError, match=">= 1 context"):
    scoring._request_row([], [1], cap=8)


def test_buckets_and_batches():
  assert scoring.bucket_lengths(512) == (16, 32, 64, 128, 256, 512)
  assert scoring.bucket_lengths(100) == (16, 32, 64, 100)
  assert scoring.bucket_lengths(16) == (16,)
  batches = scoring._batches([5, 3, 0, 1, 2, 4], [64, 64, 64, 32, 16, 16], 2)
  assert batches == [([5, 3], 64), ([0], 64), ([1], 32), ([2, 4], 16)]


def test_rows_gather_the_continuation_into_a_power_of_two_width():
  """Continuations of 1, 3 and 5 tokens: C = 8 (the longest, to a power of two) in the
  16-long bucket; positions are the inputs whose outputs predict each continuation token."""
  requests = [([7, 8], [9]), ([1, 2, 3, 4], [5, 6, 7]), ([1], [2, 3, 4, 5, 6])]
  (batch,) = scoring.pack_requests(requests, cap=64, batch_size=4)
  assert batch.requests == [1, 2, 0] and batch.inputs_BxL.shape == (4, 16)
  assert batch.positions_BxC.shape == batch.targets_BxC.shape == (4, 8)
  np.testing.assert_array_equal(
    batch.positions_BxC[:3, :5], [[3, 4, 5, 0, 0], [0, 1, 2, 3, 4], [1, 0, 0, 0, 0]]
  )
  np.testing.assert_array_equal(
    batch.targets_BxC[:3, :5], [[5, 6, 7, 0, 0], [2, 3, 4, 5, 6], [9, 0, 0, 0, 0]]
  )
  assert batch.mask_BxC.sum(axis=1).tolist() == [3, 5, 1, 0]
  assert scoring.continuation_width(9, 64) == 16 and scoring.continuation_width(8, 64) == 8
  assert scoring.continuation_width(9, 12) == 12  # at most the batch length


@pytest.mark.parametrize("size", ["s0", "l1"])
def test_the_head_on_gathered_positions_equals_those_rows_of_all_logits(size):
  """Scoring runs the final norm and head on the continuation's positions only; every
  op after the blocks is per position, so the rows equal the full logits' (float32
  matmuls of another row count: 1e-6)."""
  net = transformer.Transformer(presets.get_preset(size))
  params = nn.unbox(net.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  tokens_BxL = jax.random.randint(jax.random.key(1), (2, 16), 0, net.p.vocab_size)
  positions_BxC = jnp.array([[3, 4, 5, 15], [0, 1, 2, 2]])
  full_BxLxV = net.apply({"params": params}, tokens_BxL)
  part_BxCxV = net.apply({"params": params}, tokens_BxL, positions_BxC)
  want = jnp.take_along_axis(full_BxLxV, positions_BxC[..., None], axis=1)
  np.testing.assert_allclose(part_BxCxV, want, rtol=0, atol=1e-6)


def test_one_compile_per_bucket_and_new_params_reuse_it():
  net, params = _bigram(max_len=64, tag="compiles")
  rng = np.random.default_rng(2)
  requests = [([1] * int(n), [2, 3]) for n in rng.integers(1, 80, size=40)]
  before = _compiled("_score_rows")
  scoring.loglikelihoods(params, net, requests, batch_size=4)
  assert _compiled("_score_rows") - before == len(scoring.bucket_lengths(64)) == 3
  _, other_params = _bigram(max_len=64, seed=5)  # a "quantized variant": same shapes
  scoring.loglikelihoods(other_params, net, requests, batch_size=4)
  assert _compiled("_score_rows") - before == 3


def test_batched_scoring_equals_one_by_one_on_a_transformer():
  """s0, random init. Batched, padded, bucketed and sorted scoring vs each request alone
  at its exact length; float32 on CPU agrees to 1e-4 nats."""
  net = transformer.Transformer(presets.get_preset("s0"))
  params = nn.unbox(net.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  rng = np.random.default_rng(3)
  # Two total lengths (13 and 70, truncated to 33) keep the reference's compiles few.
  requests = [
    (rng.integers(4096, size=total - cont).tolist(), rng.integers(4096, size=cont).tolist())
    for total in (13, 70)
    for cont in (1, 3, 5)
  ]
  got = scoring.loglikelihoods(params, net, requests, batch_size=4, max_len=32)
  apply = jax.jit(net.apply)
  for (ctx, cont), (ll, greedy) in zip(requests, got):
    inputs, targets, n = scoring._request_row(ctx, cont, 32)
    logits = np.asarray(apply({"params": params}, np.array([inputs])))[0, -n:]
    lp = _log_softmax(logits)[np.arange(n), targets[-n:]]
    assert ll == pytest.approx(lp.sum(), abs=1e-4)
    assert greedy == bool(np.all(logits.argmax(-1) == targets[-n:]))


def test_encode_requests_follows_lm_eval():
  tok = data.load_tokenizer()
  ((ctx, cont),) = scoring.encode_requests(tok, [("And God said ", "Let there be light")])
  whole = tok.encode("And God said Let there be light")
  assert ctx == tok.encode("And God said") and ctx + cont == whole
  ((ctx, cont),) = scoring.encode_requests(tok, [("", " light")])
  assert ctx == [tok.eos_id] and cont == tok.encode(" light")
  with pytest.raises(ValueError, match="encodes to no tokens"):
    scoring.encode_requests(tok, [("abc", "")])


# ----------------------------------------------------------------------------- tasks end to end


def _table_for(vocab, likely):
  """A bigram table, small noise (no ties) except where (prev, next) pairs are likely."""
  table = np.random.default_rng(0).normal(size=(vocab, vocab)).astype(np.float32) * 0.1
  for prev, nxt in likely:
    table[prev, nxt] = 8.0
  return table


def test_lambada_and_winogrande_end_to_end(tmp_path):
  tok = data.load_tokenizer()
  texts = ["the cat sat on the mat", "a dog ate the bone"]
  (tmp_path / "lambada_test.jsonl").write_text(
    "".join(json.dumps({"text": t}) + "\n" for t in texts)
  )
  wino = {
    "sentence": "Tom gave Bob a book because _ was kind.",
    "option1": "Tom",
    "option2": "Bob",
    "answer": "2",
  }
  (tmp_path / "dev.jsonl").write_text(json.dumps(wino) + "\n")
  reqs = {
    t: scoring.encode_requests(
      tok, evaluate.load_task(t, _eval_cfg(task_dir=str(tmp_path), tasks=t))[0].requests
    )
    for t in ("lambada", "winogrande")
  }
  pairs = []
  ((ctx, cont),) = reqs["lambada"]  # first text: greedy all the way through " mat"
  pairs += zip([ctx[-1]] + cont[:-1], cont)
  (ctx_tom, cont_tom), (ctx_bob, cont_bob) = reqs["winogrande"]
  assert cont_tom == cont_bob  # the shared continuation " was kind."
  pairs.append((ctx_bob[-1], cont_bob[0]))  # partial scoring: "Bob" -> " was" is likely
  table = _table_for(4096, likely=pairs)
  # "because" -> "Tom" is very likely: scoring whole sentences would pick Tom; the
  # partial scoring of " was kind." alone must pick Bob.
  k = ctx_tom.index(tok.encode(" Tom")[0])
  assert ctx_tom[:k] == ctx_bob[:k]
  for prev, nxt in zip(ctx_tom[k - 1 :], ctx_tom[k:]):
    table[prev, nxt] = 20.0
  full = [_bigram_ll(table, c[:1], c[1:] + x)[0] for c, x in reqs["winogrande"]]
  assert full[0] > full[1]
  net = Bigram(presets.Preset(1, 8, 1, 8, vocab_size=4096, max_len=64))
  cfg = _eval_cfg(task_dir=str(tmp_path), tasks="lambada,winogrande", batch_size=4)
  out = evaluate.evaluate_tasks({"table": table}, net, tok, cfg)
  assert out["lambada"]["acc"] == 0.5
  lls = [
    _bigram_ll(table, *scoring.encode_requests(tok, [r])[0])[0]
    for r in [tasks.lambada_item({"text": t}, "").requests[0] for t in texts]
  ]
  assert out["lambada"]["perplexity"] == pytest.approx(math.exp(-np.mean(lls)), rel=1e-5)
  assert out["winogrande"]["acc"] == 1.0
  assert out["mean"]["acc"] == 0.75 and out["mean"]["tasks"] == 2


def test_builtin_tasks_run_with_bounded_compiles():
  net = transformer.Transformer(presets.get_preset("s0"))
  params = nn.unbox(net.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  cfg = _eval_cfg(items_per_task=8, max_len=128, batch_size=16)
  before = _compiled("_score_rows")
  out = evaluate.evaluate_tasks(params, net, data.load_tokenizer(), cfg)
  assert _compiled("_score_rows") - before <= len(scoring.bucket_lengths(128))
  assert set(out) == set(tasks.TASKS) | {"mean"}
  for task in tasks.TASKS:
    assert out[task]["n"] == 8 and 0 <= out[task]["acc"] <= 1


# ----------------------------------------------------------------------------- perplexity


def test_perplexity_is_exp_mean_nll_with_bytes_and_words_by_hand():
  tok = data.load_tokenizer()
  docs = ["In the beginning God created", "the heaven and the earth."]
  stream = np.array(
    [tok.eos_id] + tok.encode(docs[0]) + [tok.eos_id] + tok.encode(docs[1]) + [tok.eos_id], np.int32
  )
  net, params = _bigram(vocab=4096, tag="ppl")
  got = perplexity.stream_perplexity(params, net, stream, tok, seq_len=4, batch_size=2)
  lp = _log_softmax(params["table"])
  nll = -sum(lp[a, b] for a, b in zip(stream[:-1], stream[1:]))
  n = len(stream) - 1
  assert got["tokens"] == n
  assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
  assert got["bytes"] == len(docs[0]) + len(docs[1]) and got["words"] == 5 + 5
  assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / got["bytes"], rel=1e-5)
  assert got["word_perplexity"] == pytest.approx(math.exp(nll / 10), rel=1e-5)
  limited = perplexity.stream_perplexity(params, net, stream, tok, 4, 2, max_batches=1)
  assert limited["tokens"] == 8


def test_split_perplexity_matches_the_training_eval_loss():
  cfg = defaults.base_config().data
  cfg.seq_len = 32
  net = transformer.Transformer(presets.get_preset("s0"))
  params = nn.unbox(net.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  perplexity.nll_sums.clear_cache()  # so that this test's compiles are counted exactly
  before = _compiled("_nll_sums")
  got = perplexity.perplexity(params, net, cfg, "validation", batch_size=8, max_batches=2)
  losses = [loop.eval_step(params, b, net=net) for b in data.eval_batches(cfg, "validation", 8, 2)]
  assert got["tokens"] == 2 * 8 * 32
  assert got["nll"] == pytest.approx(float(np.mean(losses)), abs=1e-5)
  other = jax.tree.map(lambda x: 2 * x, params)  # new parameters, same shapes
  perplexity.perplexity(other, net, cfg, "validation", batch_size=8, max_batches=2)
  assert _compiled("_nll_sums") - before == 1  # both batches, both parameter sets


def test_text_file_perplexity(tmp_path):
  cfg = defaults.base_config().data
  cfg.seq_len = 16
  text = "Sing, O heavens; and be joyful, O earth.\nAnd break forth into singing! \u00e9"
  path = tmp_path / "t.txt"
  path.write_text(text)
  net, params = _bigram(vocab=4096, tag="text")
  got = perplexity.text_file_perplexity(params, net, cfg, str(path), batch_size=4)
  tok = data.load_tokenizer()
  assert got["tokens"] == len(tok.encode(text)) + 1  # and the closing eos
  assert (got["bytes"], got["words"]) == (len(text.encode()), len(text.split()))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(tasks="lambada,arc"), r"task 'arc' is unknown; allowed: \['lambada'"),
    (dict(tasks="piqa,piqa"), "names a task twice"),
    (dict(batch_size=0), "eval.batch_size=0 must be an int >= 1"),
    (dict(items_per_task=0), "eval.items_per_task=0 must be an int >= 1"),
    (dict(max_len=1), "eval.max_len=1 must be 0"),
    (dict(task_dir="/nonexistent/dir"), "eval.task_dir='/nonexistent/dir' is not a directory"),
    (dict(text_file="/nonexistent.txt"), "eval.text_file='/nonexistent.txt' does not exist"),
    (dict(ppl_split="dev"), r"eval.ppl_split='dev' is unknown; allowed: \['train'"),
  ],
)
def test_validate_names_key_value_and_allowed(overrides, message):
  with pytest.raises(ValueError, match=message):
    eval_section.validate(_eval_cfg(**overrides), defaults.base_config().data)


def test_validate_names_missing_task_files_and_keys(tmp_path):
  with pytest.raises(ValueError, match=f"piqa's file {tmp_path}/valid.jsonl does not exist"):
    eval_section.validate(_eval_cfg(task_dir=str(tmp_path), tasks="piqa"))
  cfg = _eval_cfg()
  del cfg["text_file"]
  with pytest.raises(ValueError, match="eval.text_file is missing"):
    eval_section.validate(cfg)
  net, params = _bigram(max_len=64)
  with pytest.raises(ValueError, match="eval.max_len=128 exceeds"):
    scoring.loglikelihoods(params, net, [([1], [2])], 4, max_len=128)


def test_probes_end_to_end_with_tasks_and_bounded_compiles(tmp_path):
  probe_file = tmp_path / "p.jsonl"
  probe_file.write_text(
    json.dumps(
      {"context": "the cat sat on the", "label": 1, "options": ["dog", "mat", "sun", "car"]}
    )
    + "\n"
  )
  net, params = _bigram(vocab=4096, max_len=128)
  cfg = _eval_cfg(tasks="piqa", items_per_task=4, batch_size=16, max_len=128)
  cfg.update(dict(probes="1,2", probe_items=8, probe_file=str(probe_file), probe_threshold=0.5))
  before = _compiled("_score_rows")
  out = evaluate.evaluate_tasks(params, net, data.load_tokenizer(), cfg)
  assert _compiled("_score_rows") - before <= len(scoring.bucket_lengths(128))
  assert set(out) == {"piqa", "mean", "probe/k1", "probe/k2", "probe/file", "probe/summary"}
  assert out["mean"]["tasks"] == 1
  assert (out["probe/k2"]["n"], out["probe/k2"]["k"], out["probe/file"]["k"]) == (8, 2, 2)
  for name in ("probe/k1", "probe/k2", "probe/file"):
    m = out[name]
    assert m["bits"] == max(0.0, m["bits_unclipped"]) and 0 <= m["acc"] <= 1
  assert out["probe/summary"]["bits_offered"] == 3

"""`KbitLM`: a kbit-jax model as an lm-evaluation-harness model, registered as `kbit`.

    lm_eval --model kbit --model_args model_dir=W,bits=4,dtype=nf --tasks hellaswag

Needs `pip install "kbit-jax[harness]"`. The three request types run on the project's own
machinery, in lm_eval's `hf` model's conventions (lm_eval/models/huggingface.py), so both
give the same numbers on the same checkpoint:

  * loglikelihood: the pairs are encoded as TemplateLM does (trailing context spaces move
    to the continuation, the continuation is the whole's tokens after the context's; an
    empty context becomes `prefix_token_id`), then scored by evals/scoring.py (length
    buckets, params as jit arguments): context + continuation left-truncated to the last
    max_length + 1 tokens, as `_loglikelihood_tokens` truncates; with `share_prefixes`
    (the default) several requests to a row, each shared prefix run once
    (evals/shared_prefix.py).
  * loglikelihood_rolling: lm_eval's own rolling windows (`get_rolling_token_windows` with
    context_len 1, `make_disjoint_window`) of max_length tokens, every window of every
    document scored in one call of the scorer, summed per document.
  * generate_until: greedy only (generate.py: batched, stop strings and eos, max_gen_toks);
    contexts left-truncated to max_length - max_gen_toks, as `hf` does.
BOS: `add_bos_token=None` (the default) follows the tokenizer's config as lm_eval >=
0.4.10 does with a Hugging Face tokenizer: an import's tokenizer_config.json
`add_bos_token`, else whether its tokenizer.json's post-processor prepends bos; models
trained here never saw bos (documents are eos-separated), so theirs is False.
`prefix_token_id` is bos when the tokenizer has one, else eos (`hf`'s rule); for trained
models eos, the document boundary they were trained on. A request longer than
max_length is truncated as `hf` truncates it, and said once per kind of request.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import logging
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
  handle_stop_sequences,
  normalize_gen_kwargs,
  postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from kbit_jax.evals import scoring
from kbit_jax.evals.harness import generate, loading


def bos_by_config(model: loading.LoadedModel) -> bool:
  """Whether the tokenizer's own config prepends bos (see the module docstring)."""
  if model.kind != "imported" or model.tokenizer.bos_id < 0:
    return False
  directory = pathlib.Path(model.args.model_dir).expanduser() / "tokenizer"
  config_path = directory / "tokenizer_config.json"
  if config_path.exists():
    flag = json.loads(config_path.read_text()).get("add_bos_token")
    if isinstance(flag, bool):
      return flag
  if (directory / "tokenizer.json").exists():
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(directory / "tokenizer.json")).encode("a").ids
    return bool(ids) and ids[0] == model.tokenizer.bos_id
  return False


def _batch_size(value: Any) -> int:
  """lm_eval's --batch_size: an int, or 'auto' (the scorer's default here)."""
  if isinstance(value, str) and value.startswith("auto"):
    return loading.DEFAULT_BATCH_SIZE
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(
      f"kbit model_args: batch_size={value!r}; allowed: an int >= 1 or 'auto'"
    ) from None


@register_model("kbit")
class KbitLM(TemplateLM):
  """See the module docstring; model_args are `loading.ModelArgs`' fields."""

  def __init__(
    self, batch_size: Any = None, max_batch_size: Any = None, device: Any = None, **kwargs
  ):
    super().__init__()
    if batch_size is not None:
      kwargs["batch_size"] = _batch_size(batch_size)
    self.model = loading.load(loading.ModelArgs.from_kwargs(kwargs))
    self.args = self.model.args
    self.tokenizer = None  # no Hugging Face tokenizer: chat templates are not supported
    self.tok = self.model.tokenizer
    self.add_bos = (
      bos_by_config(self.model) if self.args.add_bos_token is None else self.args.add_bos_token
    )
    self._truncated: set[str] = set()  # request kinds already said to be truncated
    logging.info(
      "kbit harness model: %s (%s, step %d), %s, max_length %d, add_bos %s",
      self.args.model_dir,
      self.model.kind,
      self.model.step,
      self.model.spec,
      self.max_length,
      self.add_bos,
    )

  @classmethod
  def from_loaded(cls, model: loading.LoadedModel) -> "KbitLM":
    """An LM over an already loaded (and quantized) model, e.g. a grid cell's."""
    lm = cls.__new__(cls)
    TemplateLM.__init__(lm)
    lm.model, lm.args, lm.tokenizer, lm.tok = model, model.args, None, model.tokenizer
    lm.add_bos = (
      bos_by_config(model) if model.args.add_bos_token is None else model.args.add_bos_token
    )
    lm._truncated = set()
    return lm

  # --------------------------------------------------------------------------- properties

  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def prefix_token_id(self) -> int:
    if self.args.prefix_token_id is not None:
      return self.args.prefix_token_id
    if self.model.kind == "imported" and self.tok.bos_id >= 0:
      return self.tok.bos_id
    return self.tok.eos_id

  @property
  def max_length(self) -> int:
    return self.model.max_len

  @property
  def max_gen_toks(self) -> int:
    return self.args.max_gen_toks

  @property
  def batch_size(self) -> int:
    return self.args.batch_size

  @property
  def tokenizer_name(self) -> str:
    return str(self.tok.name).replace("/", "__")

  def get_model_info(self) -> dict[str, Any]:
    m = self.model
    return dict(model_dir=str(self.args.model_dir), kind=m.kind, step=m.step, quant=str(m.spec))

  # --------------------------------------------------------------------------- tokens

  def _with_bos(self, ids: list[int], text: str, add_special_tokens: bool | None) -> list[int]:
    add = self.add_bos if add_special_tokens is None else add_special_tokens
    bos_text = self.tok.decode([self.tok.bos_id]) if self.tok.bos_id >= 0 else ""
    if add_special_tokens is None and bos_text and text.startswith(bos_text):
      add = False  # hf: a string that already starts with bos gets none added
    return [self.tok.bos_id] + ids if add and self.tok.bos_id >= 0 else ids

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    return self._with_bos(self.tok.encode(string), string, add_special_tokens)

  def tok_decode(self, tokens: list[int]) -> str:
    return self.tok.decode(tokens)

  def _encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [self._with_bos(ids, t, None) for ids, t in zip(self.tok.encode_batch(texts), texts)]

  def _say_truncated(self, kind: str, count: int, limit: int) -> None:
    if count and kind not in self._truncated:
      self._truncated.add(kind)
      logging.warning(
        "kbit: %d %s request(s) longer than %d tokens; truncated from the left as "
        "lm_eval's hf model does (said once)",
        count,
        kind,
        limit,
      )

  # --------------------------------------------------------------------------- requests

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """TemplateLM.loglikelihood's encoding, with the tokenizer's batch encode."""
    pairs = [req.args for req in requests]
    contexts, wholes, empty = [], [], {}
    for i, (context, continuation) in enumerate(pairs):
      if context == "":
        empty[i] = self.tok_encode(continuation, add_special_tokens=False)
        continue
      spaces = len(context) - len(context.rstrip())
      if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
      contexts.append(context)
      wholes.append(context + continuation)
    encoded = iter(zip(self._encode_batch(contexts), self._encode_batch(wholes)))
    new_reqs = []
    for i, pair in enumerate(pairs):
      if i in empty:
        cont = empty[i]
        ctx, cont = (
          ([self.prefix_token_id], cont)
          if self.prefix_token_id != cont[0]
          else (cont[:1], cont[1:])
        )
      else:
        ctx, whole = next(encoded)
        cont = whole[len(ctx) :]
      new_reqs.append((pair, ctx, cont))
    return self._loglikelihood_tokens(new_reqs, disable_tqdm=disable_tqdm)

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    token_pairs = [(ctx, cont) for _, ctx, cont in requests]
    self._say_truncated(
      "loglikelihood",
      sum(len(c) + len(x) > self.max_length + 1 for c, x in token_pairs),
      self.max_length + 1,
    )
    m = self.model
    results = scoring.loglikelihoods(
      m.params,
      m.net,
      token_pairs,
      self.batch_size,
      self.max_length,
      self.args.bucket_step,
      share_prefixes=self.args.share_prefixes,
    )
    for (request, _, _), answer in zip(requests, results):
      if request is not None:
        self.cache_hook.add_partial("loglikelihood", request, answer)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    windows, owner = [], []
    for i, (string,) in enumerate(req.args for req in requests):
      for ctx, cont in map(
        make_disjoint_window,
        get_rolling_token_windows(
          token_list=self.tok_encode(string),
          prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length,
          context_len=1,
        ),
      ):
        windows.append((None, ctx, cont))
        owner.append(i)
    scores = self._loglikelihood_tokens(windows)
    totals = [0.0] * len(requests)
    for i, (ll, _) in zip(owner, scores):
      totals[i] += ll
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Greedy; requests grouped by their generation kwargs, as `hf` groups them."""
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
      groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
    eos_text = self.tok.decode([self.eot_token_id]) or None
    out = [""] * len(requests)
    for indices in groups.values():
      kwargs = normalize_gen_kwargs(requests[indices[0]].args[1], self.max_gen_toks)
      until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
      max_gen = kwargs.pop("max_gen_toks")
      if kwargs.get("do_sample") or kwargs.get("temperature", 0.0):
        raise ValueError(
          f"kbit generate_until decodes greedily; got do_sample={kwargs.get('do_sample')!r}, "
          f"temperature={kwargs.get('temperature')!r}; allowed: do_sample=False, temperature=0"
        )
      room = self.max_length - max_gen
      if room <= 0:
        raise ValueError(
          f"max_gen_toks={max_gen} leaves no room for a context in max_length={self.max_length}"
        )
      prompts = [self.tok_encode(requests[i].args[0]) for i in indices]
      self._say_truncated("generate_until", sum(len(p) > room for p in prompts), room)
      prompts = [p[-room:] for p in prompts]

      def stopped(ids, until=until):
        text = self.tok.decode(ids)
        return any(s and s in text for s in until)

      m = self.model
      new = generate.greedy(
        m.params,
        m.net,
        prompts,
        max_gen,
        self.batch_size,
        self.max_length,
        self.eot_token_id,
        stopped,
      )
      for i, ids in zip(indices, new):
        out[i] = postprocess_generated_text(self.tok.decode(ids), until, None)
        self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
    return out

"""The Llama-architecture families imported from Hugging Face directories: our logits and
perplexity equal transformers' for Llama (plain, and Llama 3.1's rope scaling with one
key/value head), Mistral, Qwen2, Qwen3 and Gemma; the import loads sharded bf16/fp16
safetensors onto a mesh, restores tensor-parallel, brings the family's tokenizer, and
refuses checkpoints that disagree with their config.json with nothing written.

As tests/test_import_hf.py: tiny random models (2 layers, d_model 48) built by
`transformers` from its config classes and saved with `save_pretrained`, weights redrawn
with std 0.2 (norm weights 1 +- 0.2, Gemma's 1 + w then 2 +- 0.2) so that logits are
O(1-10) and every tensor matters. Each exercises its family's switches: grouped-query
attention (6 heads on 2 or 3 key/value heads, 1 for Llama 3 and Gemma), head widths other
than d_model / heads (Mistral, Qwen3, Gemma: 16 x 6 or 4 heads), q/k/v biases (Qwen2),
q/k RMSNorm (Qwen3), tied and untied heads. Tolerance 1e-4 absolute on logits; measured
differences are 6e-6 to 3e-5 (Gemma's sqrt(d) embedding scale makes its logits ~2x
larger); a wrong rotary frequency, head grouping or norm gives O(1).
"""
# ruff: noqa: E402 (the imports below wait for pytest.importorskip)

import copy
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch", reason="needs torch (CPU) and transformers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from test_import_hf import MODEL_VOCAB, TEXT, TOL, VOCAB, _randomize, _torch_logits

from kbit_jax.convert import importer, tokenizer
from kbit_jax.evals import perplexity
from kbit_jax.model import transformer
from kbit_jax.quant import aqt, reference
from kbit_jax.quant.spec import QuantSpec
from kbit_jax.train import checkpoint, data, sharding

pytestmark = pytest.mark.filterwarnings(
  "ignore:Implicit conversion of an array to a dtype:DeprecationWarning"
)

# The special tokens of each family's tokenizer: Llama 3's byte-level BPE, Qwen's
# byte-level BPE (no BOS), Mistral's and Gemma's SentencePiece BPE (tokenizer.json).
TOKENIZERS = {
  "llama3": dict(byte_level=True, bos="<|begin_of_text|>", eos="<|end_of_text|>"),
  "qwen": dict(byte_level=True, bos=None, eos="<|endoftext|>"),
  "sentencepiece": dict(byte_level=False, bos="<s>", eos="</s>", unk="<unk>"),
  "gemma": dict(byte_level=False, bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>"),
}
TOKENIZER_OF = {
  "llama": "llama3",
  "llama3_rope": "llama3",
  "mistral": "sentencepiece",
  "qwen2": "qwen",
  "qwen3": "qwen",
  "gemma": "gemma",
}


def family_configs(special_ids=None):
  """{name: (model class, config)}: one tiny model per family (and Llama 3's rope)."""
  T = transformers
  ids = {**dict(bos_token_id=None, eos_token_id=0, pad_token_id=None), **(special_ids or {})}
  common = dict(
    num_hidden_layers=2,
    hidden_size=48,
    num_attention_heads=6,
    intermediate_size=80,
    max_position_embeddings=64,
    vocab_size=MODEL_VOCAB,
    **ids,
  )
  four = dict(common, num_attention_heads=4)
  llama3_rope = dict(  # original 32: the 8 frequencies span all three llama3 regions
    rope_type="llama3",
    rope_theta=10000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
  )
  return {
    "llama": (
      T.LlamaForCausalLM,
      T.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-5),
    ),
    "llama3_rope": (
      T.LlamaForCausalLM,
      T.LlamaConfig(
        **dict(common, num_attention_heads=3),
        num_key_value_heads=1,
        tie_word_embeddings=True,
        rope_parameters=llama3_rope,
      ),
    ),
    "mistral": (
      T.MistralForCausalLM,
      T.MistralConfig(**common, num_key_value_heads=2, head_dim=16, sliding_window=None),
    ),
    "qwen2": (
      T.Qwen2ForCausalLM,
      T.Qwen2Config(**common, num_key_value_heads=3, tie_word_embeddings=True),
    ),
    "qwen3": (
      T.Qwen3ForCausalLM,
      T.Qwen3Config(**four, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
    ),
    "gemma": (
      T.GemmaForCausalLM,
      T.GemmaConfig(**four, num_key_value_heads=1, head_dim=16, hidden_act="gelu_pytorch_tanh"),
    ),
  }


SHARDED = ("llama3_rope",)  # saved in 20 KB shards (model.safetensors.index.json)


def train_tokenizer(kind):
  """A tiny tokenizer of `kind` (TOKENIZERS) on the corpus: (tokenizers object, special
  token texts by role)."""
  spec = TOKENIZERS[kind]
  roles = {r: spec.get(r) for r in ("pad", "unk", "bos", "eos") if spec.get(r)}
  specials = list(dict.fromkeys(roles.values()))
  if spec["byte_level"]:
    tok = tokenizers.ByteLevelBPETokenizer()
  else:
    tok = tokenizers.SentencePieceBPETokenizer(unk_token=roles.get("unk", "<unk>"))
  tok.train_from_iterator(
    [data.corpus_text("validation")[:50_000]],
    vocab_size=VOCAB,
    special_tokens=specials,
    show_progress=False,
  )
  return tok, roles


def save_family_tokenizer(tok, roles, out):
  """tokenizer.json + tokenizer_config.json naming the special tokens, as the hub has."""
  tok.save(str(out / "tokenizer.json"))
  config = {f"{role}_token": text for role, text in roles.items()}
  if "bos" not in roles:
    config["bos_token"] = None  # Qwen: no BOS
  (out / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def hf_families(tmp_path_factory):
  """(root, {name: torch model}): each family saved with its own tokenizer."""
  root = tmp_path_factory.mktemp("hf_families")
  toks = {kind: train_tokenizer(kind) for kind in TOKENIZERS}
  models = {}
  for name, (cls, _) in family_configs().items():
    tok, roles = toks[TOKENIZER_OF[name]]
    ids = {
      f"{r}_token_id": tok.token_to_id(roles[r]) if r in roles else None for r in ("bos", "eos")
    }
    _, cfg = family_configs(ids)[name]
    m = _randomize(cls(cfg))
    out = root / name
    m.save_pretrained(out, **(dict(max_shard_size="20KB") if name in SHARDED else {}))
    save_family_tokenizer(tok, roles, out)
    models[name] = m
  return root, models


AQT_CHECKED = ("llama3_rope", "qwen3", "gemma")  # gate, GQA, q/k norm through AQT


@pytest.mark.parametrize("name", list(family_configs()))
def test_logits_and_perplexity_equal_transformers(hf_families, name):
  root, models = hf_families
  if name in SHARDED:
    assert (root / name / "model.safetensors.index.json").exists()
  plan = importer.plan_import(root / name)
  assert plan.family.name == {"llama3_rope": "llama"}.get(name, name)
  p, params = importer.load_hf(root / name, *importer.import_mesh(plan.preset, jax.devices()[:1]))
  net = transformer.Transformer(p)
  tokens_BxL = np.random.RandomState(0).randint(0, MODEL_VOCAB, (2, 24))
  ours = np.asarray(jax.jit(net.apply)({"params": params}, jnp.asarray(tokens_BxL)))
  ref = _torch_logits(models[name], tokens_BxL)
  print(f"{name}: max |logit difference| {np.abs(ours - ref).max():.2e}, |logits| <= "
        f"{np.abs(ref).max():.1f}")  # fmt: skip
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)

  tok = tokenizer.load_hf_tokenizer(str(root / name))
  stream_T = np.array(tok.encode(TEXT)[:33], np.int32)
  ppl = perplexity.stream_perplexity(params, net, stream_T, tok, seq_len=32, batch_size=1)
  with torch.no_grad():
    ids = torch.tensor(stream_T[None].astype(np.int64))
    ref_ppl = float(torch.exp(models[name](ids, labels=ids).loss))
  np.testing.assert_allclose(ppl["perplexity"], ref_ppl, rtol=TOL)

  if name not in AQT_CHECKED:
    return
  spec = QuantSpec(bits=4, dtype="nf", blocksize=64)
  quantized = jax.jit(reference.fake_quant_params, static_argnums=1)(params, spec)
  aqt_net = transformer.Transformer(p, dot_general_cls=aqt.make_dot_general_cls(spec))
  fake_quant = np.asarray(jax.jit(net.apply)({"params": quantized}, jnp.asarray(tokens_BxL)))
  # The same function in another float32 order: its rounding grows with the logits' scale,
  # not each logit's (measured on a Xeon: at most 1.1e-6, 1.1e-6, 1.5e-6 of the largest
  # logit for llama3_rope, qwen3, gemma; gemma's 1.75e-5 fell on a logit of 0.37), so the
  # bound is 5e-6 of the largest; a wrong code or scale moves logits by > 1e-2 (the
  # fake-quant model's distance from the float one, asserted below).
  np.testing.assert_allclose(
    jax.jit(aqt_net.apply)({"params": params}, jnp.asarray(tokens_BxL)),
    fake_quant,
    atol=5e-6 * np.abs(fake_quant).max(),
    rtol=0,
  )
  assert np.abs(fake_quant - ours).max() > 0.01


def test_import_restores_tensor_parallel_with_replicated_key_value(hf_families, tmp_path):
  """Loaded over all 8 devices, saved, restored on fsdp 4 x tensor 2: query heads split,
  the 2 key/value heads replicated over tensor (sharding.py), logits unchanged."""
  root, models = hf_families
  out = tmp_path / "llama"
  record = importer.import_hf(root / "llama", out, verbose=False)
  assert record["family"] == "llama" and record["preset"] == ""
  assert record["tokenizer_files"] == ["tokenizer.json", "tokenizer_config.json", "config.json"]
  p = importer.read_architecture(out)
  assert (p.num_kv_heads, p.mlp, p.norm, p.tie_embeddings) == (2, "gated", "rmsnorm", False)
  assert record["params"]["total"] == sum(x.numel() for x in models["llama"].parameters())
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=4, tensor=2)))
  ckpt = checkpoint.Checkpointer(str(out), keep=1, read_only=True)
  params = ckpt.restore_params(
    importer.abstract_params(p, mesh, sharding.RULE_SETS["megatron"]), step=0
  )
  ckpt.close()
  attn = params["layer_0"]["attn"]
  assert tuple(attn["query"]["kernel"].sharding.spec) == ("fsdp", "tensor")
  assert tuple(attn["key"]["kernel"].sharding.spec) == ("fsdp", None)
  tokens_BxL = np.arange(20).reshape(2, 10)
  np.testing.assert_allclose(
    jax.jit(transformer.Transformer(p).apply)({"params": params}, tokens_BxL),
    _torch_logits(models["llama"], tokens_BxL),
    atol=TOL,
    rtol=0,
  )


@pytest.mark.parametrize("name, dtype", [("llama", "bfloat16"), ("gemma", "float16")])
def test_16_bit_sharded_checkpoints(hf_families, tmp_path, name, dtype):
  """Hub checkpoints are bf16 (Gemma's also fp16): read as stored, converted to float32."""
  root, models = hf_families
  copy.deepcopy(models[name]).to(getattr(torch, dtype)).save_pretrained(
    tmp_path, max_shard_size="20KB"
  )
  # the reference: transformers loading the 16-bit weights into float32 (a model cast back
  # with .float() would keep its rotary frequencies rounded to 16 bits as well)
  m = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  ref = _torch_logits(m, np.arange(16).reshape(2, 8))
  plan = importer.plan_import(tmp_path)
  assert {i.dtype for i in plan.checkpoint.info.values()} == {dtype}
  assert len({i.file for i in plan.checkpoint.info.values()}) > 1
  params = importer.load_params(plan, *importer.import_mesh(plan.preset), verbose=False)
  logits = jax.jit(transformer.Transformer(plan.preset).apply)(
    {"params": params}, np.arange(16).reshape(2, 8)
  )
  np.testing.assert_allclose(logits, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_family_tokenizers(hf_families, kind):
  """tokenizer.json + tokenizer_config.json: special ids by role, no BOS added, text
  round-trips (SentencePiece's metaspace and byte-level BPE alike)."""
  root, _ = hf_families
  name = next(n for n, k in TOKENIZER_OF.items() if k == kind)
  tok = tokenizer.load_hf_tokenizer(str(root / name))
  raw = tokenizers.Tokenizer.from_file(str(root / name / "tokenizer.json"))
  spec = TOKENIZERS[kind]
  assert tok.eos_id == raw.token_to_id(spec["eos"]) >= 0
  assert tok.bos_id == (raw.token_to_id(spec["bos"]) if spec["bos"] else -1)
  ids = tok.encode(TEXT + " " + spec["eos"])
  assert ids[-1] == tok.eos_id and tok.bos_id not in ids[:1]
  assert tok.decode(tok.encode(TEXT)) == TEXT and tok.vocab_size == VOCAB


# ----------------------------------------------------------------------------- bad input


def _copy(src, dst, edit_tensors=None, edit_config=None):
  dst.mkdir()
  for f in src.iterdir():
    if f.name != "model.safetensors":
      (dst / f.name).write_bytes(f.read_bytes())
  tensors = safetensors_numpy.load_file(src / "model.safetensors")
  if edit_tensors:
    edit_tensors(tensors)
  safetensors_numpy.save_file(tensors, dst / "model.safetensors")
  if edit_config:
    cfg = json.loads((src / "config.json").read_text())
    edit_config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
  return dst


K_PROJ = "model.layers.1.self_attn.k_proj.weight"
BAD_INPUTS = {
  "kv_shape": (
    "qwen3",
    lambda t: t.__setitem__(K_PROJ, np.zeros((64, 48), np.float32)),
    None,
    rf"tensor '{K_PROJ}': expected shape \(32, 48\) \(from config.json\), found \(64, 48\)",
  ),
  "no_q_norm": (
    "qwen3",
    lambda t: t.pop("model.layers.0.self_attn.q_norm.weight"),
    None,
    r"lacks 1 tensor\(s\) config.json implies: model.layers.0.self_attn.q_norm.weight",
  ),
  "qwen2_no_bias": (
    "qwen2",
    lambda t: t.pop("model.layers.0.self_attn.v_proj.bias"),
    None,
    r"lacks 1 tensor\(s\) config.json implies: model.layers.0.self_attn.v_proj.bias",
  ),
  "kv_heads_vs_tensors": (
    "qwen2",
    None,
    lambda c: c.update(num_key_value_heads=6),
    r"tensor 'model.layers.0.self_attn.k_proj.weight': expected shape \(48, 48\) \(from "
    r"config.json\), found \(24, 48\)",
  ),
  "heads_kv": (
    "gemma",
    None,
    lambda c: c.update(num_key_value_heads=3),
    r"config.json num_attention_heads=4 is not a multiple of num_key_value_heads=3",
  ),
  "sliding_window": (
    "mistral",
    None,
    lambda c: c.update(sliding_window=16),
    r"config.json sliding_window=16 is not supported",
  ),
  "rope_type": (
    "llama",
    None,
    lambda c: c.update(rope_parameters=dict(rope_type="dynamic", rope_theta=1e4, factor=2.0)),
    r"rope_type='dynamic' is not supported; supported: \['default', 'llama3'\]",
  ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_any_weight_and_nothing_written(hf_families, tmp_path, case):
  name, edit_tensors, edit_config, match = BAD_INPUTS[case]
  src = _copy(hf_families[0] / name, tmp_path / "src", edit_tensors, edit_config)
  with pytest.raises(ValueError, match=match):
    importer.import_hf(src, tmp_path / "out", verbose=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]

"""Hugging Face imports: our logits and perplexity equal transformers' for every family,
the imported model quantizes and evaluates unchanged, and bad input is refused with
nothing written.

Each family is a tiny random model built by `transformers` from its config class (2
layers, d_model 32-48) and saved with `save_pretrained` (safetensors, one of them
sharded; one a torch `pytorch_model.bin`). Weights are redrawn with std 0.2 (LayerNorm
scales 1 +- 0.2) so that logits are O(1) and every tensor matters, not the near-zero
logits of HF's 0.02 init. Tolerance 1e-4 absolute on logits of magnitude ~5: float32
reordering gives ~3e-6; any misplaced head, q/k/v part or transpose gives O(1).
"""
# ruff: noqa: E402 (the imports below wait for pytest.importorskip)

import copy
import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip(
  "torch",
  reason="HF import tests need torch (CPU build) and "
  "transformers: pip install torch==2.13.0 transformers==5.24.0",
)
transformers = pytest.importorskip(
  "transformers", reason="HF import tests need transformers: pip install transformers==5.24.0"
)
tokenizers = pytest.importorskip("tokenizers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from kbit_jax.convert import families, importer, tokenizer
from kbit_jax.evals import perplexity
from kbit_jax.model import presets, transformer
from kbit_jax.quant import aqt, blockwise, reference
from kbit_jax.quant.spec import QuantSpec
from kbit_jax.train import checkpoint, data, sharding

pytestmark = pytest.mark.filterwarnings(
  "ignore:Implicit conversion of an array to a dtype:DeprecationWarning"
)

VOCAB = 300  # the tiny tokenizer's pieces; models pad their vocab to MODEL_VOCAB
MODEL_VOCAB = 304
EOS = "<|endoftext|>"
TOL = 1e-4
TEXT = (
  "In the beginning God created the heaven and the earth. And the earth was without "
  "form, and void; and darkness was upon the face of the deep."
)


def _configs(eos_id):
  T = transformers
  ids = dict(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=None)
  small = dict(vocab_size=MODEL_VOCAB, **ids)
  return {
    "gpt2": (
      T.GPT2LMHeadModel,
      T.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, **small),
    ),
    "neox_parallel": (
      T.GPTNeoXForCausalLM,
      T.GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        rotary_pct=0.25,
        use_parallel_residual=True,
        **small,
      ),
    ),
    "neox_sequential": (
      T.GPTNeoXForCausalLM,
      T.GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        rotary_pct=0.5,
        use_parallel_residual=False,
        **small,
      ),
    ),
    "opt_pre_ln": (
      T.OPTForCausalLM,
      T.OPTConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        **small,
      ),
    ),
    # OPT-350m's shape: post-LN, no final LayerNorm, 16-dim embedding projected in/out
    "opt_post_ln_proj": (
      T.OPTForCausalLM,
      T.OPTConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
        do_layer_norm_before=False,
        **small,
      ),
    ),
    # 6 heads: ALiBi slopes for a non-power-of-two head count (BLOOM-176b has 112)
    "bloom": (T.BloomForCausalLM, T.BloomConfig(n_layer=2, hidden_size=48, n_head=6, **small)),
  }


SAVE = {"gpt2": "sharded", "neox_sequential": "bin"}  # others: one model.safetensors
VOCAB_MERGES = ("gpt2", "opt_pre_ln", "opt_post_ln_proj")  # tokenizer as OPT's hub dirs


def save_tokenizer(bpe, out, vocab_merges: bool):
  """`bpe` into a saved model dir as the hub has it: vocab.json + merges.txt (GPT-2, OPT)
  or tokenizer.json, and EOS as the special tokens."""
  if vocab_merges:
    bpe.save_model(str(out))
  else:
    bpe.save(str(out / "tokenizer.json"))
  (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOS, "bos_token": EOS}))


def _randomize(m):
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in m.named_parameters():
      if p.ndim == 1:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p))
  return m.eval()


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory):
  """Tiny tokenizer + one saved HF model per family; returns (root, {name: torch model})."""
  root = tmp_path_factory.mktemp("hf")
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
    [data.corpus_text("validation")[:50_000]],
    vocab_size=VOCAB,
    special_tokens=[EOS],
    show_progress=False,
  )
  eos_id = bpe.token_to_id(EOS)
  models = {}
  for name, (cls, cfg) in _configs(eos_id).items():
    m = _randomize(cls(cfg))
    out = root / name
    if SAVE.get(name) == "sharded":
      m.save_pretrained(out, max_shard_size="20KB")
      assert (out / "model.safetensors.index.json").exists()
    else:
      m.save_pretrained(out)
    if SAVE.get(name) == "bin":  # transformers 5 writes safetensors only: as old hub repos
      torch.save(m.state_dict(), out / "pytorch_model.bin")
      (out / "model.safetensors").unlink()
    save_tokenizer(bpe, out, vocab_merges=name in VOCAB_MERGES)
    models[name] = m
  return root, models


def _torch_logits(m, tokens_BxL):
  with torch.no_grad():
    return m(torch.tensor(np.asarray(tokens_BxL))).logits.float().numpy()


def _torch_fake_quant(model, spec: QuantSpec):
  """A copy of the torch model whose block matmul weights (the `attn` and `mlp` targets)
  are fake-quantized in torch's own layout: a Linear weight is (out, in), and the row-major
  blocks of B values of its rows are those our (in, out) kernels quantize along the input
  axis (reference.fake_quant_tensor(kernel=True)); GPT-2's Conv1D stores (in, out) and is
  transposed around it. Fused q/k/v rows are permuted per head, which changes no block
  here: with d_model 32, head_dim 8 and B 64 a block is two consecutive rows of one part."""
  from transformers.pytorch_utils import Conv1D

  quantized = copy.deepcopy(model)
  codebook = reference.spec_codebook(spec)
  for module_name, module in quantized.named_modules():
    if not re.search(r"(^|\.)(h|layers)\.\d+\.", module_name):
      continue
    if not isinstance(module, (torch.nn.Linear, Conv1D)):
      continue
    w = module.weight.detach().numpy()
    w = w.T if isinstance(module, Conv1D) else w
    w = np.asarray(blockwise.fake_quant(jnp.asarray(w), codebook, spec.blocksize))
    module.weight.data = torch.from_numpy(np.array(w.T if isinstance(module, Conv1D) else w))
  return quantized


AQT_CHECKED = ("bloom", "opt_post_ln_proj")  # the switches with new Dense layers / scores


@pytest.mark.parametrize("name", list(_configs(0)))
def test_logits_and_perplexity_equal_transformers(hf_root, name):
  """On one device (compiles for 8 fake devices cost 2x); sharded loading is tested below."""
  root, models = hf_root
  p = importer.plan_import(root / name).preset
  p, params = importer.load_hf(root / name, *importer.import_mesh(p, jax.devices()[:1]))
  net = transformer.Transformer(p)
  tokens_BxL = np.random.RandomState(0).randint(0, MODEL_VOCAB, (2, 24))
  ours = np.asarray(jax.jit(net.apply)({"params": params}, jnp.asarray(tokens_BxL)))
  ref = _torch_logits(models[name], tokens_BxL)
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)

  tok = tokenizer.load_hf_tokenizer(str(root / name))
  stream_T = np.array(tok.encode(TEXT)[:33], np.int32)
  ppl = perplexity.stream_perplexity(params, net, stream_T, tok, seq_len=32, batch_size=1)
  with torch.no_grad():
    ids = torch.tensor(stream_T[None].astype(np.int64))
    ref_ppl = float(torch.exp(models[name](ids, labels=ids).loss))
  np.testing.assert_allclose(ppl["perplexity"], ref_ppl, rtol=TOL)
  assert ppl["tokens"] == 32 and ppl["bytes"] > 0

  # k-bit: our quantized import scores what transformers scores with the same weights
  # quantized in its own layout (_torch_fake_quant); the injected AQT dot_general agrees
  # with the reference on the new architecture switches (every attn/mlp matmul takes it)
  spec = QuantSpec(bits=4, dtype="nf", blocksize=64)
  quantized = jax.jit(reference.fake_quant_params, static_argnums=1)(params, spec)
  q_ppl = perplexity.stream_perplexity(quantized, net, stream_T, tok, seq_len=32, batch_size=1)[
    "perplexity"
  ]
  with torch.no_grad():
    ref_q_ppl = float(torch.exp(_torch_fake_quant(models[name], spec)(ids, labels=ids).loss))
  np.testing.assert_allclose(q_ppl, ref_q_ppl, rtol=TOL)
  assert abs(q_ppl / ppl["perplexity"] - 1) > 10 * TOL  # 4 bits moved it beyond the tolerance
  if name not in AQT_CHECKED:
    return
  aqt_net = transformer.Transformer(p, dot_general_cls=aqt.make_dot_general_cls(spec))
  np.testing.assert_allclose(
    jax.jit(aqt_net.apply)({"params": params}, jnp.asarray(tokens_BxL)),
    jax.jit(net.apply)({"params": quantized}, jnp.asarray(tokens_BxL)),
    atol=1e-5,
  )


def test_import_writes_checkpoint_architecture_and_tokenizer(hf_root, tmp_path):
  root, models = hf_root
  out = tmp_path / "imported" / "bloom"
  record = importer.import_hf(root / "bloom", out, verbose=False)
  assert sorted(p.name for p in out.iterdir()) == ["architecture.json", "checkpoints", "tokenizer"]
  assert not list(out.parent.glob(".*importing"))
  assert record["family"] == "bloom" and record["source_dtypes"] == ["float32"]
  p = importer.read_architecture(out)
  assert p.positions == "alibi" and p.embed_norm and p.num_heads == 6
  assert record["params"]["total"] == sum(x.numel() for x in models["bloom"].parameters())

  # restores with checkpoint.py onto another mesh (tensor-parallel heads), no HF dir needed
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=4, tensor=2)))
  rules = sharding.RULE_SETS["megatron"]
  ckpt = checkpoint.Checkpointer(str(out), keep=1, read_only=True)
  params = ckpt.restore_params(importer.abstract_params(p, mesh, rules), step=0)
  ckpt.close()
  assert tuple(params["layer_0"]["attn"]["query"]["kernel"].sharding.spec) == ("fsdp", "tensor")
  tokens_BxL = np.arange(20).reshape(2, 10)
  np.testing.assert_allclose(
    jax.jit(transformer.Transformer(p).apply)({"params": params}, tokens_BxL),
    _torch_logits(models["bloom"], tokens_BxL),
    atol=TOL,
    rtol=0,
  )
  tok = tokenizer.load_hf_tokenizer(str(out))  # the workdir's own copy
  assert tok.decode(tok.encode(TEXT)) == TEXT and tok.vocab_size == VOCAB
  # data.load_tokenizer (config key data.tokenizer) takes the workdir too
  from kbit_jax.train import data

  assert data.load_tokenizer(str(out)).encode(TEXT) == tok.encode(TEXT)


def test_bfloat16_checkpoints_safetensors_and_bin(hf_root, tmp_path):
  """BLOOM and most hub checkpoints store bf16, which numpy has no type for."""
  m = copy.deepcopy(hf_root[1]["bloom"]).to(torch.bfloat16)
  m.save_pretrained(tmp_path / "st")
  (tmp_path / "bin").mkdir()
  for f in ("config.json", "special_tokens_map.json", "tokenizer.json"):
    (tmp_path / "bin" / f).write_bytes((hf_root[0] / "bloom" / f).read_bytes())
  torch.save(m.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  ref = _torch_logits(m.float(), np.arange(16).reshape(2, 8))  # the bf16 weights, in f32
  one_device = importer.import_mesh(presets.PRESETS["s0"], jax.devices()[:1])
  for source in ("st", "bin"):
    plan = importer.plan_import(tmp_path / source)
    assert {i.dtype for i in plan.checkpoint.info.values()} == {"bfloat16"}
    params = importer.load_params(plan, *one_device, verbose=False)
    logits = jax.jit(transformer.Transformer(plan.preset).apply)(
      {"params": params}, np.arange(16).reshape(2, 8)
    )
    np.testing.assert_allclose(logits, ref, atol=TOL, rtol=0)


def test_tokenizer_files_agree_and_match_data_tokenizer_interface(hf_root):
  root, _ = hf_root
  from_json = tokenizer.load_hf_tokenizer(str(root / "bloom"))
  from_bpe_files = tokenizer.load_hf_tokenizer(str(root / "gpt2"))  # vocab.json + merges
  text = TEXT + " " + EOS + " Amen."
  assert from_json.encode_batch([text]) == [from_bpe_files.encode(text)]
  assert from_json.eos_id == from_bpe_files.eos_id == from_json.encode(EOS)[0]
  assert from_bpe_files.decode(from_bpe_files.encode(TEXT)) == TEXT
  for attr in ("vocab_size", "pad_id", "unk_id", "bos_id", "eos_id", "name"):
    assert hasattr(from_json, attr) and hasattr(data.load_tokenizer(), attr)


@pytest.mark.parametrize(
  "name, hub_config",
  [
    (
      "gpt2",
      dict(
        model_type="gpt2",
        activation_function="gelu_new",
        n_ctx=1024,
        n_embd=768,
        n_head=12,
        n_layer=12,
        n_positions=1024,
        vocab_size=50257,
        layer_norm_epsilon=1e-5,
      ),
    ),
    (
      "opt-350m",
      dict(
        model_type="opt",
        activation_function="relu",
        do_layer_norm_before=False,
        ffn_dim=4096,
        hidden_size=1024,
        max_position_embeddings=2048,
        num_attention_heads=16,
        num_hidden_layers=24,
        vocab_size=50272,
        word_embed_proj_dim=512,
        _remove_final_layer_norm=False,
      ),
    ),
    (
      "pythia-70m",
      dict(
        model_type="gpt_neox",
        hidden_act="gelu",
        hidden_size=512,
        intermediate_size=2048,
        max_position_embeddings=2048,
        num_attention_heads=8,
        num_hidden_layers=6,
        rotary_emb_base=10000,
        rotary_pct=0.25,
        tie_word_embeddings=False,
        use_parallel_residual=True,
        vocab_size=50304,
        layer_norm_eps=1e-5,
      ),
    ),
    (
      "bloom-560m",
      dict(
        model_type="bloom",
        n_embed=1024,
        n_head=16,
        n_layer=24,
        vocab_size=250880,
        layer_norm_epsilon=1e-5,
        apply_residual_connection_post_layernorm=False,
      ),
    ),
  ],
)
def test_hub_configs_name_their_presets(name, hub_config):
  p = families.family_of(hub_config).preset_from_config(hub_config)
  assert importer.preset_name(p) == name


@pytest.mark.parametrize(
  "name, total",
  [
    ("gpt2", 124_439_808),
    ("gpt2-xl", 1_557_611_200),
    ("opt-125m", 125_239_296),
    ("opt-350m", 331_196_416),
    ("pythia-12b", 11_846_072_320),
    ("bloom-560m", 559_214_592),
    ("bloom-176b", 176_247_271_424),
  ],
)
def test_pretrained_presets_have_published_parameter_counts(name, total):
  assert presets.param_counts(presets.PRESETS[name])["total"] == total


def test_pretrained_grid_config_plans_and_prints_memory_per_device():
  from kbit_jax.config import files
  from kbit_jax.grid import plan as grid_plan

  grid_pretrained = files.load_module(
    pathlib.Path(__file__).resolve().parents[1] / "configs" / "grid_pretrained.py"
  )

  config = grid_pretrained.get_config("families=gpt2,max_params=2e8,fsdp=4")
  assert config.grid.sizes == ("gpt2",)
  assert dict(config.pretrained.repos) == {"gpt2": "openai-community/gpt2"}
  assert len(grid_plan.make_plan(config).cells) == 1 + 5 * 4 * 3
  (row,) = grid_pretrained.memory_table(config)
  assert row["f32"] == 4 * 124_439_808 / 4 / 2**30 and row["b16"] == row["f32"] / 2
  assert row["k3"] < row["k4"] < row["k8"] < row["b16"]
  text = grid_pretrained.format_memory_table(config, [row])
  assert "fsdp=4 x tensor=1 = 4 devices" in text and "0.12" in text  # 2 x f32 GiB
  with pytest.raises(
    ValueError,
    match=r"families='mixtral': allowed a comma list of "
    r"\['opt', 'pythia', 'gpt2', 'bloom', 'smollm2', 'llama', 'mistral', 'qwen2.5', 'qwen3', "
    r"'gemma'\] or 'modern'",
  ):
    grid_pretrained.get_config("families=mixtral")


# ----------------------------------------------------------------------------- bad input


def _copy_with(src, dst, edit_tensors=None, edit_config=None):
  """A copy of the single-file HF dir `src` with its tensors / config.json edited."""
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


def _set(key, value):
  return lambda d: d.__setitem__(key, value)


LN = "transformer.h.1.input_layernorm.weight"
BAD_INPUTS = {
  "unknown_family": (
    None,
    _set("model_type", "mixtral"),
    ValueError,
    r"model_type='mixtral'.*allowed model_type: \['bloom', 'gemma', 'gpt2', "
    r"'gpt_neox', 'llama', 'mistral', 'opt', 'qwen2', 'qwen3'\]",
  ),
  "missing": (
    lambda t: t.pop(LN),
    None,
    ValueError,
    rf"lacks 1 tensor\(s\) config.json implies: {LN}",
  ),
  "extra": (
    _set("transformer.h.0.adapter.weight", np.zeros(3, np.float32)),
    None,
    ValueError,
    r"has 1 tensor\(s\) a bloom model .* does not: "
    r"transformer.h.0.adapter.weight",
  ),
  "shape": (
    _set(LN, np.ones(47, np.float32)),
    None,
    ValueError,
    rf"tensor '{LN}': expected shape \(48,\) \(from config.json\), found \(47,\)",
  ),
  "int8": (
    _set(LN, np.ones(48, np.int8)),
    None,
    ValueError,
    rf"tensor '{LN}' has dtype int8; allowed: \['float64', 'float32', 'float16', "
    r"'bfloat16'\]",
  ),
  "quantized_config": (
    None,
    _set("quantization_config", {"quant_method": "gptq"}),
    ValueError,
    r"quantization_config \(quant_method='gptq'\)",
  ),
  "bad_option": (
    None,
    _set("apply_residual_connection_post_layernorm", True),
    ValueError,
    r"apply_residual_connection_post_layernorm=True is not supported; "
    r"supported: False",
  ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_and_nothing_written(hf_root, tmp_path, case):
  edit_tensors, edit_config, error, match = BAD_INPUTS[case]
  src = _copy_with(hf_root[0] / "bloom", tmp_path / "src", edit_tensors, edit_config)
  out = tmp_path / "out"
  with pytest.raises(error, match=match):
    importer.import_hf(src, out, verbose=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_existing_workdir_and_missing_files_are_refused(hf_root, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="exists and is not empty"):
    importer.import_hf(hf_root[0] / "bloom", out, verbose=False)
  assert [p.name for p in out.iterdir()] == ["keep.txt"]
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    importer.import_hf(tmp_path / "nowhere", tmp_path / "out2", verbose=False)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(
    json.dumps(
      {
        "model_type": "gpt2",
        "n_embd": 32,
        "n_head": 4,
        "n_layer": 2,
        "n_positions": 64,
        "vocab_size": 10,
        "activation_function": "gelu_new",
      }
    )
  )
  with pytest.raises(
    FileNotFoundError,
    match=r"no weights in .*expected one of "
    r"\['model.safetensors.index.json'",
  ):
    importer.import_hf(empty, tmp_path / "out3", verbose=False)
  assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()

"""GPTQ and AWQ on the Llama-style model: gated MLPs (mlp/gate), grouped-query attention
(kv_heads) and RMSNorm. Every targeted kernel is quantized (the gate too), AWQ's groups
fold where the architecture lets them, and the folded model computes the AWQ tree."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kbit_jax.model.presets import PRESETS, Preset
from kbit_jax.model.transformer import Transformer
from kbit_jax.quant import awq, bits, calibration, methods
from kbit_jax.quant.spec import QuantSpec, is_quantized, named_leaves

# SwiGLU, 4 query heads over 2 key/value heads, RMSNorm, rotary, no biases, untied head.
LLAMA = Preset(
  2,
  32,
  4,
  64,
  256,
  32,
  positions="rotary",
  tie_embeddings=False,
  use_bias=False,
  norm="rmsnorm",
  mlp="gated",
  activation="silu",
  kv_heads=2,
)
SPEC = QuantSpec(bits=3, dtype="int", targets="attn,mlp,head")


@functools.lru_cache(maxsize=None)
def _setup(preset=LLAMA):
  model = Transformer(preset)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 4, 16), 0, preset.vocab_size)
  return model, params, calibration.calibrate(model, params, tokens), tokens


def _groups(preset):
  names = named_leaves(bits.preset_shapes(preset))[0]
  return {
    g.name: (["/".join(k[1:]) for k in g.kernels], g.fold_into and "/".join(g.fold_into))
    for g in awq.scale_groups(preset, names)
    if not g.name.startswith("layer_") or g.name.startswith("layer_0/")
  }


def test_scale_groups_of_gated_grouped_query_models():
  assert _groups(LLAMA) == {
    "layer_0/qkv": (["attn/query/kernel", "attn/key/kernel", "attn/value/kernel"], "layer_0/ln1"),
    # no out group: value's 2 x 8 outputs are not out's 4 x 8 inputs (the reference skips it)
    "layer_0/wi": (["mlp/wi/kernel", "mlp/gate/kernel"], "layer_0/ln2"),
    "layer_0/wo": (["mlp/wo/kernel"], "layer_0/mlp/wi/kernel"),  # into up, any activation
    "head": (["kernel"], "ln_f"),
  }
  # l0: tied (the embedding is its head: a stored scale, 16 bits x d_model = 16).
  tied = _groups(PRESETS["l0"])
  assert tied["embed"] == (["embedding"], None) and "layer_0/out" not in tied
  spec = QuantSpec(bits=4, targets="attn,mlp,embed")
  shapes = bits.preset_shapes(PRESETS["l0"])
  assert awq.scale_bits(shapes, spec, PRESETS["l0"])["total_bits"] == 16 * 16
  # Without grouped-query attention out folds into value again (gemma-7b: 16 / 16 heads).
  assert _groups(PRESETS["gemma-7b"])["layer_0/out"] == (
    ["attn/out/kernel"],
    "layer_0/attn/value/kernel",
  )


def test_gate_shares_the_up_projections_statistics():
  _, _, calib, _ = _setup()
  gate, up = (calib.kernels[("layer_1", "mlp", p, "kernel")] for p in ("gate", "wi"))
  np.testing.assert_array_equal(gate.h_KxK, up.h_KxK)
  assert calib.kernels[("layer_1", "mlp", "wo", "kernel")].h_KxK.shape == (64, 64)
  assert calib.kernels[("layer_1", "attn", "out", "kernel")].h_KxK.shape == (32, 32)


def _unbox(params):
  return jax.tree.map(
    lambda x: x.unbox() if hasattr(x, "unbox") else x, params, is_leaf=lambda x: hasattr(x, "unbox")
  )


def _fold(params, scales):
  """The equivalent float Llama-style model with every AWQ scale folded in."""
  p = jax.tree.map(np.asarray, _unbox(params))["params"]
  s = {n: np.asarray(v[1]) for n, v in scales.items()}

  def row(w, v):
    return w * v[:, None]

  for i in range(LLAMA.num_layers):
    layer = p[f"layer_{i}"]
    qkv, wi, wo = (s[f"layer_{i}/{g}"] for g in ("qkv", "wi", "wo"))
    layer["ln1"] = {"scale": layer["ln1"]["scale"] / qkv}
    layer["ln2"] = {"scale": layer["ln2"]["scale"] / wi}
    for proj in ("query", "key", "value"):
      layer["attn"][proj]["kernel"] = row(layer["attn"][proj]["kernel"], qkv)
    mlp = layer["mlp"]
    mlp["gate"]["kernel"] = row(mlp["gate"]["kernel"], wi)
    mlp["wi"]["kernel"] = row(mlp["wi"]["kernel"], wi) / wo[None, :]
    mlp["wo"]["kernel"] = row(mlp["wo"]["kernel"], wo)
  p["ln_f"] = {"scale": p["ln_f"]["scale"] / s["head"]}
  p["head"]["kernel"] = row(p["head"]["kernel"], s["head"])
  return {"params": p}


def test_folded_llama_computes_what_the_awq_tree_computes():
  model, params, calib, tokens = _setup()
  names, leaves, treedef = named_leaves(params)
  values = {n: leaf.value for n, leaf in zip(names, leaves)}
  targeted = methods.quantized_kernels(params, SPEC)
  done, scales = awq.quantize_kernels(values, calib.kernels, SPEC, LLAMA, {}, targeted)
  assert set(done) == set(targeted) and any(a > 0 for a, _ in scales.values())
  tree = jax.tree_util.tree_unflatten(treedef, [done.get(n, values[n]) for n in names])
  apply = jax.jit(model.apply)

  def logits(p):
    return np.asarray(apply(_unbox(p), tokens[0]))

  want = logits(methods.quantize_params(_fold(params, scales), SPEC, "rtn"))
  tol = 1e-5 * np.abs(want).max()  # float32 rounding of s and 1/s on both sides
  np.testing.assert_allclose(logits(tree), want, rtol=0, atol=tol)


def test_every_targeted_kernel_is_quantized_and_identity_gptq_is_rtn():
  _, params, calib, _ = _setup()
  identity = calibration.Calibration(
    {
      n: calibration.KernelStats(jnp.eye(s.h_KxK.shape[0]), jnp.ones(s.h_KxK.shape[0]))
      for n, s in calib.kernels.items()
    },
    8,
    128,
    "fast",
  )
  rtn = methods.quantize_params(params, SPEC, "rtn")
  gptq_identity = methods.quantize_params(params, SPEC, "gptq", identity)
  gptq = methods.quantize_params(params, SPEC, "gptq", calib)
  awq_tree = methods.quantize_params(params, SPEC, "awq", calib, preset=LLAMA)
  names = named_leaves(params)[0]
  assert ("layer_0", "mlp", "gate", "kernel") in names
  for i, n in enumerate(names):
    float_w = np.asarray(named_leaves(params)[1][i].value)
    r, gi, g, a = (
      np.asarray(named_leaves(t)[1][i].value) for t in (rtn, gptq_identity, gptq, awq_tree)
    )
    np.testing.assert_array_equal(gi, r, err_msg=str(n))
    for got in (g, a):
      assert np.array_equal(got, float_w) == (not is_quantized(n, SPEC)), n

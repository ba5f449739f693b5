"""AWQ: alpha = 0 is RTN exactly, the search never loses to RTN, the scale formula, which
scales fold (and that a folded model computes what the fake-quantized tree computes)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kbit_jax.model.presets import PRESETS, Preset
from kbit_jax.model.transformer import Transformer
from kbit_jax.quant import awq, bits, calibration, codebooks, methods, reference
from kbit_jax.quant.spec import QuantSpec, named_leaves

K, N = 160, 24  # K % 64 = 32: blocks straddle output units
BLOCKSIZES = (64, 0, -1)


def _specs(blocksize, ks=(2, 3, 4, 8), quantile_ks=(3, 4)):
  """Every data type (nf also double-quantized) at a few k; quantile compiles per k."""
  for dtype in codebooks.DTYPES:
    for k in quantile_ks if dtype == "quantile" else ks:
      yield QuantSpec(bits=k, dtype=dtype, blocksize=blocksize)
  yield QuantSpec(bits=4, dtype="nf", blocksize=blocksize, double_quant=True)


@functools.partial(jax.jit, static_argnums=1)
def _rtn(w, spec, codebook_C):
  """RTN of one kernel as grid.py runs it: jitted, layout spec static, codebook an array."""
  return reference.fake_quant_tensor(w, spec, None, codebook_C, kernel=True)


def rtn(w, spec):
  return np.asarray(_rtn(w, reference.layout_spec(spec), reference.spec_codebook(spec)))


def _scaled(w, spec, s_K, c_N):
  return np.asarray(
    awq._apply(w, reference.layout_spec(spec), s_K, c_N, None, reference.spec_codebook(spec))
  )


def _weights(seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (K, N))


def _inputs(seed=1, tokens=512):
  """Inputs whose channel magnitudes spread over two decades, with a few outlier channels."""
  key_x, key_m = jax.random.split(jax.random.PRNGKey(seed))
  x = np.asarray(jax.random.normal(key_x, (tokens, K)), np.float64)
  magnitude = np.exp(np.asarray(jax.random.normal(key_m, (K,)), np.float64))
  magnitude[[5, 50, 120]] *= 30
  return x * magnitude


def _stats(x):
  return calibration.KernelStats(
    jnp.asarray(2 / len(x) * x.T @ x, jnp.float32), jnp.asarray(np.abs(x).mean(0), jnp.float32)
  )


def _output_error(w, w_hat, x):
  return float(np.sum(((np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)).T @ x.T) ** 2))


@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_alpha_zero_is_rtn_exactly(blocksize):
  w, stats = _weights(), _stats(_inputs())
  s_K = awq.candidate_scales(stats.mean_abs_K)[0]
  np.testing.assert_array_equal(np.asarray(s_K), np.ones(K, np.float32))
  for spec in _specs(blocksize):
    np.testing.assert_array_equal(
      _scaled(w, spec, s_K, jnp.ones(N)), rtn(w, spec), err_msg=str(spec)
    )


@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_searched_scales_never_lose_to_rtn(blocksize):
  w, x = _weights(), _inputs()
  stats = _stats(x)
  for spec in _specs(blocksize, ks=(3, 4)):
    s_K, alpha, errors = awq.search_scale([(w, stats, None)], spec)
    w_hat = _scaled(w, spec, s_K, jnp.ones(N))
    rtn_error = _output_error(w, rtn(w, spec), x)
    assert _output_error(w, w_hat, x) <= rtn_error, spec
    # The search's score is the same error from H alone (float32 H and matmul).
    np.testing.assert_allclose(errors[0], 2 / len(x) * rtn_error, rtol=1e-4)
    assert errors.shape == (awq.GRID,) and errors[int(round(alpha * awq.GRID))] == errors.min()
    if spec.dtype == "int" and spec.bits == 3:
      # Outlier channels: scaling must pay off here, not merely tie with alpha = 0.
      assert alpha > 0 and _output_error(w, w_hat, x) < 0.9 * rtn_error, spec


def test_candidate_scales_formula():
  mean_abs = np.asarray(np.abs(_inputs()).mean(0), np.float32)
  mean_abs[7] = 0.0  # a dead channel: clamped at 1e-4
  got = np.asarray(awq.candidate_scales(jnp.asarray(mean_abs), grid=4))
  for j, alpha in enumerate([0, 0.25, 0.5, 0.75]):
    s = np.maximum(mean_abs.astype(np.float64) ** alpha, 1e-4)
    s = (s / np.sqrt(s.max() * s.min())).astype(np.float16)
    # float32 pow on device vs float64 here: at most one float16 step apart.
    np.testing.assert_allclose(got[j], s.astype(np.float32), rtol=2**-10, err_msg=alpha)
  assert np.all(got[0] == 1)


def _folds(preset):
  groups = awq.scale_groups(preset, named_leaves(bits.preset_shapes(preset))[0])
  return {
    g.name: g.fold_into and "/".join(g.fold_into)
    for g in groups
    if g.name.startswith("layer_0/") or g.name == "head"
  }


def test_scale_groups_and_where_they_fold():
  pre_ln = {
    "layer_0/qkv": "layer_0/ln1",
    "layer_0/out": "layer_0/attn/value/kernel",
    "layer_0/wi": "layer_0/ln2",
    "layer_0/wo": None,
  }
  assert _folds(PRESETS["s0"]) == pre_ln  # tied: no head kernel
  assert _folds(PRESETS["pythia-70m"]) == {**pre_ln, "head": "ln_f"}  # parallel residual
  assert _folds(PRESETS["opt-125m"]) == {**pre_ln, "layer_0/wo": "layer_0/mlp/wi/kernel"}
  assert _folds(PRESETS["opt-350m"]) == {  # post-LN, narrow embedding, relu
    "layer_0/qkv": None,
    "layer_0/out": "layer_0/attn/value/kernel",
    "layer_0/wi": None,
    "layer_0/wo": "layer_0/mlp/wi/kernel",
  }
  post_ln_untied = Preset(3, 16, 2, 64, 512, 32, post_norm=True, tie_embeddings=False)
  assert _folds(post_ln_untied)["head"] == "layer_2/ln2"
  q_k_v = awq.scale_groups(PRESETS["s0"], named_leaves(bits.preset_shapes(PRESETS["s0"]))[0])
  assert [k[2] for k in q_k_v[0].kernels] == ["query", "key", "value"]


def test_scale_bits_count_the_scales_that_do_not_fold():
  def total(preset, targets, k=4):
    return awq.scale_bits(
      bits.preset_shapes(PRESETS[preset]), QuantSpec(bits=k, targets=targets), PRESETS[preset]
    )["total_bits"]

  assert total("s0", "attn,mlp") == 64 * 16  # wo: d_ff = 64 inputs, gelu
  assert total("s0", "attn") == 0
  assert total("s0", "attn,mlp", k=16) == 0
  assert total("pythia-70m", "attn,mlp,head") == 6 * 2048 * 16
  # post-LN: q/k/v (one vector for the three) and wi do not fold; relu wo and head do.
  assert total("opt-350m", "attn,mlp,head") == 24 * (1024 + 1024) * 16


_RELU = Preset(2, 32, 2, 64, 256, 32, activation="relu", tie_embeddings=False)


@functools.lru_cache(maxsize=None)
def _model_and_calibration(preset=_RELU):
  model = Transformer(preset)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 4, 16), 0, preset.vocab_size)
  return model, params, calibration.calibrate(model, params, tokens), tokens


def _unbox(params):
  return jax.tree.map(
    lambda x: x.unbox() if hasattr(x, "unbox") else x, params, is_leaf=lambda x: hasattr(x, "unbox")
  )


def _fold(params, scales, preset):
  """The equivalent float model with every AWQ scale folded into the layer before it."""
  p = jax.tree.map(np.asarray, _unbox(params))["params"]
  row, col = lambda w, s: w * s[:, None], lambda w, s: w / s[None, :]
  for i in range(preset.num_layers):
    layer, s = p[f"layer_{i}"], {n: np.asarray(v[1]) for n, v in scales.items()}
    qkv, out, wi, wo = (s[f"layer_{i}/{g}"] for g in ("qkv", "out", "wi", "wo"))
    for ln, scale in (("ln1", qkv), ("ln2", wi)):
      layer[ln] = {k: v / scale for k, v in layer[ln].items()}
    attn, mlp = layer["attn"], layer["mlp"]
    for proj in ("query", "key"):
      attn[proj]["kernel"] = row(attn[proj]["kernel"], qkv)
    attn["value"]["kernel"] = col(row(attn["value"]["kernel"], qkv), out)
    attn["value"]["bias"] = attn["value"]["bias"] / out
    attn["out"]["kernel"] = row(attn["out"]["kernel"], out)
    mlp["wi"]["kernel"] = col(row(mlp["wi"]["kernel"], wi), wo)
    mlp["wi"]["bias"] = mlp["wi"]["bias"] / wo
    mlp["wo"]["kernel"] = row(mlp["wo"]["kernel"], wo)
  p["ln_f"] = {k: v / s["head"] for k, v in p["ln_f"].items()}
  p["head"]["kernel"] = row(p["head"]["kernel"], s["head"])
  return {"params": p}


def test_folded_model_computes_what_the_awq_tree_computes():
  model, params, calib, tokens = _model_and_calibration()
  spec = QuantSpec(bits=3, dtype="int", targets="attn,mlp,head")
  names, leaves, treedef = named_leaves(params)
  values = {n: leaf.value for n, leaf in zip(names, leaves)}
  quantized = methods.quantized_kernels(params, spec)
  done, scales = awq.quantize_kernels(values, calib.kernels, spec, _RELU, {}, quantized)
  assert any(alpha > 0 for alpha, _ in scales.values())

  def tree(d):
    return jax.tree_util.tree_unflatten(treedef, [d.get(n, values[n]) for n in names])

  folded = methods.quantize_params(_fold(params, scales, _RELU), spec, "rtn")
  apply = jax.jit(model.apply)

  def logits(p):
    return np.asarray(apply(_unbox(p), tokens[0]))

  want = logits(folded)
  # The two compute the same products in another order (s and 1/s on both sides of a
  # LayerNorm or matmul): float32 rounding, relative to the logits' scale.
  tol = 1e-5 * np.abs(want).max()
  np.testing.assert_allclose(logits(tree(done)), want, rtol=0, atol=tol)
  # Without the out group's scale in value's quantization it does not hold.
  value = ("layer_0", "attn", "value", "kernel")
  unfolded = _scaled(values[value], spec, scales["layer_0/qkv"][1], jnp.ones(32))
  assert np.abs(logits(tree({**done, value: unfolded})) - want).max() > 10 * tol


def test_alpha_grid_of_one_is_rtn_on_the_tree():
  _, params, calib, _ = _model_and_calibration()
  spec = QuantSpec(bits=4, dtype="nf", targets="attn,mlp,head", outlier_share=0.1)
  got = methods.quantize_params(params, spec, "awq", calib, preset=_RELU, grid=1)
  want = methods.quantize_params(params, spec, "rtn")
  for n, a, b in zip(named_leaves(params)[0], named_leaves(got)[1], named_leaves(want)[1]):
    np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value), err_msg=str(n))


def test_bad_awq_arguments():
  _, params, calib, _ = _model_and_calibration()
  spec = QuantSpec(bits=4)
  with pytest.raises(ValueError, match="grid"):
    methods.quantize_params(params, spec, "awq", calib, preset=_RELU, grid=0)
  with pytest.raises(ValueError, match="preset"):
    methods.quantize_params(params, spec, "awq", calib)
  names, leaves, _ = named_leaves(params)
  values = {n: leaf.value for n, leaf in zip(names, leaves)}
  with pytest.raises(ValueError, match="layer_0/qkv"):
    awq.quantize_kernels(
      values, calib.kernels, spec, _RELU, {}, [("layer_0", "attn", "query", "kernel")]
    )


def test_scaled_dtype_and_kept_rows():
  w, c_N = _weights(), jnp.linspace(0.5, 2.0, N)
  keep = jnp.zeros(K, bool).at[jnp.array([1, 99])].set(True)
  s_K = awq.candidate_scales(_stats(_inputs()).mean_abs_K)[10]
  got = awq.fake_quant_scaled(w, QuantSpec(bits=3), s_K, c_N, keep)
  # Kept rows are the float weights bit for bit, not w * s / c * c / s.
  np.testing.assert_array_equal(np.asarray(got[keep]), np.asarray(w[keep]))
  assert not np.array_equal(np.asarray(got[~keep]), np.asarray(w[~keep]))
  half = awq.fake_quant_scaled(w.astype(jnp.bfloat16), QuantSpec(bits=3), s_K, c_N, keep)
  assert half.dtype == jnp.bfloat16

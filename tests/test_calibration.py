"""Calibration statistics against numpy on captured inputs, sequential against fast mode,
and every bad input refused before anything compiles."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kbit_jax.model.presets import Preset
from kbit_jax.model.transformer import Transformer
from kbit_jax.quant import calibration, methods
from kbit_jax.quant.spec import QuantSpec, named_leaves, target_of

ONE_BLOCK = Preset(1, 16, 2, 32, 128, 32)  # tied: no head kernel
TWO_BLOCKS = Preset(2, 16, 2, 32, 128, 32, tie_embeddings=False)
SPEC = QuantSpec(bits=3, dtype="int", targets="attn,mlp,head", outlier_share=0.1)


@functools.lru_cache(maxsize=None)
def _setup(preset):
  model = Transformer(preset)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 3, 16), 0, preset.vocab_size)
  return model, params, tokens


@functools.partial(jax.jit, static_argnums=0)
def _captured_inputs(model, params, tokens_BxL):
  """Every nn.Dense's input of one float forward pass, by kernel name, as (tokens, K)."""
  inputs = {}

  def capture(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      x = args[0]
      inputs["/".join(context.module.path)] = x.reshape(-1, x.shape[-1])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    model.apply(params, tokens_BxL)
  return inputs


def test_statistics_equal_numpy_on_captured_inputs():
  model, params, tokens = _setup(TWO_BLOCKS)
  calib = calibration.calibrate(model, params, tokens)
  batches = [_captured_inputs(model, params, t) for t in tokens]
  kernels = [n for n in named_leaves(params)[0] if target_of(n) in calibration.RECORDED]
  assert sorted(calib.kernels) == sorted(kernels) and len(kernels) == 2 * 6 + 1
  assert (calib.sequences, calib.tokens, calib.mode) == (6, 96, "fast")
  for n in kernels:
    x = np.concatenate([np.asarray(b["/".join(n[:-1])], np.float64) for b in batches])
    # float32 sums of 96 products (and another jitted forward pass) against float64.
    np.testing.assert_allclose(
      calib.kernels[n].h_KxK, 2 / len(x) * x.T @ x, rtol=1e-5, atol=1e-6, err_msg=str(n)
    )
    np.testing.assert_allclose(
      calib.kernels[n].mean_abs_K, np.abs(x).mean(0), rtol=1e-5, atol=1e-7, err_msg=str(n)
    )
  # q, k and v read one input.
  layer = ("layer_1", "attn")
  np.testing.assert_array_equal(
    calib.kernels[layer + ("query", "kernel")].h_KxK,
    calib.kernels[layer + ("value", "kernel")].h_KxK,
  )


@functools.partial(jax.jit, static_argnums=0)
def _head_inputs(model, params, tokens_BxL):
  """The tied head's input (nn.Embed.attend's argument) of one forward pass, (tokens, D)."""
  inputs = []

  def capture(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Embed) and context.method_name == "attend":
      inputs.append(args[0].reshape(-1, args[0].shape[-1]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    model.apply(params, tokens_BxL)
  return inputs[0]


def test_tied_embedding_statistics_are_the_heads_inputs():
  model, params, tokens = _setup(ONE_BLOCK)
  calib = calibration.calibrate(model, params, tokens)
  assert calibration.EMBED in calib.kernels and len(calib.kernels) == 6 + 1
  x = np.concatenate([np.asarray(_head_inputs(model, params, t), np.float64) for t in tokens])
  stats = calib.kernels[calibration.EMBED]
  np.testing.assert_allclose(stats.h_KxK, 2 / len(x) * x.T @ x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.mean_abs_K, np.abs(x).mean(0), rtol=1e-5, atol=1e-7)
  # The head kernel GPTQ and AWQ quantize is E^T; its blocks are E's (B != -1): with
  # identity statistics GPTQ of the embedding is RTN of it bit for bit.
  e = params["params"]["embed"]["embedding"].value
  assert calibration.kernel_view(calibration.EMBED, e).shape == (16, 128)
  identity = calibration.Calibration(
    {
      n: calibration.KernelStats(jnp.eye(s.h_KxK.shape[0]), jnp.ones(s.h_KxK.shape[0]))
      for n, s in calib.kernels.items()
    },
    6,
    96,
    "fast",
  )
  for blocksize in (64, 0):
    spec = QuantSpec(bits=3, dtype="nf", targets="embed", blocksize=blocksize)
    _equal_trees(
      methods.quantize_params(params, spec, "gptq", identity, preset=ONE_BLOCK),
      methods.quantize_params(params, spec, "rtn"),
    )


def _equal_trees(a, b):
  for n, x, y in zip(named_leaves(a)[0], named_leaves(a)[1], named_leaves(b)[1]):
    np.testing.assert_array_equal(np.asarray(x.value), np.asarray(y.value), err_msg=str(n))


def _options(method):
  return dict(preset=ONE_BLOCK) if method == "awq" else {}


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_sequential_equals_fast_on_one_block(method):
  model, params, tokens = _setup(ONE_BLOCK)
  fast = calibration.calibrate(model, params, tokens)
  got, seq = methods.quantize_sequential(model, params, SPEC, method, tokens)
  assert seq.kernels.keys() == fast.kernels.keys() and seq.mode == "sequential"
  # Block 0's inputs do not depend on quantization (the tied head's, after it, do).
  for n, stats in ((n, s) for n, s in fast.kernels.items() if n[0] == "layer_0"):
    np.testing.assert_array_equal(seq.kernels[n].h_KxK, stats.h_KxK, err_msg=str(n))
    np.testing.assert_array_equal(seq.kernels[n].mean_abs_K, stats.mean_abs_K)
  _equal_trees(got, methods.quantize_params(params, SPEC, method, fast, **_options(method)))


def _with(params, source, prefix):
  """params with the leaves whose names start with `prefix` taken from `source`."""
  names, leaves, treedef = named_leaves(params)
  other = dict(zip(names, named_leaves(source)[1]))
  return jax.tree_util.tree_unflatten(
    treedef, [other[n] if n[: len(prefix)] == prefix else leaf for n, leaf in zip(names, leaves)]
  )


def test_sequential_blocks_see_the_quantized_prefix():
  model, params, tokens = _setup(TWO_BLOCKS)
  fast = calibration.calibrate(model, params, tokens)
  compiled = calibration._sums._cache_size()
  got, seq = methods.quantize_sequential(model, params, SPEC, "gptq", tokens)
  assert calibration._sums._cache_size() == compiled  # every stage reuses the fast pass
  # Each kernel is GPTQ of its float weights with the statistics its stage recorded.
  _equal_trees(got, methods.quantize_params(params, SPEC, "gptq", seq))

  def h(calib, *n):
    return np.asarray(calib.kernels[n].h_KxK)

  wi = ("mlp", "wi", "kernel")
  np.testing.assert_array_equal(h(seq, "layer_0", *wi), h(fast, "layer_0", *wi))
  after_0 = calibration.calibrate(model, _with(params, got, ("layer_0",)), tokens)
  np.testing.assert_array_equal(h(seq, "layer_1", *wi), h(after_0, "layer_1", *wi))
  assert not np.array_equal(h(seq, "layer_1", *wi), h(fast, "layer_1", *wi))
  float_head = _with(got, params, ("head",))
  np.testing.assert_array_equal(
    h(seq, "head", "kernel"), h(calibration.calibrate(model, float_head, tokens), "head", "kernel")
  )


_COMPILES = [0]


def _count_compile(event, _, **__):
  if event == "/jax/core/compile/backend_compile_duration":
    _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)


def _refused(match, f, *args, **kwargs):
  before = _COMPILES[0]
  with pytest.raises(ValueError, match=match):
    f(*args, **kwargs)
  assert _COMPILES[0] == before, "compiled before refusing"


def test_bad_tokens_and_models_are_refused_before_compiling():
  model, params, _ = _setup(ONE_BLOCK)
  for shape in ((0, 16), (1, 0, 16), (2, 3, 0)):
    _refused("sequences", calibration.calibrate, model, params, np.zeros(shape, np.int32))
    _refused(
      "sequences",
      methods.quantize_sequential,
      model,
      params,
      SPEC,
      "gptq",
      np.zeros(shape, np.int32),
    )
  _refused("int tokens", calibration.calibrate, model, params, np.zeros((2, 8), np.float32))
  _refused("int tokens", calibration.calibrate, model, params, np.zeros((2,), np.int32))
  _refused(
    "scan_layers",
    calibration.calibrate,
    model.clone(scan_layers=True),
    params,
    np.zeros((2, 8), np.int32),
  )
  _refused(
    "dot_general_cls",
    calibration.calibrate,
    model.clone(dot_general_cls=calibration.RecordingDotGeneral),
    params,
    np.zeros((2, 8), np.int32),
  )


def test_bad_method_arguments_are_refused_before_compiling():
  model, params, tokens = _setup(ONE_BLOCK)
  calib = calibration.calibrate(model, params, tokens)
  empty = calibration.Calibration(calib.kernels, sequences=0, tokens=0, mode="fast")
  partial = calibration.Calibration(
    {n: s for n, s in calib.kernels.items() if n[-2] != "wo"}, 6, 96, "fast"
  )
  wi = ("layer_0", "mlp", "wi", "kernel")
  wrong = calibration.Calibration(
    {**calib.kernels, wi: calib.kernels[("layer_0", "mlp", "wo", "kernel")]}, 6, 96, "fast"
  )
  _refused(
    r"method='hqq' is unknown; allowed: \['rtn', 'gptq', 'awq'\]",
    methods.quantize_params,
    params,
    SPEC,
    "hqq",
    calib,
  )
  _refused(
    "the preset is needed",
    methods.quantize_params,
    params,
    QuantSpec(bits=4, targets="attn,embed"),
    "gptq",
    calib,
  )
  model2, params2, tokens2 = _setup(TWO_BLOCKS)
  _refused(
    "untied: a lookup",
    methods.quantize_params,
    params2,
    QuantSpec(bits=4, targets="attn,embed"),
    "gptq",
    calibration.calibrate(model2, params2, tokens2),
    preset=TWO_BLOCKS,
  )
  _refused(
    "blocksize=-1 with method='awq' and target 'embed'",
    methods.quantize_params,
    params,
    QuantSpec(bits=4, targets="attn,embed", blocksize=-1),
    "awq",
    calib,
    preset=ONE_BLOCK,
  )
  _refused(
    "method='awq' with act_bits=8: not defined",
    methods.quantize_params,
    params,
    QuantSpec(bits=4, act_bits=8),
    "awq",
    calib,
    preset=ONE_BLOCK,
  )
  for bad in (None, empty):
    _refused(
      "at least one calibration sequence", methods.quantize_params, params, SPEC, "gptq", bad
    )
  _refused(
    "layer_0/mlp/wo/kernel", methods.quantize_params, params, SPEC, "awq", partial, preset=ONE_BLOCK
  )
  _refused(r"allowed: \(16, 16\), \(16,\)", methods.quantize_params, params, SPEC, "gptq", wrong)
  _refused("percdamp", methods.quantize_params, params, SPEC, "gptq", calib, percdamp=0.0)
  _refused("takes no calibration", methods.quantize_sequential, model, params, SPEC, "rtn", tokens)

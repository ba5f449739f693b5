"""The AQT path (kbit_jax/quant/aqt.py) against the pure-jnp reference, and its PTQ/QAT modes.

Tolerances: the data-free codebooks (float, dynamic, nf) reproduce the reference bit for
bit; int goes through AQT's IntSymmetric, which dequantizes j * (s / qb) where the
reference computes (j / qb) * s, and quantile's codebook (jnp.quantile) and the double-
quantized constants are computed in another XLA program, so weights may differ in the
last float32 bit.
`ATOL` / `RTOL` admit that rounding carried through the model, while one mismatched code
moves a weight by >= 1/127 of its block's absmax and the logits by ~1e-3: far outside.
CONVERT -> SERVE must equal jitted TRAIN bit for bit: both dequantize the same QTensor.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from kbit_jax.model.presets import PRESETS, Preset
from kbit_jax.model.transformer import Transformer
from kbit_jax.quant import aqt, bits, reference
from kbit_jax.quant.spec import QuantSpec

# AQT's aqt_dot_general calls jnp.promote_types on arrays (deprecated in jax 0.10).
pytestmark = pytest.mark.filterwarnings(
  "ignore:Implicit conversion of an array to a dtype:DeprecationWarning"
)

ATOL, RTOL = 1e-6, 1e-5
P = PRESETS["s0"]  # 1 layer, d_model 16, d_ff 64: kernels of 256 and 1024 values
_float_apply = jax.jit(Transformer(P).apply)
_fake_quant = jax.jit(reference.fake_quant_params, static_argnums=1)  # eager is slower


def _init(p, tokens):
  return jax.jit(lambda t: nn.meta.unbox(Transformer(p).init(jax.random.PRNGKey(0), t)))(tokens)[
    "params"
  ]


@pytest.fixture(scope="module")
def setup():
  tokens_BxL = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, P.vocab_size)
  params = _init(P, tokens_BxL)
  return params, tokens_BxL


def _train_logits(params, tokens, spec, layout="contraction"):
  model = Transformer(P, dot_general_cls=aqt.make_dot_general_cls(spec, layout=layout))
  return jax.jit(model.apply)({"params": params}, tokens)


def _reference_logits(params, tokens, spec):
  return _float_apply({"params": _fake_quant(params, spec)}, tokens)


# Every data type at k = 4 (B = 64) and a second k each; B = 512 pads (one block per
# kernel), -1 / 0 are per channel / per tensor; targets="mlp" leaves attention float.
EQUALITY_SPECS = [
  dict(dtype=d, bits=4, blocksize=64)
  for d in ("int", "int_centered", "float", "dynamic", "nf", "quantile")
] + [
  dict(dtype="int", bits=8, blocksize=-1),
  dict(dtype="int_centered", bits=3, blocksize=0),
  dict(dtype="float", bits=3, blocksize=512),
  dict(dtype="dynamic", bits=6, blocksize=32, targets="mlp"),
  dict(dtype="nf", bits=3, blocksize=128, double_quant=True),
  dict(dtype="quantile", bits=8, blocksize=0),
]


@pytest.mark.parametrize("kw", EQUALITY_SPECS, ids=lambda kw: "-".join(map(str, kw.values())))
def test_train_forward_equals_reference(setup, kw):
  params, tokens = setup
  spec = QuantSpec(**kw)
  ours, ref = _train_logits(params, tokens, spec), _reference_logits(params, tokens, spec)
  np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)
  if spec.dtype in ("float", "dynamic", "nf") and not spec.double_quant:
    np.testing.assert_array_equal(ours, ref)
  assert np.abs(ours - _float_apply({"params": params}, tokens)).max() > 1e-4


@pytest.mark.parametrize(
  "kw",
  [
    dict(dtype="int", bits=4, blocksize=64),
    dict(dtype="int_centered", bits=3, blocksize=0),
    dict(dtype="nf", bits=4, blocksize=-1, double_quant=True),
    dict(dtype="quantile", bits=8, blocksize=512),
  ],
  ids=lambda kw: "-".join(map(str, kw.values())),
)
def test_convert_serve_equals_train(setup, kw):
  params, tokens = setup
  spec = QuantSpec(**kw)
  qparams = aqt.convert(params, P, spec)
  np.testing.assert_array_equal(
    aqt.serve_apply(qparams, tokens, P, spec), _train_logits(params, tokens, spec)
  )
  # Dequantize-once (the study's PTQ eval) gives the reference's kernels.
  ours = traverse_util.flatten_dict(aqt.dequantize_params(qparams, P, spec))
  ref = traverse_util.flatten_dict(_fake_quant(params, spec))
  assert ours.keys() == ref.keys()
  for name in ref:
    np.testing.assert_allclose(ours[name], ref[name], rtol=1e-6, atol=1e-9, err_msg=str(name))


def test_converted_storage_is_packed(setup):
  params, _ = setup
  for k, packed_per_code in ((4, 0.5), (8, 1.0), (3, 0.5)):
    spec = QuantSpec(dtype="int", bits=k, blocksize=64)
    qparams = aqt.convert(params, P, spec)
    wi = qparams["aqt"]["layer_0"]["mlp"]["wi"]["KbitDotGeneral_0"]
    assert wi["codes"].dtype == jnp.uint8 and wi["scale"].dtype == jnp.float16
    assert wi["codes"].size == 16 * 64 * packed_per_code
    assert wi["scale"].size == 16 * 64 // 64
    assert "kernel" not in qparams["params"]["layer_0"]["mlp"]["wi"]
    measured = aqt.stored_bytes(qparams)["quantized"]
    report = bits.bits_report({"params": params}, spec)
    computed = sum(r["bits"] for r in report["rows"] if r["quantized"])
    container_bits = 4 if k <= 4 else 8  # k = 3 codes fill a nibble
    assert measured * 8 == computed * (container_bits + 0.25) / (k + 0.25)
  dq = aqt.convert(params, P, QuantSpec(dtype="nf", bits=4, double_quant=True))
  assert dq["aqt"]["layer_0"]["attn"]["out"]["KbitDotGeneral_0"]["scale"].dtype == jnp.float32
  qt = aqt.convert(params, P, QuantSpec(dtype="quantile", bits=3))
  assert qt["aqt"]["layer_0"]["attn"]["out"]["KbitDotGeneral_0"]["codebook"].shape == (8,)


def _loss(model, params, tokens):
  logits = model.apply({"params": params}, tokens)
  return -jnp.mean(
    jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], axis=-1)
  )


def test_qat_gradients_are_straight_through(setup):
  params, tokens = setup
  spec = QuantSpec(dtype="nf", bits=4, blocksize=64, mode="qat")
  model = Transformer(P, dot_general_cls=aqt.make_dot_general_cls(spec))
  grads = jax.jit(jax.grad(lambda p: _loss(model, p, tokens)))(params)
  # STE: d loss / d w = d loss / d w_q, evaluated at the fake-quantized weights.
  ref = jax.jit(jax.grad(lambda p: _loss(Transformer(P), p, tokens)))(_fake_quant(params, spec))
  ref = traverse_util.flatten_dict(ref)
  for name, g in traverse_util.flatten_dict(grads).items():
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, name
    np.testing.assert_allclose(g, ref[name], rtol=1e-4, atol=1e-7, err_msg=str(name))


def _int8_per_token(x):
  """AQT's default input quantizer, written out: per-token absmax scale s = max|x| / 127.5
  (IntSymmetric with preserve_zero and without preserve_max_val: the edge of the last
  bucket is 2^7 - 0.5), x / s clipped to +-127 and rounded half to even, times s."""
  scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 127.5
  return jnp.round(jnp.clip(x * jax.lax.reciprocal(scale), -127.0, 127.0)) * scale


def _act_quantized_logits(params, tokens):
  """The float net with every attn/mlp matmul input through `_int8_per_token`."""

  def quantize_inputs(next_fun, args, kwargs, context):
    path = context.module.path
    if isinstance(context.module, nn.Dense) and ("attn" in path or "mlp" in path):
      args = (_int8_per_token(args[0]), *args[1:])
    return next_fun(*args, **kwargs)

  def apply(p, t):
    with nn.intercept_methods(quantize_inputs):
      return Transformer(P).apply({"params": p}, t)

  return jax.jit(apply)(params, tokens)


def test_weight_and_activation_quantization(setup):
  params, tokens = setup
  w4 = QuantSpec(dtype="int", bits=4, blocksize=64)
  w4a8 = QuantSpec(dtype="int", bits=4, blocksize=64, act_bits=8, mode="qat")
  a8 = QuantSpec(act_bits=8)
  # Inputs: AQT's a8 equals the quantizer written out above.
  np.testing.assert_allclose(
    _train_logits(params, tokens, a8), _act_quantized_logits(params, tokens), atol=ATOL, rtol=RTOL
  )
  # Weights and inputs: AQT's own 4-bit weights (converted, dequantized once) under the a8
  # inputs. Not the reference's weights: int weights differ from them in the last float32
  # bit (module docstring), which a per-token input scale can turn into another input code.
  logits = _train_logits(params, tokens, w4a8)
  w4_params = aqt.dequantize_params(aqt.convert(params, P, w4), P, w4)
  np.testing.assert_allclose(logits, _train_logits(w4_params, tokens, a8), atol=ATOL, rtol=RTOL)
  model = Transformer(P, dot_general_cls=aqt.make_dot_general_cls(w4a8))
  grads = jax.jit(jax.grad(lambda p: _loss(model, p, tokens)))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  qparams = aqt.convert(params, P, w4a8)
  np.testing.assert_array_equal(aqt.serve_apply(qparams, tokens, P, w4a8), logits)


def test_untied_head_target():
  p = Preset(
    1,
    16,
    2,
    64,
    vocab_size=256,
    max_len=32,
    positions="rotary",
    tie_embeddings=False,
    rotary_pct=0.25,
  )
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, p.vocab_size)
  params = _init(p, tokens)
  spec = QuantSpec(dtype="float", bits=4, blocksize=128, targets="attn,mlp,head")
  ours = jax.jit(Transformer(p, dot_general_cls=aqt.make_dot_general_cls(spec)).apply)(
    {"params": params}, tokens
  )
  ref = jax.jit(Transformer(p).apply)({"params": _fake_quant(params, spec)}, tokens)
  np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)
  assert "head" not in aqt.convert(params, p, spec)["params"]


def test_unquantized_and_unsupported_specs():
  assert aqt.make_dot_general_cls(QuantSpec()) is None
  with pytest.raises(ValueError, match="outlier_share"):
    aqt.make_dot_general_cls(QuantSpec(bits=4, outlier_share=0.01))
  with pytest.raises(ValueError, match="embed"):
    aqt.make_dot_general_cls(QuantSpec(bits=4, targets="mlp,embed"))
  with pytest.raises(ValueError, match="layout"):
    aqt.make_dot_general_cls(QuantSpec(bits=4), layout="rows")

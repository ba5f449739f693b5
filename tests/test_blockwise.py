"""Blockwise absmax fake quant, outlier rows and the whole-tree reference path."""

import functools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kbit_jax.model.presets import PRESETS
from kbit_jax.model.transformer import Transformer
from kbit_jax.quant import blockwise, codebooks, outliers, reference
from kbit_jax.quant.spec import QuantSpec, named_leaves, target_of

KS = list(codebooks.BITS)
# Types whose codebook holds both -1 and +1: a block's absmax element keeps its +-1 code,
# the re-derived float16 constant is the same, so fake quant is exactly idempotent.
SYMMETRIC = ("int", "float", "nf")
# dynamic has +1 but not -1 (a negative absmax lands on -0.99.., the next pass derives a
# smaller constant): idempotent given the stored constants, tested as such.
FREE = SYMMETRIC + ("dynamic",)
CODEBOOKS = {(d, k): codebooks.codebook(d, k) for d in FREE for k in KS}
SHAPE = (24, 40)  # 960 values: 15 blocks of 64, 8 of 128 (last one padded)


@functools.partial(jax.jit, static_argnums=2)
def _fq(w, codebook_C, blocksize):
  return blockwise.fake_quant(w, codebook_C, blocksize)


@functools.partial(jax.jit, static_argnums=2)
def _q(w, codebook_C, blocksize):
  return blockwise.quantize(w, codebook_C, blocksize)


# Nonzero values at least float16's smallest normal (2^-14), so every block's constant is a
# normal float16: a block of only tinier values (hypothesis found 960 x 2.637e-6) gets a
# subnormal constant, too coarse for idempotence (kbit_jax/quant/blockwise.py; the error
# bound, tested below on the same blocks, holds either way).
FP16_TINY = float(np.finfo(np.float16).tiny)
weights = hnp.arrays(
  np.float32, SHAPE, elements=st.floats(-4, 4, width=32, allow_subnormal=False)
).map(lambda w: np.where(np.abs(w) < FP16_TINY, 0, w))


def _cell_radius(codebook, idx):
  """Largest distance from code idx to a point of its cell (cells clipped to [-1, 1])."""
  mid = (codebook[:-1] + codebook[1:]) / 2
  lower = np.concatenate([[-1.0], mid])[idx]
  upper = np.concatenate([mid, [1.0]])[idx]
  return np.maximum(codebook[idx] - lower, upper - codebook[idx])


@functools.partial(jax.jit, static_argnums=3)
def _requantize(y, scales, codebook_C, blocksize):
  """Codes of y under fixed stored constants."""
  x_NxB = (
    blockwise.to_blocks(y, blocksize)
    / jnp.where(scales > 0, scales.astype(jnp.float32), 1)[:, None]
  )
  return blockwise.from_blocks(blockwise.nearest_code(x_NxB, codebook_C), y.shape, blocksize)


def test_a_block_of_subnormal_constant_still_keeps_the_error_bound():
  """The case `weights` leaves out, kept: 2.637e-6 everywhere gets the float16 constant
  45 x 2^-24, a step of 1/45 against int6's half gap of 1/62, so the maximum takes code
  30/31, not 1; the error bound holds, and a second pass derives 44 x 2^-24 and moves
  every value."""
  w = np.full(SHAPE, 2.6372275e-06, np.float32)
  w[0, :5] = 0.0
  cb = codebooks.codebook("int", 6)
  cb_C = codebooks.padded(cb)
  codes, scales = _q(w, cb_C, 64)
  s = float(np.asarray(scales)[0])
  assert s == 45 * 2.0**-24  # the next float16 up from 2.637e-6: subnormal
  assert set(np.asarray(codes)[w > 0].tolist()) == {len(cb) - 2}  # code 30/31
  y = np.asarray(_fq(w, cb_C, 64))
  assert np.all(np.abs(y - w) <= _cell_radius(cb, np.asarray(codes)) * s + 1e-6 * s)
  _, scales_again = _q(y, cb_C, 64)
  assert float(np.asarray(scales_again)[0]) == 44 * 2.0**-24
  again = np.asarray(_fq(y, cb_C, 64))
  assert set(again[w > 0].tolist()) == {44 * 2.0**-24} and not np.any(again[w > 0] == y[w > 0])


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(w=weights, blocksize=st.sampled_from([64, 128, 0, -1]))
def test_fake_quant_properties_every_type_and_k(w, blocksize):
  w[0, :5] = 0.0
  for (dtype, k), cb in CODEBOOKS.items():
    cb_C = codebooks.padded(cb)
    codes, scales = _q(w, cb_C, blocksize)
    y = np.asarray(_fq(w, cb_C, blocksize))
    codes = np.asarray(codes)
    assert codes.dtype == np.uint8 and codes.max() < len(cb), (dtype, k)
    assert scales.dtype == jnp.float16
    # Error per value <= the radius of its code's cell x the stored constant. The stored
    # constant is absmax rounded *up* to float16, so nothing is clipped and no term for
    # the 16-bit rounding is needed; the slack covers float32 division/multiplication.
    s = np.asarray(
      blockwise.from_blocks(
        jnp.broadcast_to(
          scales.astype(jnp.float32)[:, None], blockwise.to_blocks(jnp.asarray(w), blocksize).shape
        ),
        w.shape,
        blocksize,
      )
    )
    bound = _cell_radius(cb, codes) * s + 1e-6 * s
    assert np.all(np.abs(y - w) <= bound), (dtype, k)
    assert np.all(y[w == 0] == 0), (dtype, k)
    if dtype in SYMMETRIC:
      np.testing.assert_array_equal(np.asarray(_fq(y, cb_C, blocksize)), y, err_msg=dtype)
    else:
      np.testing.assert_array_equal(
        np.asarray(_requantize(y, scales, cb_C, blocksize)), codes, err_msg=dtype
      )


@functools.partial(jax.jit, static_argnums=(1, 2))
def _data_and_centered(w, k, blocksize):
  """quantile: (codebook, codes, scales, fake quant); int_centered: (scale, fake quant)."""
  quantile = QuantSpec(bits=k, dtype="quantile", blocksize=blocksize)
  codebook_C = codebooks.padded(
    codebooks.quantile_codebook(blockwise.normalized(w, blocksize).reshape(-1), k)
  )
  codes, scales = blockwise.quantize(w, codebook_C, blocksize)
  y_quantile = reference.fake_quant_tensor(w, quantile)
  x_NxB = blockwise.to_blocks(w, blocksize)
  valid_NxB = blockwise.to_blocks(jnp.ones(w.shape, bool), blocksize)
  mean_N = (x_NxB.sum(-1) / valid_NxB.sum(-1)).astype(jnp.float16).astype(jnp.float32)
  r_NxB = jnp.where(valid_NxB, x_NxB - mean_N[:, None], 0)
  scale_N = blockwise.scale_to_16bit(jnp.abs(r_NxB).max(-1)).astype(jnp.float32)
  y_centered = reference.fake_quant_tensor(
    w, QuantSpec(bits=k, dtype="int_centered", blocksize=blocksize)
  )

  def per_value(v_N):
    return blockwise.from_blocks(jnp.broadcast_to(v_N[:, None], x_NxB.shape), w.shape, blocksize)

  return (
    codebook_C,
    codes,
    per_value(scales.astype(jnp.float32)),
    scales,
    y_quantile,
    per_value(scale_N),
    y_centered,
  )


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(w=weights, k=st.sampled_from(KS))
def test_quantile_and_centered_error_bounds(w, k):
  codebook_C, codes, s, scales, y, s_centered, y_centered = map(
    np.asarray, _data_and_centered(w, k, 64)
  )
  # quantile: its data codebook obeys the same cell-radius bound as any codebook, and
  # requantizing with the stored codebook and constants gives the same code values
  # (indices may differ where neighbouring quantiles coincide).
  cb = codebook_C[: 2**k]
  assert np.all(np.abs(y - w) <= _cell_radius(cb, codes) * s + 1e-6 * s)
  again = _requantize(jnp.asarray(y), jnp.asarray(scales), jnp.asarray(codebook_C), 64)
  np.testing.assert_array_equal(codebook_C[np.asarray(again)], codebook_C[codes])
  # int_centered: w - mean16 is within half an int step of its own (residual) constant.
  half_step = 0.5 / (2 ** (k - 1) - 1)
  assert np.all(np.abs(y_centered - w) <= half_step * s_centered + 1e-6 * (s_centered + np.abs(w)))


def test_one_compile_serves_every_type_and_k():
  f = jax.jit(blockwise.fake_quant, static_argnums=2)
  w = jax.random.normal(jax.random.PRNGKey(0), SHAPE)
  for cb in CODEBOOKS.values():
    f(w, codebooks.padded(cb), 64)
  assert f._cache_size() == 1


def _gaussian(shape=(64, 128), seed=0):
  return np.array(jax.random.normal(jax.random.PRNGKey(seed), shape))


@pytest.mark.parametrize("dtype", FREE + ("quantile", "int_centered"))
def test_mean_error_falls_with_k(dtype):
  w = _gaussian()
  errors = []
  for k in KS:
    y = reference.fake_quant_tensor(jnp.asarray(w), QuantSpec(bits=k, dtype=dtype))
    errors.append(float(np.mean(np.abs(np.asarray(y) - w))))
  assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_blocksize_equal_to_size_is_per_tensor():
  w = _gaussian((16, 16))
  cb_C = codebooks.padded(codebooks.codebook("nf", 4))
  np.testing.assert_array_equal(_fq(w, cb_C, 256), _fq(w, cb_C, 0))


def test_per_channel_is_per_column():
  w = _gaussian((48, 12))
  w[:, 3] *= 100  # one loud channel must not coarsen the others
  cb_C = codebooks.padded(codebooks.codebook("int", 4))
  y = np.asarray(_fq(w, cb_C, -1))
  for j in range(w.shape[1]):
    np.testing.assert_array_equal(y[:, j], np.asarray(_fq(w[:, j], cb_C, 0)))
  _, scales = _q(w, cb_C, -1)
  assert scales.shape == (12,)
  assert np.all(np.asarray(scales, np.float32) >= np.abs(w).max(0))


def test_last_block_padding():
  w = _gaussian((5, 27))  # 135 values: two full blocks of 64 and 7 values
  cb_C = codebooks.padded(codebooks.codebook("float", 5))
  y = np.asarray(_fq(w, cb_C, 64)).reshape(-1)
  flat = w.reshape(-1)
  np.testing.assert_array_equal(y[128:], np.asarray(_fq(flat[128:], cb_C, 0)))
  assert blockwise.num_blocks(w.shape, 64) == 3


def test_scale_is_next_float16_up():
  absmax = jnp.asarray(np.abs(_gaussian((1000,))) * 10 + 1e-3, jnp.float32)
  s = blockwise.scale_to_16bit(absmax)
  assert s.dtype == jnp.float16
  assert bool(jnp.all(s.astype(jnp.float32) >= absmax))
  below = jnp.nextafter(s, jnp.float16(0)).astype(jnp.float32)
  assert bool(jnp.all(below < absmax))
  assert float(blockwise.scale_to_16bit(jnp.float32(0))) == 0.0


def test_quantize_dequantize_roundtrip_and_dtype():
  w = jnp.asarray(_gaussian((32, 64)), jnp.bfloat16)
  cb_C = codebooks.padded(codebooks.codebook("nf", 4))
  codes, scales = blockwise.quantize(w, cb_C, 128)
  y = blockwise.dequantize(codes, scales, cb_C, w.shape, 128)
  assert codes.shape == w.shape and scales.shape == (16,)
  np.testing.assert_array_equal(y.astype(jnp.bfloat16), blockwise.fake_quant(w, cb_C, 128))
  assert blockwise.fake_quant(w, cb_C, 128).dtype == jnp.bfloat16


def test_double_quant_close_to_16bit_constants():
  w = _gaussian((256, 256))
  absmax = np.abs(blockwise.to_blocks(jnp.asarray(w), 64)).max(-1)
  dq = np.asarray(blockwise.double_quantize(jnp.asarray(absmax)))
  assert np.max(np.abs(dq - absmax) / absmax) < 0.02
  spec = QuantSpec(bits=4, dtype="nf")
  plain = np.abs(np.asarray(reference.fake_quant_tensor(jnp.asarray(w), spec)) - w).mean()
  double = np.abs(
    np.asarray(
      reference.fake_quant_tensor(jnp.asarray(w), QuantSpec(bits=4, dtype="nf", double_quant=True))
    )
    - w
  ).mean()
  assert double < plain * 1.02


def test_centering_helps_offset_blocks():
  w = _gaussian() + 3.0
  err = {
    d: np.abs(
      np.asarray(reference.fake_quant_tensor(jnp.asarray(w), QuantSpec(bits=4, dtype=d))) - w
    ).mean()
    for d in ("int", "int_centered")
  }
  assert err["int_centered"] < err["int"] / 2


def test_quantile_codebook_per_block():
  w = _gaussian()
  x_NxB = blockwise.to_blocks(blockwise.normalized(jnp.asarray(w), 64), 64)
  cb_NxC = codebooks.padded(codebooks.quantile_codebook(x_NxB, 3))
  y = np.asarray(blockwise.fake_quant(jnp.asarray(w), cb_NxC, 64))
  per_tensor = np.asarray(
    reference.fake_quant_tensor(jnp.asarray(w), QuantSpec(bits=3, dtype="quantile"))
  )
  assert np.abs(y - w).mean() < np.abs(per_tensor - w).mean()


@functools.lru_cache(maxsize=None)
def _params(preset="s0"):
  model = Transformer(PRESETS[preset])
  return model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))


def _leaf(tree, *names):
  for n in names:
    tree = tree[n]
  return np.asarray(tree.unbox() if hasattr(tree, "unbox") else tree)


def test_proxy_sources():
  def src(*n):
    return outliers.proxy_source(n, 2)

  assert src("layer_1", "mlp", "wo", "kernel") == ("layer_1", "mlp", "wi", "kernel")
  assert src("layer_1", "attn", "out", "kernel") == ("layer_1", "attn", "value", "kernel")
  assert src("layer_1", "mlp", "wi", "kernel") == ("layer_1", "attn", "out", "kernel")
  assert src("layer_1", "attn", "key", "kernel") == ("layer_0", "mlp", "wo", "kernel")
  assert src("layer_0", "attn", "query", "kernel") == ("embed", "embedding")
  assert src("head", "kernel") == ("layer_1", "mlp", "wo", "kernel")
  assert src("embed", "embedding") is None and src("layer_0", "mlp", "wo", "bias") is None


def test_outlier_rows_are_exact_and_chosen_by_proxy_std():
  params = _params()
  spec = QuantSpec(bits=3, dtype="int", outlier_share=0.05)
  out = jax.jit(reference.fake_quant_params, static_argnums=1)(params, spec)
  w = _leaf(params, "params", "layer_0", "mlp", "wo", "kernel")  # (F, D) = (64, 16)
  y = _leaf(out, "params", "layer_0", "mlp", "wo", "kernel")
  std = _leaf(params, "params", "layer_0", "mlp", "wi", "kernel").std(0)
  top = np.argsort(std)[::-1][: outliers.num_outliers(64, 0.05)]
  exact = np.all(y == w, axis=1)
  assert exact.sum() == len(top) == 3 and exact[top].all()
  # The kept rows do not set any block's absmax: quantizing the rest alone gives the same.
  rest = w.copy()
  rest[top] = 0
  alone = np.asarray(reference.fake_quant_tensor(jnp.asarray(rest), spec, kernel=True))
  np.testing.assert_array_equal(np.delete(y, top, 0), np.delete(alone, top, 0))


def test_fake_quant_params_touches_only_targets():
  params = _params()
  for spec in (
    QuantSpec(bits=4, dtype="quantile", outlier_share=0.02),
    QuantSpec(bits=4, dtype="nf", double_quant=True, targets="mlp,embed"),
  ):
    out = reference.fake_quant_params(params, spec)
    names, before, _ = named_leaves(params)
    _, after, _ = named_leaves(out)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    for n, a, b in zip(names, before, after):
      a, b = np.asarray(a.unbox()), np.asarray(b.unbox())
      changed = not np.array_equal(a, b)
      assert changed == (target_of(n) in spec.targets), n
  assert reference.fake_quant_params(params, QuantSpec(bits=16)) is params


def test_kernel_blocks_run_along_inputs_as_in_the_study():
  """The study flattened PyTorch's (out, in) weights: a block is B inputs of one output."""
  w = jax.random.normal(jax.random.key(3), (128, 8))  # (in, out)
  spec = QuantSpec(bits=3, dtype="int", blocksize=64)
  got = reference.fake_quant_tensor(w, spec, kernel=True)
  cb = codebooks.padded(codebooks.codebook("int", 3))
  np.testing.assert_array_equal(got, blockwise.fake_quant(w.T, cb, 64).T)
  # Each column's two blocks are scaled by their own absmax: the top input of each keeps it.
  for col in range(8):
    for half in (slice(0, 64), slice(64, 128)):
      i = int(jnp.argmax(jnp.abs(w[half, col])))
      assert abs(float(got[half, col][i]) - float(w[half, col][i])) < 1e-3 * abs(
        float(w[half, col][i])
      )


@pytest.mark.parametrize("k", [3, 8])
def test_compile_args_serve_every_k_of_a_quantile_layout(k):
  """The grid's quantizer call (grid/evaluator.py) with quantile: one static spec for
  every k (k traced), the same params as the spec itself within 1 ulp (its 257-edge
  codebook fuses differently from the 2^k + 1 edges of quantile_codebook), 2^k codes then
  +inf. Data-free types: compile_args is layout_spec and spec_codebook."""
  params = _params()
  quantize = jax.jit(reference.fake_quant_params, static_argnums=1)
  spec, k5 = (QuantSpec(bits=b, dtype="quantile", outlier_share=0.05) for b in (k, 5))
  layout, codebook, bits = reference.compile_args(spec)
  assert layout == reference.compile_args(k5)[0]
  assert codebook is None and bits == k
  want, got = quantize(params, spec), quantize(params, layout, codebook, bits)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_max_ulp(np.asarray(a), np.asarray(b), maxulp=1)
  x = jnp.asarray(np.random.default_rng(k).uniform(-1, 1, 1000), jnp.float32)
  padded = np.asarray(jax.jit(codebooks.quantile_codebook_padded)(x, np.int32(k)))
  assert np.all(np.isfinite(padded[: 2**k])) and np.all(np.isinf(padded[2**k :]))
  codes = jax.jit(codebooks.quantile_codebook, static_argnums=1)(x, k)
  np.testing.assert_array_max_ulp(np.asarray(codes), padded[: 2**k], 1)
  int_spec = QuantSpec(bits=k, dtype="int")
  layout, codebook, _ = reference.compile_args(int_spec)
  assert layout == reference.layout_spec(int_spec)
  np.testing.assert_array_equal(codebook, reference.spec_codebook(int_spec))

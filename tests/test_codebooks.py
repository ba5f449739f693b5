"""Data types: the codebooks of every dtype x k, against the study's constructions."""

import os
import subprocess
import sys

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from kbit_jax.quant import blockwise, codebooks

FREE_DTYPES = [d for d in codebooks.DTYPES if d not in codebooks.DATA_DTYPES]
KS = list(codebooks.BITS)

# bitsandbytes' hard-coded NF4 table (get_4bit_type('nf4'), the QLoRA data type).
NF4 = [
  -1.0,
  -0.6961928009986877,
  -0.5250730514526367,
  -0.39491748809814453,
  -0.28444138169288635,
  -0.18477343022823334,
  -0.09105003625154495,
  0.0,
  0.07958029955625534,
  0.16093020141124725,
  0.24611230194568634,
  0.33791524171829224,
  0.44070982933044434,
  0.5626170039176941,
  0.7229568362236023,
  1.0,
]


@pytest.mark.parametrize("dtype", FREE_DTYPES)
@pytest.mark.parametrize("k", KS)
def test_codebook_is_sorted_normalised_and_small(dtype, k):
  cb = codebooks.codebook(dtype, k)
  assert cb.dtype == np.float32
  assert len(np.unique(cb)) == len(cb) <= 2**k
  assert np.all(np.diff(cb) > 0)
  assert cb.max() == 1.0 and cb.min() >= -1.0
  assert 0.0 in cb and not np.signbit(cb[cb == 0]).any()
  expected = {
    "int": 2**k - 1,
    "int_centered": 2**k - 1,
    "float": 2**k - 1,
    "dynamic": 2**k,
    "nf": 2**k,
  }[dtype]
  assert len(cb) == expected


@pytest.mark.parametrize("k", KS)
def test_int_is_symmetric_linear_map(k):
  half = 2 ** (k - 1) - 1
  np.testing.assert_allclose(
    codebooks.codebook("int", k), np.arange(-half, half + 1) / half, rtol=1e-7
  )


def test_nf4_matches_qlora():
  np.testing.assert_allclose(codebooks.codebook("nf", 4), NF4, atol=2e-7)


@pytest.mark.parametrize("k", KS)
def test_nf_is_asymmetric_with_both_ends(k):
  cb = codebooks.codebook("nf", k)
  assert (cb > 0).sum() == 2 ** (k - 1) and (cb < 0).sum() == 2 ** (k - 1) - 1
  assert cb.min() == -1.0


def test_float_small_cases_follow_fp8_map():
  # k=3, e=2, no mantissa: powers of two and zero.
  np.testing.assert_array_equal(codebooks.codebook("float", 3), [-1, -0.5, -0.25, 0, 0.25, 0.5, 1])
  # k=4, e=2, p=1: magnitudes {4, 6, 2, 3, 1, 1.5} (normals) and 0.125 (subnormal) / 6.
  magnitudes = np.array([0.125, 1, 1.5, 2, 3, 4, 6]) / 6
  expected = np.concatenate([-magnitudes[::-1], [0], magnitudes]).astype(np.float32)
  np.testing.assert_allclose(codebooks.codebook("float", 4, exponent_bits=2), expected)
  # k=4, e=3 (the study's default): 2^0 .. 2^-6 and zero.
  positive = 2.0 ** -np.arange(7)[::-1]
  np.testing.assert_allclose(
    codebooks.codebook("float", 4), np.concatenate([-positive[::-1], [0], positive])
  )


@pytest.mark.parametrize("k", KS)
def test_float_every_valid_exponent(k):
  for e in codebooks.exponent_bits_range(k):
    cb = codebooks.codebook("float", k, e)
    assert len(cb) <= 2**k - 1 and cb.max() == 1.0
  with pytest.raises(ValueError, match=r"exponent_bits=.*allowed"):
    codebooks.codebook("float", k, k)


def test_study_exponent_bits():
  assert [codebooks.study_exponent_bits(k) for k in KS] == [1, 2, 3, 3, 3, 3, 3]
  np.testing.assert_array_equal(codebooks.codebook("float", 2), codebooks.codebook("int", 2))


def test_dynamic_tree():
  np.testing.assert_allclose(codebooks.codebook("dynamic", 2), [-0.55, 0, 0.55, 1])
  cb8 = codebooks.codebook("dynamic", 8)
  assert len(cb8) == 256 and cb8.max() == 1.0
  np.testing.assert_allclose(cb8.min(), -(0.98593750 + 1) / 2, rtol=1e-6)
  assert np.isclose(cb8[cb8 > 0].min(), 1e-6 * 0.55, rtol=1e-6)  # 10^-(k-2) * mean


@pytest.mark.parametrize(
  "bad, match",
  [
    (dict(dtype="int4", bits=4), "quant.dtype='int4'"),
    (dict(dtype="int", bits=9), "quant.bits=9"),
    (dict(dtype="int", bits=16), "quant.bits=16"),
    (dict(dtype="quantile", bits=4), "quantile_codebook"),
    (dict(dtype="nf", bits=4, exponent_bits=2), "quant.exponent_bits=2"),
  ],
)
def test_codebook_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    codebooks.codebook(**bad)


def test_padded_codes_are_never_chosen():
  cb = codebooks.codebook("int", 3)
  cb_C = codebooks.padded(cb)
  assert cb_C.shape == (codebooks.CODEBOOK_SIZE,) and bool(jnp.isinf(cb_C[len(cb) :]).all())
  x = jnp.linspace(-1, 1, 1001)[None]
  idx = blockwise.nearest_code(x, cb_C)
  assert int(idx.max()) == len(cb) - 1 and int(idx.min()) == 0


@pytest.mark.parametrize("k", KS)
def test_quantile_codebook_of_uniform(k):
  n = 2**k
  x = jnp.linspace(-1, 1, 100_001)
  q = np.asarray(codebooks.quantile_codebook(x, k))
  levels = np.arange(n + 1) / n  # equal-mass bin edges, Q(u) = 2u - 1
  raw = ((2 * levels - 1)[:-1] + (2 * levels - 1)[1:]) / 2  # bin centres
  np.testing.assert_allclose(q, raw / np.abs(raw).max(), atol=1e-4)
  np.testing.assert_allclose(q, -q[::-1], atol=1e-4)  # symmetric data, symmetric codes


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
  x=hnp.arrays(np.float32, 300, elements=st.floats(-1, 1, width=32)), k=st.sampled_from(KS)
)
def test_quantile_codebook_properties(x, k):
  q = np.asarray(codebooks.quantile_codebook(jnp.asarray(x), k))
  assert q.shape == (2**k,) and np.all(np.diff(q) >= 0)
  assert len(np.unique(q)) <= 2**k and np.abs(q).max() <= 1.0


def test_quantile_codebook_is_sorted_whatever_the_compiler_rounds():
  """A block of one repeated value: jnp.nanquantile interpolates its equal order statistics
  as a(1-t) + at, which XLA compiled at -O0 rounds to 0.99999994 beside 1.0, so the codes
  came out unsorted (and blockwise's error bound failed) until quantile_codebook sorted
  them. Run in a fresh process, since XLA_FLAGS are read once."""
  script = (
    "import numpy as np, jax.numpy as jnp\n"
    "from kbit_jax.quant import codebooks\n"
    "q = np.asarray(codebooks.quantile_codebook(jnp.full(300, 0.5887285), 6))\n"
    "below_one = float(np.nextafter(np.float32(1), 0))\n"
    "print(bool(np.all(np.diff(q) >= 0)), sorted(set(q.tolist())) == [below_one, 1.0])\n"
  )
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
  assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]


def test_quantile_codebook_per_block_and_nan_ignored():
  x = np.random.default_rng(0).normal(size=(6, 64)).astype(np.float32)
  q = codebooks.quantile_codebook(x, 3)
  assert q.shape == (6, 8)
  np.testing.assert_allclose(q[2], codebooks.quantile_codebook(x[2], 3), rtol=1e-6)
  with_nan = np.concatenate([x[0], np.full(10, np.nan, np.float32)])
  np.testing.assert_allclose(
    codebooks.quantile_codebook(with_nan, 3), codebooks.quantile_codebook(x[0], 3), rtol=1e-6
  )

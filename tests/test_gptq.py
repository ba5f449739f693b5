"""GPTQ: equal to RTN when H is a multiple of I, better than RTN on correlated inputs, equal
to a plain numpy Algorithm 1, stored on RTN's grid, and its bad inputs."""

import dataclasses
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kbit_jax.model.presets import PRESETS
from kbit_jax.model.transformer import Transformer
from kbit_jax.quant import blockwise, calibration, codebooks, gptq, methods, reference
from kbit_jax.quant.spec import QuantSpec, is_quantized, named_leaves, target_of

K, N = 160, 24  # K % 64 = 32: blocks straddle output units; K > 128: two lazy blocks
BLOCKSIZES = (64, 0, -1)


def _specs(blocksize, ks=(2, 3, 4, 8), quantile_ks=(3, 4)):
  """Every data type (nf also double-quantized) at a few k."""
  for dtype in codebooks.DTYPES:
    for k in quantile_ks if dtype == "quantile" else ks:
      yield QuantSpec(bits=k, dtype=dtype, blocksize=blocksize)
  for k in ks:
    yield QuantSpec(bits=k, dtype="nf", blocksize=blocksize, double_quant=True)


@functools.partial(jax.jit, static_argnums=1)
def _rtn(w, spec, keep, codebook_C):
  """RTN of one kernel as grid.py runs it: jitted, layout spec static, codebook an array."""
  return reference.fake_quant_tensor(w, spec, keep, codebook_C, kernel=True)


def rtn(w, spec, keep=None):
  return np.asarray(_rtn(w, reference.layout_spec(spec), keep, reference.spec_codebook(spec)))


def _weights(seed, shape=(K, N)):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


# Outlier rows in some cases only (each is one more RTN compile): with B = 0 the kernel is
# transposed before blocking, with B = -1 not.
@pytest.mark.parametrize("blocksize, with_outliers", [(64, False), (0, True), (-1, True)])
@hypothesis.settings(max_examples=3, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), c=st.floats(1e-3, 1e3), act_order=st.booleans())
def test_identity_hessian_equals_rtn_exactly(blocksize, with_outliers, seed, c, act_order):
  # H = cI: U is diagonal, no error feedback, so every value is RTN's, bit for bit (but
  # exact ties, `_assert_equal_but_ties`).
  w = _weights(seed)
  keep = None
  if with_outliers:
    keep = jnp.zeros(K, bool).at[jnp.array([3, 70, 150])].set(True)
  h = jnp.float32(c) * jnp.eye(K)
  for spec in _specs(blocksize):
    got = np.asarray(gptq.quantize_kernel(w, h, spec, keep, act_order=act_order))
    _assert_equal_but_ties(got, rtn(w, spec, keep), np.asarray(w), str(spec))


def _assert_equal_but_ties(got, want, w, what):
  """Bit-equal, except a weight that lies on the midpoint between two codes (within
  4 float32 ulps): the two paths compute w / scale under different XLA fusions, 1 ulp
  apart, and such a weight may go to either neighbour (hypothesis found seed 7197: w =
  -0.0747801 = -2.5 steps of 8-bit int's per-tensor scale). Such a value must be one of
  the two neighbours, i.e. w sits at their midpoint; anything else fails."""
  bad = got != want
  mid = (got[bad].astype(np.float64) + want[bad]) / 2
  ulps = np.abs(w[bad] - mid) / np.spacing(np.abs(w[bad]).astype(np.float32))
  assert np.all(ulps <= 4), f"{what}: {bad.sum()} values differ, not at a tie: {ulps.max()} ulps"
  assert bad.sum() <= 3, f"{what}: {bad.sum()} ties in {bad.size} values"


def _correlated_inputs(seed, tokens=512, k=K):
  """x = z A: a random covariance A^T A with strongly correlated features."""
  key_z, key_a = jax.random.split(jax.random.PRNGKey(seed))
  z = np.asarray(jax.random.normal(key_z, (tokens, k)), np.float64)
  a = np.asarray(jax.random.normal(key_a, (k, k)), np.float64) / np.sqrt(k)
  return z @ a


def _output_error(w, w_hat, x):
  return float(np.sum(((np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)).T @ x.T) ** 2))


@functools.partial(jax.jit, static_argnums=2)
def _requantized(w, w_hat, spec, codebook_C):
  """w_hat rounded again onto the grid of w's RTN constants (jitted, as GPTQ computes)."""
  scale_NxK, mean_NxK = gptq.static_constants(w, spec, jnp.zeros(K, bool))
  x_NxK = (w_hat.T - mean_NxK) / jnp.where(scale_NxK > 0, scale_NxK, 1)
  codes_NxK = blockwise.nearest_code(x_NxK, codebook_C)
  return (blockwise.lookup(codes_NxK, codebook_C) * scale_NxK + mean_NxK).T


@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_gptq_beats_rtn_on_correlated_inputs(blocksize):
  w, x = _weights(1), _correlated_inputs(2)
  h = jnp.asarray(2 / len(x) * x.T @ x, jnp.float32)
  for spec in _specs(blocksize, ks=(3, 4), quantile_ks=(3, 4)):
    rtn_error = _output_error(w, rtn(w, spec), x)
    for act_order in (False, True):
      got = gptq.quantize_kernel(w, h, spec, act_order=act_order)
      assert _output_error(w, got, x) < rtn_error, (spec, act_order)
      # Stored as RTN stores it: every value is a code of its block's RTN constants.
      codebook_C = (
        gptq.data_codebook(w, spec, jnp.zeros(K, bool))
        if spec.data_dependent
        else reference.spec_codebook(spec)
      )
      np.testing.assert_array_equal(
        _requantized(w, got, reference.layout_spec(spec), codebook_C),
        np.asarray(got),
        err_msg=str(spec),
      )


def _numpy_algorithm_1(w_KxN, h_KxK, codebook, blocksize, percdamp, act_order):
  """The paper's Algorithm 1 without lazy batches, float64, static int absmax constants in
  the study's layout (blocks of B values of the row-major (out, in) weights)."""
  w = np.asarray(w_KxN, np.float64).T.copy()  # (out, in), as the paper
  h = np.asarray(h_KxK, np.float64).copy()
  dead = np.diag(h) == 0
  h[dead, dead] = 1
  w[:, dead] = 0
  flat = w.reshape(-1)
  pad = -flat.size % blocksize
  absmax = np.abs(np.pad(flat, (0, pad))).reshape(-1, blocksize).max(1)
  scale = absmax.astype(np.float16)
  scale = np.where(
    scale.astype(np.float64) < absmax, np.nextafter(scale, np.float16(np.inf)), scale
  ).astype(np.float64)
  scale = np.repeat(scale, blocksize)[: flat.size].reshape(w.shape)
  mid = (codebook[:-1] + codebook[1:]) / 2

  def quant(v, s):
    return codebook[np.searchsorted(mid, v / s, side="left")] * s

  order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(len(h))
  w, scale, h = w[:, order], scale[:, order], h[order][:, order]
  h = h + percdamp * np.mean(np.diag(h)) * np.eye(len(h))
  u = np.linalg.cholesky(np.linalg.inv(h)).T  # H^-1 = U^T U, U upper
  q = np.zeros_like(w)
  for j in range(w.shape[1]):
    q[:, j] = quant(w[:, j], scale[:, j])
    err = (w[:, j] - q[:, j]) / u[j, j]
    w[:, j:] -= np.outer(err, u[j, j:])
  return q[:, np.argsort(order)].T


@pytest.mark.parametrize("act_order", [False, True])
def test_equals_numpy_algorithm_1(act_order):
  w, x = _weights(3), _correlated_inputs(4)
  x[:, 17] = 0  # a dead input
  h = 2 / len(x) * x.T @ x
  spec = QuantSpec(bits=4, dtype="int", blocksize=64)
  want = _numpy_algorithm_1(w, h, spec.codebook().astype(np.float64), 64, 0.01, act_order)
  got = gptq.quantize_kernel(w, jnp.asarray(h, jnp.float32), spec, act_order=act_order)
  # float32 against float64: equal codes give values equal to float32 rounding.
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)
  assert np.all(np.asarray(got)[17] == 0)


def test_lazy_batch_size_does_not_change_the_result():
  w, x = _weights(5), _correlated_inputs(6)
  h = jnp.asarray(2 / len(x) * x.T @ x, jnp.float32)
  spec = QuantSpec(bits=3, dtype="nf", blocksize=-1)
  base = np.asarray(gptq.quantize_kernel(w, h, spec))
  for columns in (7, 256):  # 23 blocks of 7 (one padding feature), one of 160
    # The same updates summed in another order: float32 rounding only.
    np.testing.assert_allclose(
      np.asarray(gptq.quantize_kernel(w, h, spec, block_columns=columns)),
      base,
      rtol=0,
      atol=1e-5,
      err_msg=str(columns),
    )


def test_one_compile_per_layout_serves_every_type_and_k():
  w, h = _weights(7, (40, 8)), jnp.eye(40)  # a shape no other test uses
  before = gptq._gptq._cache_size()
  for dtype, k in (
    ("int", 2),
    ("float", 3),
    ("dynamic", 4),
    ("nf", 8),
    ("quantile", 3),
    ("quantile", 5),
  ):
    gptq.quantize_kernel(w, h, QuantSpec(bits=k, dtype=dtype), act_order=k == 3)
  assert gptq._gptq._cache_size() - before == 1


@pytest.mark.parametrize("percdamp", [0, 0.0, -0.01, True, "0.01"])
def test_bad_percdamp_names_the_key(percdamp):
  with pytest.raises(ValueError, match="percdamp"):
    gptq.quantize_kernel(_weights(0), jnp.eye(K), QuantSpec(bits=4), percdamp=percdamp)


@pytest.mark.parametrize("bad", ["indefinite", "nan"])
def test_hessian_not_positive_definite_names_the_tensor(bad):
  h = np.eye(K, dtype=np.float32)
  if bad == "indefinite":  # eigenvalue -1 of [[1, 2], [2, 1]]: dampening 0.01 cannot fix it
    h[5, 6] = h[6, 5] = 2.0
  else:
    h[5, 5] = np.nan
  with pytest.raises(ValueError, match="layer_3/mlp/wi/kernel"):
    gptq.quantize_kernel(
      _weights(0), jnp.asarray(h), QuantSpec(bits=4), name="layer_3/mlp/wi/kernel"
    )


def test_bad_shapes_and_unquantized_spec():
  with pytest.raises(ValueError, match=r"Hessian \(159, 159\)"):
    gptq.quantize_kernel(_weights(0), jnp.eye(K - 1), QuantSpec(bits=4))
  with pytest.raises(ValueError, match="quant.bits=16"):
    gptq.quantize_kernel(_weights(0), jnp.eye(K), QuantSpec(bits=16))
  with pytest.raises(ValueError, match="block_columns"):
    gptq.quantize_kernel(_weights(0), jnp.eye(K), QuantSpec(bits=4), block_columns=0)


@functools.lru_cache(maxsize=None)
def _model():
  preset = dataclasses.replace(PRESETS["s0"], tie_embeddings=False, vocab_size=512)
  model = Transformer(preset)
  return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))


def _identity_calibration(params):
  names, leaves, _ = named_leaves(params)
  kernels = {
    n: calibration.KernelStats(2.5 * jnp.eye(leaf.value.shape[0]), jnp.ones(leaf.value.shape[0]))
    for n, leaf in zip(names, leaves)
    if target_of(n) in calibration.RECORDED
  }
  return calibration.Calibration(kernels, sequences=1, tokens=8, mode="fast")


def _sharded(params):
  """Leaves whose first axis splits over the 8 devices sharded along it, others replicated."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("x",))

  def place(x):
    return jax.device_put(
      x,
      jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("x" if x.shape and x.shape[0] % 8 == 0 else None)
      ),
    )

  return jax.tree.map(place, params)


def test_tree_with_identity_hessians_equals_rtn_and_keeps_the_rest():
  _, params = _model()
  params = _sharded(params)
  calib = _identity_calibration(params)
  # attn and head: two kernel shapes, two compiles of GPTQ for 8 devices.
  spec = QuantSpec(bits=3, dtype="int", targets="attn,head", outlier_share=0.1)
  got = methods.quantize_params(params, spec, "gptq", calib)
  want = methods.quantize_params(params, spec, "rtn")
  assert jax.tree.structure(got) == jax.tree.structure(params)
  names, before, _ = named_leaves(params)
  for n, a, b, r in zip(names, before, named_leaves(got)[1], named_leaves(want)[1]):
    assert type(a) is type(b) and a.names == b.names, n  # flax boxes kept
    a, b, r = a.value, b.value, r.value
    assert b.dtype == a.dtype and b.sharding == a.sharding, n
    np.testing.assert_array_equal(np.asarray(b), np.asarray(r), err_msg=str(n))
    assert np.array_equal(np.asarray(a), np.asarray(b)) == (not is_quantized(n, spec)), n

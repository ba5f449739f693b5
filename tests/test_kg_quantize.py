"""Quantized tables: the quant core's values, the bit accounting, 16 bits = no change."""

import dataclasses

import jax
import numpy as np
import pytest

from kbit_jax.kg import models, quantize
from kbit_jax.quant import bits, reference
from kbit_jax.quant.spec import QuantSpec


def random_params(rng, num_entities=100, dim=64, relation_dim=64, num_relations=3):
  return {
    "entity": rng.normal(size=(num_entities, dim)).astype(np.float32),
    "relation": rng.normal(size=(num_relations, relation_dim)).astype(np.float32),
  }


def test_table_bits_by_hand():
  # 100 x 64 values at k = 4, B = 64: 6,400 * 4 code bits + 100 blocks * 16 = 27,200
  # (= 4 + 16/64 = 4.25 bits per value).
  assert quantize.table_bits((100, 64), QuantSpec(bits=4, blocksize=64)) == 27_200
  # int_centered stores a mean per block too: 6,400 * 3 + 100 * 32 = 22,400.
  assert quantize.table_bits((100, 64), QuantSpec(bits=3, dtype="int_centered")) == 22_400
  # quantile adds its 2^k 16-bit codes: 3 * 5 * 8 + 1 block * 16 + 256 * 16 = 4,232.
  assert quantize.table_bits((3, 5), QuantSpec(bits=8, dtype="quantile")) == 4_232
  # unquantized: 16 per value.
  assert quantize.table_bits((100, 64), QuantSpec(bits=16)) == 102_400
  assert quantize.table_bits((100, 64), QuantSpec(bits=4), quantized=False) == 102_400


@pytest.mark.parametrize(
  "spec",
  [
    QuantSpec(bits=2, blocksize=64),
    QuantSpec(bits=3, dtype="float", blocksize=32),
    QuantSpec(bits=4, dtype="nf", double_quant=True, blocksize=128),
    QuantSpec(bits=5, dtype="int_centered", blocksize=-1),
    QuantSpec(bits=8, blocksize=0),
    QuantSpec(bits=6, dtype="quantile", blocksize=256),
    QuantSpec(bits=16),
  ],
)
def test_bits_equal_the_quant_core_accounting(spec):
  """The same rows as quant/bits.py's tensor_bits for a targeted tensor of that shape."""
  embed = dataclasses.replace(spec, targets=("embed",))
  for shape in [(1000, 48), (7, 24), (3, 5)]:
    core = bits.tensor_bits(("embed", "embedding"), shape, embed, has_proxy=False)["bits"]
    assert quantize.table_bits(shape, spec) == core, shape
  params = random_params(np.random.default_rng(0), 1000, 48, 24, 7)
  report = quantize.bits_report(params, spec)
  expected = quantize.table_bits((1000, 48), spec) + quantize.table_bits((7, 24), spec)
  assert report["total_bits"] == expected and report["params"] == 48_000 + 168
  assert report["bits_per_param"] == expected / 48_168
  # Only the entity table quantized: the relations cost 16 bits each.
  only = quantize.bits_report(params, spec, tables=("entity",))
  assert only["total_bits"] == quantize.table_bits((1000, 48), spec) + 168 * 16


def test_quantized_tables_are_the_reference_fake_quant():
  rng = np.random.default_rng(1)
  params = random_params(rng, relation_dim=32)
  for spec in [
    QuantSpec(bits=4, blocksize=64),
    QuantSpec(bits=3, dtype="nf", blocksize=32),
    QuantSpec(bits=5, dtype="quantile", blocksize=64),
  ]:
    q = quantize.quantize_tables(params, spec)
    for name in quantize.TABLES:
      # Jitted (codebook traced) vs eager: XLA may round code * scale 1 ulp apart; a
      # different code would be off by a whole step (>= 1/255 of the block's absmax).
      np.testing.assert_allclose(
        q[name], reference.fake_quant_tensor(params[name], spec), rtol=1e-6, atol=0
      )
      assert not np.array_equal(q[name], params[name])
    entity_only = quantize.quantize_tables(params, spec, tables=("entity",))
    np.testing.assert_array_equal(entity_only["relation"], params["relation"])
  # int, B = 64 on rows of 64: at most 2^(k-1) - 1 = 7 distinct magnitudes per row, and
  # every value within half a step (absmax / 7 / 2) of its original.
  q = np.asarray(quantize.quantize_tables(params, QuantSpec(bits=4, blocksize=64))["entity"])
  absmax = np.abs(params["entity"]).max(axis=1, keepdims=True)
  assert np.all(np.abs(q - params["entity"]) <= absmax / 14 * (1 + 1e-3))
  assert max(len(np.unique(np.abs(row))) for row in q) <= 8  # 7 magnitudes and 0


def test_one_compile_per_block_layout():
  params = random_params(np.random.default_rng(2))
  quantize._compiled.cache_clear()
  for k in (2, 3, 4, 8):
    for dtype in ("int", "float", "nf"):
      quantize.quantize_tables(params, QuantSpec(bits=k, dtype=dtype, blocksize=64))
  assert quantize._compiled.cache_info().currsize == 1
  (fn,) = [quantize._compiled(reference.layout_spec(QuantSpec(bits=4)), quantize.TABLES)]
  assert fn._cache_size() == 1


def test_sixteen_bits_leave_the_scores_unchanged():
  for model in [models.TransE(50, 3, 16), models.RotatE(50, 3, 16)]:
    z = np.zeros((1,), np.int32)
    params = jax.tree.map(
      np.asarray, models.nn.unbox(model.init(jax.random.key(0), z, z, z)["params"])
    )
    same = quantize.quantize_tables(params, QuantSpec(bits=16))
    h, r = np.arange(5), np.array([0, 1, 2, 0, 1])
    before = model.apply({"params": params}, h, r, method=type(model).tail_scores)
    after = model.apply({"params": same}, h, r, method=type(model).tail_scores)
    np.testing.assert_array_equal(before, after)
    # 8 bits change them, a little.
    q8 = quantize.quantize_tables(params, QuantSpec(bits=8, blocksize=64))
    eight = model.apply({"params": q8}, h, r, method=type(model).tail_scores)
    assert not np.array_equal(before, eight)
    np.testing.assert_allclose(eight, before, atol=0.05 * np.abs(before).max())


def test_quantized_rotate_phases_are_still_rotations():
  model = models.RotatE(20, 4, 16)
  z = np.zeros((1,), np.int32)
  params = models.nn.unbox(model.init(jax.random.key(0), z, z, z)["params"])
  q = quantize.quantize_tables(params, QuantSpec(bits=2, blocksize=64))
  cos, sin = model.apply({"params": q}, np.arange(4), method=models.RotatE.rotation)
  np.testing.assert_allclose(np.hypot(cos, sin), 1.0, atol=1e-6)
  assert len(np.unique(np.asarray(q["relation"]))) <= 3 * 1  # 2-bit int: {-1, 0, 1} x absmax


@pytest.mark.parametrize(
  "spec, tables, message",
  [
    (
      QuantSpec(bits=4, outlier_share=0.01),
      quantize.TABLES,
      r"quant.outlier_share=0.01 is not supported .*; allowed: 0.0",
    ),
    (QuantSpec(bits=4, act_bits=8), quantize.TABLES, r"quant.act_bits=8 is not supported"),
    (QuantSpec(bits=4, mode="qat"), quantize.TABLES, r"quant.mode='qat' is not supported"),
    (
      QuantSpec(bits=4),
      ("entity", "head"),
      r"tables=\['entity', 'head'\] is not allowed; "
      r"allowed: distinct names from \['entity', "
      r"'relation'\]",
    ),
  ],
)
def test_unsupported_specs_raise(spec, tables, message):
  with pytest.raises(ValueError, match=message):
    quantize.quantize_tables(random_params(np.random.default_rng(3)), spec, tables)

"""k-bit quantization of the Llama-architecture switches: the gate kernel is an `mlp`
target with a proxy source, grouped-query key/value kernels are `attn` targets, the bit
accounting counts every new kernel, AQT's convert/serve path quantizes them as the
reference does, and outliers (which need one proxy column per input row) are refused for
grouped-query attention's attn/out with the key and the tensor named, before any compile.
"""

import dataclasses
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kbit_jax.config import files
from kbit_jax.grid import plan as grid_plan
from kbit_jax.model import presets, transformer
from kbit_jax.quant import aqt, bits, outliers, reference
from kbit_jax.quant.spec import QuantSpec, check_targets_exist, named_leaves, target_of

grid_config = files.load_module(pathlib.Path(__file__).resolve().parents[1] / "configs" / "grid.py")

L1 = presets.PRESETS["l1"]  # 2 layers, d_model 32, 2 heads on 1 key/value head, SwiGLU
L1_MHA = dataclasses.replace(L1, kv_heads=0)  # one key/value head per query head


def test_targets_cover_the_new_kernels():
  for name in ("qwen2.5-0.5b", "qwen3-0.6b"):
    names, _, _ = named_leaves(bits.preset_shapes(presets.PRESETS[name]))
    layer = {n[1:]: target_of(n) for n in names if n[0] == "layer_0"}
    assert layer[("mlp", "gate", "kernel")] == "mlp"
    assert layer[("attn", "key", "kernel")] == layer[("attn", "value", "kernel")] == "attn"
    assert layer[("ln1", "scale")] is None
  assert layer[("attn", "query_norm", "scale")] is None  # Qwen3's q/k norms stay 16-bit
  names, _, _ = named_leaves(bits.preset_shapes(presets.PRESETS["qwen2.5-0.5b"]))
  assert target_of(("layer_0", "attn", "query", "bias")) is None  # Qwen2's biases too
  assert ("layer_0", "attn", "query", "bias") in names
  assert outliers.proxy_source(("layer_1", "mlp", "gate", "kernel"), 2) == (
    "layer_1",
    "attn",
    "out",
    "kernel",
  )


@pytest.mark.parametrize("name", ["l2", "qwen2.5-0.5b", "gemma-2b"])
def test_bit_accounting_counts_every_kernel(name):
  """k + 16/B per quantized parameter; the quantized ones are all kernels of the blocks
  (gate included) and, with `embed`, the table; q/k/v biases and norms stay 16-bit."""
  p = presets.PRESETS[name]
  shapes = bits.preset_shapes(p)
  report = bits.bits_report(shapes, QuantSpec(bits=4, blocksize=64, targets="attn,mlp"))
  kernels = p.num_layers * (p.d_model * (2 * p.q_dim + 2 * p.kv_dim) + 3 * p.d_model * p.d_ff)
  assert report["quantized_params"] == kernels
  assert report["quantized_bits_per_param"] == pytest.approx(4 + 16 / 64, rel=1e-4)
  unquantized = presets.param_counts(p)["total"] - kernels
  assert report["total_bits"] == pytest.approx(kernels * (4 + 16 / 64) + 16 * unquantized, 1e-4)


def test_aqt_convert_and_serve_quantize_the_gate_like_the_reference():
  p = dataclasses.replace(L1, vocab_size=97)
  tokens_BxL = jax.random.randint(jax.random.key(0), (2, 12), 0, p.vocab_size)
  params = transformer.Transformer(p).init(jax.random.key(1), tokens_BxL)["params"]
  params = nn.unbox(params)
  spec = QuantSpec(bits=4, dtype="nf", blocksize=64)
  qparams = aqt.convert(params, p, spec)
  assert "mlp" not in qparams["params"]["layer_0"]  # no biases: every kernel stored k-bit
  assert set(qparams["aqt"]["layer_0"]["mlp"]) == {"gate", "wi", "wo"}
  want = transformer.Transformer(p).apply(
    {"params": reference.fake_quant_params(params, spec)}, tokens_BxL
  )
  np.testing.assert_allclose(aqt.serve_apply(qparams, tokens_BxL, p, spec), want, atol=1e-5)


def test_outliers_on_the_gate_and_without_grouped_query_attention():
  """With one key/value head per query head every kernel has a proxy: the kept rows are
  bit-exact and cost p (16 - k) bits per parameter on top."""
  p = dataclasses.replace(L1_MHA, vocab_size=97)
  params = nn.unbox(
    transformer.Transformer(p).init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))
  )
  spec = QuantSpec(bits=3, blocksize=64, outlier_share=0.25, targets="attn,mlp")
  masks = reference.outlier_masks(params, spec)
  gate = ("layer_1", "mlp", "gate", "kernel")
  assert int(masks[gate].sum()) == 8  # of its 32 input rows (d_model)
  assert int(masks[("layer_1", "mlp", "wo", "kernel")].sum()) == round(0.25 * 185)  # of d_ff
  quantized = reference.fake_quant_params(params, spec)
  w, q = (np.asarray(t["params"]["layer_1"]["mlp"]["gate"]["kernel"]) for t in (params, quantized))
  np.testing.assert_array_equal(q[np.asarray(masks[gate])], w[np.asarray(masks[gate])])
  row = next(r for r in bits.bits_report(params, spec)["rows"] if r["name"] == "/".join(gate))
  assert row["outlier_params"] == 8 * 185


GQA_OUTLIERS = (
  r"quant.outlier_share=0.01 is not supported for this model: layer_0/attn/out/kernel has "
  r"32 input rows but its proxy layer_0/attn/value/kernel 16 columns \(grouped-query "
  r"attention: each value unit feeds a group of query heads\); allowed: 0.0, or targets "
  r"without 'attn'"
)


def test_outliers_under_grouped_query_attention_are_refused_everywhere():
  spec = QuantSpec(bits=4, outlier_share=0.01)
  shapes = bits.preset_shapes(L1)
  for check in (
    lambda: check_targets_exist(shapes, spec),
    lambda: bits.bits_report(shapes, spec),
    lambda: reference.fake_quant_params(
      transformer.Transformer(L1).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)), spec
    ),
  ):
    with pytest.raises(ValueError, match=GQA_OUTLIERS):
      check()
  check_targets_exist(shapes, dataclasses.replace(spec, targets=("mlp",)))  # no attn: fine
  bits.bits_report(shapes, QuantSpec(bits=16, outlier_share=0.01))  # 16-bit: nothing kept


def test_grid_plan_refuses_outliers_of_a_grouped_query_size_naming_the_cell():
  config = grid_config.get_config("runlocal")
  config.grid.sizes = ("l0",)
  config.grid.outlier_shares = (0.0, 0.01)
  with pytest.raises(
    ValueError, match=r"grid cell l0-seed0 k3 int B64 p0.01: " + GQA_OUTLIERS[:40]
  ):
    grid_plan.make_plan(config)

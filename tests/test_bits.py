"""Bit accounting, the `config.quant` validation, and the CLI text."""

import json
import math

import jax
import jax.numpy as jnp
import pytest

from kbit_jax.config import defaults
from kbit_jax.model.presets import PRESETS, param_counts
from kbit_jax.quant import bits, cli
from kbit_jax.quant.spec import QuantSpec, check_targets_exist

SMALL = ("s0", "s2")


@pytest.mark.parametrize("k", (3, 4, 8))
def test_table_quantized_bits_per_param_is_k_plus_16_over_b(k):
  table = bits.bits_table(SMALL, bits=(k,), blocksize=64)
  for row in table:
    p = PRESETS[row["preset"]]
    assert row["params"] == param_counts(p)["total"]
    if row["bits"] == 16:
      assert row["total_bits"] == 16 * row["params"]
      continue
    assert row["quantized_bits_per_param"] == k + 16 / 64
    linear = p.num_layers * (4 * p.d_model**2 + 2 * p.d_model * p.d_ff)
    assert row["quantized_params"] == linear
    assert row["total_bits"] == linear * (k + 16 / 64) + 16 * (row["params"] - linear)


def test_report_on_shapes_equals_report_on_arrays():
  shapes = bits.preset_shapes(PRESETS["s0"])
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  spec = QuantSpec(bits=3, dtype="nf", double_quant=True, outlier_share=0.1)
  assert bits.bits_report(shapes, spec) == bits.bits_report(params, spec)


def _row(spec, names=("layer_0", "mlp", "wo", "kernel"), shape=(1024, 256)):
  return bits.tensor_bits(names, shape, spec)


def test_per_tensor_costs():
  n = 1024 * 256
  assert _row(QuantSpec(bits=4, blocksize=128))["bits"] == n * 4 + n // 128 * 16
  assert _row(QuantSpec(bits=4, blocksize=0))["bits"] == n * 4 + 16
  assert _row(QuantSpec(bits=4, blocksize=-1))["bits"] == n * 4 + 256 * 16
  assert _row(QuantSpec(bits=4, dtype="int_centered"))["bits"] == n * 4 + n // 64 * 32
  blocks = n // 64
  dq = n * 4 + blocks * 8 + math.ceil(blocks / 256) * 32 + 32
  assert _row(QuantSpec(bits=4, dtype="nf", double_quant=True))["bits"] == dq
  assert _row(QuantSpec(bits=4, dtype="quantile"))["bits"] == n * 4 + blocks * 16 + 16 * 16
  assert _row(QuantSpec(bits=16))["bits"] == n * 16
  bias = bits.tensor_bits(("layer_0", "mlp", "wo", "bias"), (256,), QuantSpec(bits=3))
  assert not bias["quantized"] and bias["bits"] == 256 * 16


def test_outlier_cost_is_p_times_16_minus_k():
  p, k = 0.0625, 3  # 64 of 1024 rows, exactly
  row = _row(QuantSpec(bits=k, outlier_share=p))
  assert row["outlier_params"] == 64 * 256
  assert row["bits_per_param"] == k + 16 / 64 + p * (16 - k)
  embed = bits.tensor_bits(
    ("embed", "embedding"), (1024, 256), QuantSpec(bits=k, outlier_share=p, targets="embed")
  )
  assert embed["bits_per_param"] == k + 16 / 64


def test_bits_table_text():
  text = cli.bits_table_text(presets=("s0",))
  assert "s0" in text and "4.2500" in text and "16.0000" in text


def test_codebook_cli():
  values = json.loads(cli.codebook_text("nf", 4, as_json=True))
  assert len(values) == 16 and values[0] == -1.0 and values[-1] == 1.0
  text = cli.codebook_text("float", 4, exponent_bits=2)
  assert text.splitlines()[0] == "# float, k=4, e=2: 15 codes"
  assert len(text.splitlines()) == 16


def test_spec_from_base_config():
  spec = QuantSpec.from_config(defaults.base_config().quant)
  assert not spec.quantized and spec.targets == ("attn", "mlp")
  c = defaults.base_config().quant
  c.bits, c.dtype = 3, "float"
  spec = QuantSpec.from_config(c)
  assert spec.exponent_bits == 2 and hash(spec) == hash(QuantSpec.from_config(c))
  assert QuantSpec(bits=4, dtype="float", exponent_bits=2).exponent_bits == 2


@pytest.mark.parametrize(
  "key, value, match",
  [
    ("bits", 9, r"quant\.bits=9 .*allowed: \[2, 3, 4, 5, 6, 7, 8\] or 16"),
    ("bits", 1, r"quant\.bits=1 "),
    ("bits", 4.0, r"quant\.bits=4\.0 "),
    ("dtype", "fp4", r"quant\.dtype='fp4' .*'nf'"),
    ("exponent_bits", 4, r"quant\.exponent_bits=4 .*\[1, 2, 3\] for bits=4"),
    ("exponent_bits", -1, r"quant\.exponent_bits=-1 "),
    ("blocksize", 100, r"quant\.blocksize=100 .*4096.*per tensor"),
    ("outlier_share", 1.0, r"quant\.outlier_share=1\.0 .*0 <= p < 1"),
    ("outlier_share", -0.1, r"quant\.outlier_share=-0\.1 "),
    ("targets", "attn,ffn", r"quant\.targets='attn,ffn' .*'head', 'embed'"),
    ("targets", "", r"quant\.targets='' "),
    ("targets", "mlp,mlp", r"quant\.targets='mlp,mlp' "),
    ("act_bits", 12, r"quant\.act_bits=12 "),
    ("mode", "train", r"quant\.mode='train' .*'ptq', 'qat'"),
    ("double_quant", True, r"quant\.double_quant=True .*dtype in \['nf'\]"),
  ],
)
def test_spec_errors_name_key_value_and_allowed(key, value, match):
  c = defaults.base_config().quant
  c.bits, c.dtype = 4, ("float" if key == "exponent_bits" else "int")
  with pytest.raises(ValueError, match=match):
    QuantSpec.from_config({**c.to_dict(), key: value})


def test_exponent_bits_only_for_float():
  with pytest.raises(ValueError, match=r"quant\.exponent_bits=3 .*float only"):
    QuantSpec(bits=4, dtype="nf", exponent_bits=3)


def test_check_targets_exist():
  tied = bits.preset_shapes(PRESETS["s0"])
  check_targets_exist(tied, QuantSpec(bits=4, targets="attn,mlp,embed"))
  with pytest.raises(ValueError, match=r"quant\.targets='attn,head' .*no tensor for \['head'\]"):
    check_targets_exist(tied, QuantSpec(bits=4, targets="attn,head"))

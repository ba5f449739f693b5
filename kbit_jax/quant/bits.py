"""Bit accounting: total model bits and bits per parameter under a `QuantSpec`.

A quantized tensor of n values costs
  codes     (n - n_out) k            n_out = values in 16-bit outlier rows
  outliers  n_out 16                 = p (16 - k) per parameter on top of the k bits
  constants blocks 16                (int_centered: 32, absmax + mean;
                                      double_quant: blocks 8 + ceil(blocks/256) 32 + 32)
  codebook  2^k 16                   quantile only: its per-tensor codes
and every other parameter (biases, LayerNorms, position tables, untargeted kernels) 16
bits. With n a multiple of B and no outliers this is the study's k + 16/B per parameter.
Works on arrays, `jax.eval_shape` output or flax boxes alike: only shapes are read.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp

from kbit_jax.model.presets import PRESETS, Preset
from kbit_jax.quant import blockwise, outliers
from kbit_jax.quant.spec import (
  UNQUANTIZED_BITS,
  QuantSpec,
  is_quantized,
  named_leaves,
  target_of,
  unboxed,
)


def constant_bits(num_blocks: int, spec: QuantSpec) -> int:
  """Bits of one tensor's block constants."""
  if spec.double_quant:
    second_level = -(-num_blocks // blockwise.DQ_BLOCKSIZE)
    return (
      num_blocks * blockwise.DQ_CODE_BITS
      + second_level * blockwise.DQ_SCALE_BITS
      + blockwise.DQ_SCALE_BITS
    )  # + the float32 mean subtracted first
  per_block = 2 * blockwise.SCALE_BITS if spec.centered else blockwise.SCALE_BITS
  return num_blocks * per_block


def tensor_bits(
  names: tuple[str, ...], shape: tuple[int, ...], spec: QuantSpec, has_proxy: bool | None = None
) -> dict[str, Any]:
  """One row of the report: what storing this tensor costs under `spec`.

  `has_proxy`: whether the tensor gets outlier rows (its proxy source exists in the
  model); by default, whether it has a proxy source at all (not the embedding).
  """
  if has_proxy is None:
    has_proxy = outliers.proxy_source(names, num_layers=1) is not None
  n = math.prod(shape)
  row = dict(
    name="/".join(names),
    shape=tuple(shape),
    params=n,
    target=target_of(names),
    quantized=is_quantized(names, spec),
    outlier_params=0,
  )
  if not row["quantized"]:
    row["bits"] = n * UNQUANTIZED_BITS
  else:
    rows = shape[0] if len(shape) > 1 else 0
    n_out = (
      outliers.num_outliers(rows, spec.outlier_share) * (n // rows) if (has_proxy and rows) else 0
    )
    codebook = 2**spec.bits * UNQUANTIZED_BITS if spec.data_dependent else 0
    row["outlier_params"] = n_out
    row["bits"] = (
      (n - n_out) * spec.bits
      + n_out * UNQUANTIZED_BITS
      + codebook
      + constant_bits(blockwise.num_blocks(shape, spec.blocksize), spec)
    )
  row["bits_per_param"] = row["bits"] / n
  return row


def bits_report(params_or_shapes: Any, spec: QuantSpec) -> dict[str, Any]:
  """total_bits, bits_per_param, quantized_bits_per_param and per-tensor `rows`."""
  names, leaves, _ = named_leaves(params_or_shapes)
  num_layers = len({n[0] for n in names if n[0].startswith("layer_")})
  present = set(names)
  outliers.check_proxy_shapes(  # the outlier rows reference.py would keep must exist
    {n: tuple(unboxed(leaf).shape) for n, leaf in zip(names, leaves)},
    spec.outlier_share if spec.quantized else 0.0,
    {n: is_quantized(n, spec) for n in names},
  )
  rows = [
    tensor_bits(
      n, tuple(unboxed(leaf).shape), spec, has_proxy=outliers.proxy_source(n, num_layers) in present
    )
    for n, leaf in zip(names, leaves)
  ]
  total_params = sum(r["params"] for r in rows)
  total_bits = sum(r["bits"] for r in rows)
  q_params = sum(r["params"] for r in rows if r["quantized"])
  q_bits = sum(r["bits"] for r in rows if r["quantized"])
  return dict(
    params=total_params,
    total_bits=total_bits,
    bits_per_param=total_bits / total_params,
    quantized_params=q_params,
    quantized_bits_per_param=q_bits / q_params if q_params else float("nan"),
    rows=rows,
  )


def preset_shapes(preset: Preset) -> Any:
  """Parameter shapes of `model.Transformer(preset)` via `jax.eval_shape` (no allocation).

  Traced once per preset (a 7B-shaped trace takes seconds, and a dry run's plan, cost and
  memory tables each ask for every size); each call gets its own copy of the tree."""
  return jax.tree.map(lambda s: s, _traced_shapes(preset))


@functools.lru_cache(maxsize=None)
def _traced_shapes(preset: Preset) -> Any:
  from kbit_jax.model.transformer import Transformer  # flax model: only needed for this helper

  model = Transformer(preset)
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  return jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t), tokens)


def bits_table(
  presets: Iterable[str] | None = None,
  bits: Iterable[int] = (3, 4, 8),
  blocksize: int = 64,
  dtype: str = "int",
  targets: str = "attn,mlp",
  outlier_share: float = 0.0,
  method: str = "rtn",
) -> list[dict[str, Any]]:
  """One row per (preset, k): parameters, total bits, bits/param of model and of the
  quantized tensors (= k + 16/B + p (16 - k)). `method`: rtn and gptq store the same
  codes and constants; awq adds its scales that do not fold (awq.scale_bits) to the
  quantized tensors' bits and reports them in `awq_scale_bits`."""
  if method not in ("rtn", "gptq", "awq"):
    raise ValueError(f"method={method!r} is unknown; allowed: ['rtn', 'gptq', 'awq']")
  bad = [p for p in presets or () if p not in PRESETS]
  if bad:
    raise ValueError(f"preset {bad[0]!r} is unknown; allowed: {sorted(PRESETS)}")
  table = []
  for name in presets or PRESETS:
    shapes = preset_shapes(PRESETS[name])
    for k in (UNQUANTIZED_BITS, *bits):
      spec = QuantSpec(
        bits=k, dtype=dtype, blocksize=blocksize, targets=targets, outlier_share=outlier_share
      )
      report = bits_report(shapes, spec)
      row = dict(
        preset=name,
        bits=k,
        params=report["params"],
        quantized_params=report["quantized_params"],
        total_bits=report["total_bits"],
        bits_per_param=report["bits_per_param"],
        quantized_bits_per_param=report["quantized_bits_per_param"],
      )
      if method == "awq":
        from kbit_jax.quant import awq  # imports the model: only for this column

        extra = awq.scale_bits(shapes, spec, PRESETS[name])["total_bits"]
        row["total_bits"] += extra
        row["bits_per_param"] = row["total_bits"] / row["params"]
        if report["quantized_params"]:
          row["quantized_bits_per_param"] += extra / report["quantized_params"]
        row["awq_scale_bits"] = extra
      table.append(row)
  return table


def format_bits_table(table: list[dict[str, Any]]) -> str:
  import pandas as pd  # here, not at the top: only `kbit bits` prints a table (~0.3 s)

  frame = pd.DataFrame(table)
  frame.insert(5, "GiB", frame["total_bits"] / 8 / 2**30)
  frame = frame.rename(
    columns={
      "bits": "k",
      "quantized_params": "quantized",
      "total_bits": "total bits",
      "bits_per_param": "bits/param",
      "quantized_bits_per_param": "quant b/p",
      "awq_scale_bits": "awq scales",
    }
  )
  return frame.to_string(
    index=False,
    na_rep="-",
    formatters={
      "params": "{:,}".format,
      "quantized": "{:,}".format,
      "total bits": "{:,}".format,
      "GiB": "{:.3f}".format,
      "bits/param": "{:.4f}".format,
      "quant b/p": "{:.4f}".format,
      "awq scales": "{:,}".format,
    },
  )

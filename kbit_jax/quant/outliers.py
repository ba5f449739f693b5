"""Outlier-dependent ("proxy") quantization: keep the p share of hidden units in 16 bits.

As in the k-bit study, a kernel's input features (rows of the (in, out) kernel) are
hidden units produced by the layer before it; the units whose weights in that previous
layer have the largest standard deviation are the likely outlier features, so those
rows of the kernel stay 16-bit and the rest is quantized. The std of unit j is taken
over the previous layer's column j (all weights that produce unit j):

  kernel                     its inputs                 previous layer (std of columns)
  layer_i/mlp/wo   (F, D)    F MLP units                layer_i/mlp/wi     (D, F)
  layer_i/attn/out (D, D)    attention output (values)  layer_i/attn/value (D, D)
  layer_i/mlp/wi   (D, F)    residual stream            layer_i/attn/out   (D, D)
  layer_i/mlp/gate (D, F)    residual stream            layer_i/attn/out   (D, D)
  layer_i/attn/q,k,v (D, D)  residual stream            layer_{i-1}/mlp/wo (F, D);
                                                        layer_0: embed/embedding (V, D)
  head/kernel      (D, V)    residual stream            layer_{L-1}/mlp/wo (F, D)
  embed/embedding  (V, D)    token ids: none, never has outliers

For the residual stream we take the last matrix that wrote to it (LayerNorm in between
is ignored, as a proxy it only has to rank units). A gated MLP's units are
act(gate x) * (wi x); wo's proxy is wi, as for the dense MLP. Rows kept are excluded
from their block's absmax (zeroed before quantizing) and returned bit-exact; cost per
parameter of the tensor: p (16 - k) bits, with p the realised share
round(p_requested * rows) / rows.

Grouped-query attention has no proxy for attn/out: its H*K input units read the N*K
value units in groups of H/N heads, and which value column feeds which row depends on
the head width, which the parameters do not record. `check_proxy_shapes` refuses a
nonzero outlier share there (before any compile: spec.check_targets_exist calls it).
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import jax.numpy as jnp

_LAYER = re.compile(r"layer_(\d+)$")


def num_outliers(rows: int, share: float) -> int:
  """Hidden units kept in 16 bits out of `rows`."""
  return int(round(share * rows))


def proxy_source(names: tuple[str, ...], num_layers: int) -> tuple[str, ...] | None:
  """Name of the parameter whose column stds rank the input units of `names`."""
  if names == ("head", "kernel"):
    return (f"layer_{num_layers - 1}", "mlp", "wo", "kernel")
  if len(names) != 4 or names[-1] != "kernel" or not _LAYER.match(names[0]):
    return None
  layer, group, proj = names[0], names[1], names[2]
  i = int(_LAYER.match(layer).group(1))
  previous = {
    ("mlp", "wo"): (layer, "mlp", "wi", "kernel"),
    ("mlp", "wi"): (layer, "attn", "out", "kernel"),
    ("mlp", "gate"): (layer, "attn", "out", "kernel"),
    ("attn", "out"): (layer, "attn", "value", "kernel"),
  }
  if (group, proj) in previous:
    return previous[(group, proj)]
  if group == "attn" and proj in ("query", "key", "value"):
    return (f"layer_{i - 1}", "mlp", "wo", "kernel") if i > 0 else ("embed", "embedding")
  return None


def check_proxy_shapes(
  shapes: Mapping[tuple[str, ...], tuple[int, ...]],
  share: float,
  quantized: Mapping[tuple[str, ...], bool],
) -> None:
  """Raises if `share` > 0 and a quantized tensor's proxy source has not one column per
  input row of it (grouped-query attention's attn/out); `shapes` and `quantized` are
  keyed by parameter names, as `spec.named_leaves` gives them."""
  if share == 0.0:
    return
  num_layers = len({n[0] for n in shapes if _LAYER.match(n[0])})
  for names, shape in shapes.items():
    source = proxy_source(names, num_layers)
    if not quantized.get(names) or source not in shapes or shapes[source][-1] == shape[0]:
      continue
    raise ValueError(
      f"quant.outlier_share={share} is not supported for this model: {'/'.join(names)} has "
      f"{shape[0]} input rows but its proxy {'/'.join(source)} {shapes[source][-1]} columns "
      "(grouped-query attention: each value unit feeds a group of query heads); allowed: "
      "0.0, or targets without 'attn'"
    )


def proxy_std(source_IxR: jax.Array) -> jax.Array:
  """Std of each column of the previous layer's (in, out) matrix: one per hidden unit."""
  return jnp.std(source_IxR.astype(jnp.float32), axis=0)


def outlier_rows(std_R: jax.Array, count: int) -> jax.Array:
  """Boolean mask of the `count` units with the largest proxy std."""
  keep_R = jnp.zeros(std_R.shape, bool)
  if count == 0:
    return keep_R
  _, idx = jax.lax.top_k(std_R, count)
  return keep_R.at[idx].set(True)


def split_rows(w_RxC: jax.Array, keep_R: jax.Array) -> jax.Array:
  """w with the kept rows zeroed: what gets quantized."""
  return jnp.where(keep_R[:, None], jnp.zeros((), w_RxC.dtype), w_RxC)


def merge_rows(w_RxC: jax.Array, quantized_RxC: jax.Array, keep_R: jax.Array) -> jax.Array:
  """Kept rows from the original, the rest from the quantized tensor."""
  return jnp.where(keep_R[:, None], w_RxC, quantized_RxC.astype(w_RxC.dtype))

"""AWQ (Lin et al. 2023, arXiv 2306.00978): activation-aware per-input-channel scales.

Input channels with large activations matter more to the output; AWQ scales them up
before quantizing and back down after: W_hat = diag(1/s) Q(diag(s) W) for an (in, out)
kernel W, with Q the spec's RTN fake quant (same data type and blockwise layout, so the
codes and constants are stored exactly as RTN stores them). As the reference
(mit-han-lab/llm-awq, `auto_scale.py`):
- s = mean|x|^alpha per input channel (`KernelStats.mean_abs_K`), clamped at 1e-4 and
  divided by sqrt(max s * min s), for alpha = j / 20, j = 0 .. 19 (the reference's grid;
  alpha = 0 is s = 1, i.e. RTN, so the search never does worse than RTN on its score);
- the alpha minimising the output error on calibration data is kept. Our score is the sum
  over the group's kernels of sum_x ||(W - W_hat)^T x||^2 = n/2 sum_out dw^T H dw, from
  the Hessian alone (calibration.py). The reference scores the same for out, wi (OPT's
  fc1) and wo, but for q/k/v it scores the attention block's output (through the
  softmax and a float out projection); ours is that of the three projections;
- every group is searched on the original weights, then all scales are applied.
Not done: the reference's weight-clipping search (`auto_clip.py`); blocks keep the
study's absmax constants.

Groups sharing one s (they read the same input) and where s folds (`scale_groups`):

  group            kernels              folds into (no extra storage)     else
  layer_i/qkv      attn query,key,value ln1 (pre-LN, parallel residual)   post_norm: ln1 is
                                                                          applied after the
                                                                          residual add, the
                                                                          input is the stream
  layer_i/out      attn out             attn value's output columns, as
                                        attention is linear in v
  layer_i/wi       mlp wi               ln2 (pre-LN, parallel residual)   post_norm: as qkv
  layer_i/wo       mlp wo               mlp wi's output columns if the    gelu: not
                                        activation is relu (relu(z/s) =   homogeneous
                                        relu(z)/s for s > 0)
  head             untied head          embed_proj_out's output columns
                                        (narrow token embedding), else
                                        ln_f, else (post_norm) the last
                                        layer's ln2, read by the head only
  embed            tied embedding, as   - (stored: the lookup reads the
                   the head (D, V)      table too, Q(E diag(s)) / s)

Modern families (model/README.md): a gated MLP's gate and up (mlp/gate, mlp/wi) read
ln2's output, so layer_i/wi holds both and they share one s; its wo folds into mlp/wi's
(up's) output columns whatever the activation (down(act(gate x) * (up x) / s) =
down(act(gate x) * up x) / s). RMSNorm (Gemma's 1 + w too) folds like LayerNorm: its
scale is divided by s. Grouped-query attention: value has kv_heads x head_dim outputs and
out heads x head_dim inputs, so out's scale does not fold into value; as the reference
(llm-awq skips v -> o when their shapes differ) out then gets no scale (alpha = 0: RTN).
Any targeted kernel outside every group (none of the presets has one) is RTN too.

In a parallel-residual block (GPT-NeoX) ln1 and ln2 are separate LayerNorms that feed
only their own branch, so both fold. A scale that does not fold is applied to the
kernel's input at run time and stored in 16 bits per input channel, once per group
(q/k/v share one vector): `scale_bits` gives those bits. Scales are rounded to float16,
as stored, before they are scored and applied.

Folding into a quantized kernel (value, wi) changes what that kernel quantizes: the
stored producer is Q(diag(s_in) W diag(1/s_next)), with s_next the scale of the group it
absorbs. `fake_quant_scaled` takes both, so the fake-quantized tree (in the original
parametrisation: LayerNorms unchanged, each kernel replaced by what the folded model
computes) is exactly the model a folded checkpoint would run.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kbit_jax.model.presets import Preset
from kbit_jax.quant import reference
from kbit_jax.quant.calibration import EMBED, KernelStats, in_features
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec, is_quantized, named_leaves, unboxed

GRID = 20  # alpha = j / GRID, j = 0 .. GRID - 1, as the reference
SCALE_MIN = 1e-4  # the reference's clamp of mean|x|^alpha
_SCALE_MAX = float(jnp.finfo(jnp.float16).max)
_HIGHEST = jax.lax.Precision.HIGHEST


def check_grid(grid: int) -> None:
  if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
    raise ValueError(
      f"awq grid={grid!r} is not allowed; allowed: an int >= 1 (alphas "
      f"j / grid, j < grid; reference: {GRID})"
    )


@dataclasses.dataclass(frozen=True)
class ScaleGroup:
  """Kernels sharing one AWQ scale, and the parameter that absorbs it (None: stored)."""

  name: str
  kernels: tuple[tuple[str, ...], ...]
  fold_into: tuple[str, ...] | None


def _tied_embed(preset: Preset) -> tuple[str, ...] | None:
  return EMBED if preset.tie_embeddings else None


def scale_groups(preset: Preset, kernel_names: list[tuple[str, ...]]) -> list[ScaleGroup]:
  """The groups of the attn/mlp/head kernels (and a tied embedding) in `kernel_names`
  (see the module docstring)."""
  present = set(kernel_names)
  gated = preset.mlp == "gated"
  grouped_kv = preset.num_kv_heads != preset.num_heads
  groups = []
  for i in range(preset.num_layers):
    layer = f"layer_{i}"

    def kernel(*path, layer=layer):
      return (layer, *path, "kernel")

    def norm(ln, layer=layer):
      return None if preset.post_norm else (layer, ln)

    wi_fold = kernel("mlp", "wi") if gated or preset.activation == "relu" else None
    up = ("wi", "gate") if gated else ("wi",)
    groups += [
      ScaleGroup(
        f"{layer}/qkv", tuple(kernel("attn", p) for p in ("query", "key", "value")), norm("ln1")
      ),
      *(
        ()
        if grouped_kv
        else (ScaleGroup(f"{layer}/out", (kernel("attn", "out"),), kernel("attn", "value")),)
      ),
      ScaleGroup(f"{layer}/wi", tuple(kernel("mlp", p) for p in up), norm("ln2")),
      ScaleGroup(f"{layer}/wo", (kernel("mlp", "wo"),), wi_fold),
    ]
  if preset.token_dim != preset.d_model:
    head_fold = ("embed_proj_out", "kernel")
  elif preset.post_norm:
    head_fold = (f"layer_{preset.num_layers - 1}", "ln2")
  else:
    head_fold = ("ln_f",)
  groups.append(ScaleGroup("head", (("head", "kernel"),), head_fold))
  if _tied_embed(preset):
    groups.append(ScaleGroup("embed", (EMBED,), None))
  return [g for g in groups if all(k in present for k in g.kernels)]


def scale_bits(params_or_shapes: Any, spec: QuantSpec, preset: Preset) -> dict[str, Any]:
  """Bits of the AWQ scales that do not fold: 16 per input channel of each such group
  whose kernels `spec` quantizes; `rows` names every group and where its scale goes."""
  names, leaves, _ = named_leaves(params_or_shapes)
  shapes = {n: tuple(unboxed(leaf).shape) for n, leaf in zip(names, leaves)}
  rows = []
  for g in scale_groups(preset, names):
    quantized = all(is_quantized(k, spec) for k in g.kernels)
    stored = quantized and g.fold_into is None
    bits = in_features(g.kernels[0], shapes[g.kernels[0]]) * UNQUANTIZED_BITS if stored else 0
    rows.append(
      dict(
        group=g.name,
        kernels=["/".join(k) for k in g.kernels],
        fold_into=None if g.fold_into is None else "/".join(g.fold_into),
        quantized=quantized,
        bits=bits,
      )
    )
  return dict(total_bits=sum(r["bits"] for r in rows), rows=rows)


def candidate_scales(mean_abs_K: jax.Array, grid: int = GRID) -> jax.Array:
  """(grid, K) scales s = mean|x|^alpha, normalised and rounded to float16, one row per
  alpha = j / grid; row 0 is all ones."""
  alpha_Ax1 = (jnp.arange(grid, dtype=jnp.float32) / grid)[:, None]
  s_AxK = jnp.maximum(jnp.power(jnp.asarray(mean_abs_K, jnp.float32)[None], alpha_Ax1), SCALE_MIN)
  s_AxK = s_AxK / jnp.sqrt(s_AxK.max(-1, keepdims=True) * s_AxK.min(-1, keepdims=True))
  return jnp.clip(s_AxK, 0, _SCALE_MAX).astype(jnp.float16).astype(jnp.float32)


def fake_quant_scaled(
  w_KxN: jax.Array,
  spec: QuantSpec,
  s_K: jax.Array,
  c_N: jax.Array,
  keep_K: jax.Array | None = None,
  codebook_C: jax.Array | None = None,
) -> jax.Array:
  """diag(1/s) Q(diag(s) W diag(1/c)) diag(c): an AWQ-scaled kernel as the folded model
  computes it (c = 1 unless the kernel absorbs the next group's scale); kept rows exact."""
  w = jnp.asarray(w_KxN, jnp.float32)
  scaled_KxN = w * s_K[:, None] / c_N[None, :]
  y_KxN = reference.fake_quant_tensor(scaled_KxN, spec, keep_K, codebook_C, kernel=True)
  y_KxN = y_KxN / s_K[:, None] * c_N[None, :]
  if keep_K is not None:
    y_KxN = jnp.where(keep_K[:, None], w, y_KxN)
  return y_KxN.astype(w_KxN.dtype)


def output_error(w_KxN: jax.Array, w_hat_KxN: jax.Array, h_KxK: jax.Array) -> jax.Array:
  """sum_out dw^T H dw = 2/n sum_x ||(W - W_hat)^T x||^2 on the calibration inputs."""
  d_KxN = jnp.asarray(w_KxN, jnp.float32) - jnp.asarray(w_hat_KxN, jnp.float32)
  return jnp.sum(jnp.matmul(h_KxK, d_KxN, precision=_HIGHEST) * d_KxN)


@functools.partial(jax.jit, static_argnames="spec")
def _errors(w_KxN, h_KxK, s_AxK, keep_K, codebook_C, *, spec):
  ones_N = jnp.ones(w_KxN.shape[1:], jnp.float32)

  def score(s_K):
    return output_error(
      w_KxN, fake_quant_scaled(w_KxN, spec, s_K, ones_N, keep_K, codebook_C), h_KxK
    )

  return jax.lax.map(score, s_AxK)  # one alpha at a time: memory of one kernel copy


_apply = jax.jit(fake_quant_scaled, static_argnames="spec")


def search_scale(
  kernels: list[tuple[jax.Array, KernelStats, jax.Array | None]], spec: QuantSpec, grid: int = GRID
) -> tuple[jax.Array, float, np.ndarray]:
  """(s_K, alpha, errors per alpha) of one group: `kernels` are (w, stats, keep) of the
  kernels sharing the input; the first alpha of least summed output error wins."""
  check_grid(grid)
  s_AxK = candidate_scales(kernels[0][1].mean_abs_K, grid)
  layout, codebook_C = reference.layout_spec(spec), reference.spec_codebook(spec)
  errors_A = sum(
    np.asarray(_errors(w, stats.h_KxK, s_AxK, keep, codebook_C, spec=layout), np.float64)
    for w, stats, keep in kernels
  )
  best = int(np.argmin(errors_A))
  return s_AxK[best], best / grid, errors_A


def quantize_kernels(
  values: dict[tuple[str, ...], jax.Array],
  stats: dict[tuple[str, ...], KernelStats],
  spec: QuantSpec,
  preset: Preset,
  masks: dict[tuple[str, ...], jax.Array],
  names: list[tuple[str, ...]],
  grid: int = GRID,
) -> tuple[dict[tuple[str, ...], jax.Array], dict[str, tuple[float, jax.Array]]]:
  """AWQ of the kernels `names` (whole groups): (name -> W_hat, group -> (alpha, s_K)).

  `values` holds at least those kernels and the kernels their groups fold into; `masks`
  the outlier rows (`reference.outlier_masks` of the float params).
  """
  todo = set(names)
  groups = [g for g in scale_groups(preset, list(values)) if todo & set(g.kernels)]
  split = [g.name for g in groups if not todo.issuperset(g.kernels)]
  if split:
    raise ValueError(
      f"AWQ scales are shared by whole groups; {split} are only partly in the kernels to quantize"
    )
  scales, alphas = {}, {}
  for g in groups:
    kernels = [(values[k], stats[k], masks.get(k)) for k in g.kernels]
    scales[g.name], alphas[g.name], _ = search_scale(kernels, spec, grid)
  absorbed = {g.fold_into: scales[g.name] for g in groups if g.fold_into in todo}
  layout, codebook_C = reference.layout_spec(spec), reference.spec_codebook(spec)
  own = {k: scales[g.name] for g in groups for k in g.kernels}
  out = {}
  for k in names:  # kernels of no group (grouped-query attn/out): s = 1, i.e. RTN
    w = values[k]
    c_N = absorbed.get(k, jnp.ones(w.shape[1:], jnp.float32))
    s_K = own.get(k, jnp.ones(w.shape[:1], jnp.float32))
    out[k] = _apply(w, layout, s_K, c_N, masks.get(k), codebook_C)
  return out, {g.name: (alphas[g.name], scales[g.name]) for g in groups}

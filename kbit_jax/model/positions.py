"""Position encodings of the model: rotary (with Llama 3's frequency rescaling) and ALiBi.

Rotary is the half-split form (GPT-NeoX's, and Hugging Face Llama's `rotate_half`): the
first `rotary_dims` dims of a head are cut into halves x1 | x2 and rotated pairwise,
(x1 cos - x2 sin, x2 cos + x1 sin), with frequency i of the pair (x1[i], x2[i]) equal to
base^(-2i / rotary_dims). Not the interleaved (x[2i], x[2i+1]) pairing of Meta's and
GPT-J's code: a checkpoint of that pairing permutes its q/k rows; Hugging Face
checkpoints are already permuted to the half-split form, so they import unchanged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from kbit_jax.model.presets import Preset


def inv_frequencies(p: Preset, rotary_dims: int) -> jax.Array:
  """The rotary frequency of each of the rotary_dims / 2 pairs (float32), rescaled as
  Llama 3.1 does for rope_type 'llama3' (transformers' `_compute_llama3_parameters`):
  wavelengths above original / low_freq_factor are divided by `factor`, those below
  original / high_freq_factor kept, those between interpolated smoothly."""
  half = rotary_dims // 2
  inv_freq_R = 1.0 / (p.rotary_base ** (jnp.arange(0, half, dtype=jnp.float32) / half))
  if p.rope_type == "default":
    return inv_freq_R
  factor, low, high = p.rope_factor, p.rope_low_freq_factor, p.rope_high_freq_factor
  original = p.rope_original_max_len
  wavelen_R = 2 * math.pi / inv_freq_R
  scaled_R = jnp.where(wavelen_R > original / low, inv_freq_R / factor, inv_freq_R)
  smooth_R = (original / wavelen_R - low) / (high - low)
  smoothed_R = (1 - smooth_R) * scaled_R / factor + smooth_R * scaled_R
  medium_R = (wavelen_R >= original / high) & (wavelen_R <= original / low)
  return jnp.where(medium_R, smoothed_R, scaled_R)


def rotary(
  x_BxLxHxK: jax.Array,
  positions: jax.Array,
  rotary_dims: int,
  base: float = 10000.0,
  inv_freq_R: jax.Array | None = None,
) -> jax.Array:
  """Half-split rotary embedding on the first `rotary_dims` dims of each head; the
  frequencies are base^(-2i / rotary_dims) unless `inv_freq_R` gives them. `positions`:
  1 x L (every row alike) or B x L (packed rows, model/packing.py)."""
  if rotary_dims == 0:
    return x_BxLxHxK
  x_rot, x_pass = x_BxLxHxK[..., :rotary_dims], x_BxLxHxK[..., rotary_dims:]
  half = rotary_dims // 2
  if inv_freq_R is None:
    inv_freq_R = 1.0 / (base ** (jnp.arange(0, half, dtype=jnp.float32) / half))
  angles_xLx1xR = (positions[..., None].astype(jnp.float32) * inv_freq_R)[..., None, :]
  sin, cos = jnp.sin(angles_xLx1xR), jnp.cos(angles_xLx1xR)  # broadcast over B (if 1) and H
  x1, x2 = x_rot[..., :half].astype(jnp.float32), x_rot[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return jnp.concatenate([rotated.astype(x_BxLxHxK.dtype), x_pass], axis=-1)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """BLOOM's ALiBi slope of each head (Press et al.; HF `build_alibi_tensor`): a geometric
  sequence for the largest power of two <= num_heads, the rest interleaved from the next."""
  closest = 2 ** math.floor(math.log2(num_heads))
  base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
  slopes = [base**i for i in range(1, closest + 1)]
  if closest != num_heads:
    extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
    slopes += [extra_base**i for i in range(1, 2 * (num_heads - closest), 2)]
  return np.asarray(slopes, np.float32)

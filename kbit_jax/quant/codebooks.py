"""k-bit data types as codebooks: sorted normalised values in [-1, 1], one per code.

A weight block is divided by its absolute maximum and each value is replaced by the
nearest code (see `blockwise.py`). The constructions follow the k-bit study (Dettmers &
Zettlemoyer 2023) and its reference implementation, bitsandbytes' `functional.py`
(`create_linear_map`, `create_fp8_map`, `create_dynamic_map`, `create_normal_map`),
generalised from 8 (or 4) bits to any k in 2..8:

- `int`: symmetric absmax integer, j / (2^(k-1) - 1) for |j| <= 2^(k-1) - 1: 2^k - 1 codes
  with an exact zero, as `create_linear_map(signed=True)` (which always drops one code
  below 8 bits so that zero is exact and the grid symmetric; at 8 bits only with its
  default add_zero=True). The unused code keeps the type symmetric, so a block's absmax
  maps to +-1 whatever its sign.
- `int_centered`: the same codebook; `blockwise.fake_quant(centered=True)` first
  subtracts each block's mean (stored as a second 16-bit constant per block).
- `float`: sign, e exponent bits, k-1-e mantissa bits, subnormals, exactly as
  `create_fp8_map` builds them (bias 2^(e-1), magnitudes (1 + m) 2^(bias + 1 - E) for
  E >= 1 and m 2^-bias for E = 0), divided by the largest value. Note that this spaces the
  subnormals 4x closer to zero than IEEE would; we keep it because it is what the study
  ran. +0 and -0 collapse, so 2^k - 1 distinct values.
- `dynamic`: dynamic tree (Dettmers 2016) as `create_dynamic_map(signed=True,
  max_exponent_bits=k-1, total_bits=k)`: decimal exponents 10^-(k-2) .. 10^0, each with
  2^i linear fraction values (midpoints of linspace(0.1, 1)), plus 0 and 1. Asymmetric:
  +1 is a code, -1 is not.
- `nf`: normal float (QLoRA): 2^(k-1) positive and 2^(k-1) - 1 negative quantiles of
  N(0, 1) plus an exact zero, divided by the largest. `create_normal_map`'s offset
  0.9677083 for 4 bits is 1 - (1/(2(2^k - 1)) + 1/(2 2^k)) / 2; we use that formula for
  every k (it gives 0.9677083 at k = 4).
- `quantile`: data dependent, see `quantile_codebook`; `codebook('quantile', k)` raises.

`padded` extends any codebook to `CODEBOOK_SIZE` entries with +inf, so every (k, dtype)
gives an array of one shape: `blockwise` takes the codebook as a traced array argument
and one compiled function serves every k and data type of a block layout.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtri

DTYPES = ("int", "int_centered", "float", "dynamic", "nf", "quantile")
DATA_DTYPES = ("quantile",)  # need the tensor's values to build their codebook
BITS = tuple(range(2, 9))  # k of a quantized type; 16 means no quantization
CODEBOOK_SIZE = 2 ** max(BITS)  # codes index a padded codebook with uint8


def _check_bits(bits: int) -> None:
  if bits not in BITS:
    raise ValueError(
      f"quant.bits={bits!r} has no codebook; allowed: {list(BITS)} (16 = unquantized)"
    )


def study_exponent_bits(bits: int) -> int:
  """Float exponent bits the study uses for k: 2 for k = 3, 3 for k = 4..8.

  The study does not run k = 2; a 2-bit float has 1 sign bit and one more bit, so e = 1
  (no mantissa), which equals the 2-bit int {-1, 0, 1}.
  """
  _check_bits(bits)
  return {2: 1, 3: 2}.get(bits, 3)


def exponent_bits_range(bits: int) -> range:
  """Valid float exponent bits for k: 1..k-1 (at least one exponent bit, >= 0 mantissa)."""
  _check_bits(bits)
  return range(1, bits)


def _linear(bits: int) -> np.ndarray:
  half = 2 ** (bits - 1) - 1
  return np.arange(-half, half + 1) / half


def _float(bits: int, exponent_bits: int) -> np.ndarray:
  mantissa_bits = bits - 1 - exponent_bits
  bias = 2 ** (exponent_bits - 1)
  magnitudes = []
  for exponent in range(2**exponent_bits):
    for pattern in itertools.product((0, 1), repeat=mantissa_bits):
      fraction = sum(b * 2.0 ** -(i + 1) for i, b in enumerate(pattern))
      if exponent == 0:
        magnitudes.append(fraction * 2.0**-bias)
      else:
        magnitudes.append((1 + fraction) * 2.0 ** (bias + 1 - exponent))
  magnitudes = np.asarray(magnitudes)
  return np.concatenate([-magnitudes, magnitudes]) / magnitudes.max()


def _dynamic(bits: int) -> np.ndarray:
  exponent_bits = bits - 1
  values = [0.0, 1.0]
  for i in range(exponent_bits):
    boundaries = np.linspace(0.1, 1, 2**i + 1)
    means = (boundaries[:-1] + boundaries[1:]) / 2
    scale = 10.0 ** (-(exponent_bits - 1) + i)
    values += list(scale * means) + list(-scale * means)
  return np.asarray(values)


def _normal(bits: int) -> np.ndarray:
  n = 2**bits
  offset = 1 - (1 / (2 * (n - 1)) + 1 / (2 * n)) / 2
  positive = ndtri(np.linspace(offset, 0.5, n // 2 + 1)[:-1])
  negative = -ndtri(np.linspace(offset, 0.5, n // 2)[:-1])
  values = np.concatenate([positive, [0.0], negative])
  return values / values.max()


def codebook(dtype: str, bits: int, exponent_bits: int = 0) -> np.ndarray:
  """Sorted distinct normalised codes (float32) of a data-free type; <= 2^bits values.

  `exponent_bits` is for `float` only; 0 means `study_exponent_bits(bits)`.
  """
  return _codebook(dtype, bits, exponent_bits).copy()


@functools.lru_cache(maxsize=None)
def _codebook(dtype: str, bits: int, exponent_bits: int) -> np.ndarray:
  if dtype not in DTYPES:
    raise ValueError(f"quant.dtype={dtype!r} is unknown; allowed: {list(DTYPES)}")
  _check_bits(bits)
  if dtype in DATA_DTYPES:
    raise ValueError(
      f"quant.dtype={dtype!r} is built from a tensor's values: use "
      "codebooks.quantile_codebook(x, bits)"
    )
  if exponent_bits and dtype != "float":
    raise ValueError(
      f"quant.exponent_bits={exponent_bits} applies to dtype='float' only, "
      f"not {dtype!r}; allowed: 0"
    )
  if dtype == "float":
    e = exponent_bits or study_exponent_bits(bits)
    if e not in exponent_bits_range(bits):
      raise ValueError(
        f"quant.exponent_bits={exponent_bits} is impossible for a {bits}-bit "
        f"float; allowed: 0 (study default) or "
        f"{list(exponent_bits_range(bits))}"
      )
    values = _float(bits, e)
  else:
    values = {"int": _linear, "int_centered": _linear, "dynamic": _dynamic, "nf": _normal}[dtype](
      bits
    )
  # float32 first, then unique: values equal in float32 (+0/-0) are one code; + 0 makes it +0.
  return np.unique(values.astype(np.float32)) + np.float32(0)


def padded(codebook_C: jax.Array | np.ndarray, size: int = CODEBOOK_SIZE) -> jax.Array:
  """Pads the last axis with +inf to `size` codes (float32).

  The midpoint after the last real code is then +inf, so nearest-code search never
  selects a padding entry: codebooks of every k share one shape and one compiled kernel.
  """
  codebook_C = jnp.asarray(codebook_C, jnp.float32)
  pad = size - codebook_C.shape[-1]
  if pad < 0:
    raise ValueError(f"a codebook of {codebook_C.shape[-1]} codes does not fit {size} slots")
  widths = [(0, 0)] * (codebook_C.ndim - 1) + [(0, pad)]
  return jnp.pad(codebook_C, widths, constant_values=jnp.inf)


def quantile_codebook(x: jax.Array, bits: int) -> jax.Array:
  """SRAM-quantile codes of normalised values, along the last axis; jittable.

  The 2^k codes are the centres of 2^k bins of equal probability mass: with bin edges at
  the quantiles Q(j / 2^k), j = 0 .. 2^k (Q(0) the minimum, Q(1) the maximum, linear
  interpolation between order statistics), q_i = (Q(i / 2^k) + Q((i + 1) / 2^k)) / 2.
  The study writes q_i = ½[Q(i/(2^k+1)) + Q((i+1)/(2^k+1))] without the index range;
  taken literally for i = 0 .. 2^k - 1 it uses the minimum but never the maximum, so the
  codes lean negative and the top code falls well short of the largest weight (worse than
  nf on Gaussian weights, where the study found quantile among the best types). Edges at
  j / 2^k keep the equal-mass property and are symmetric. The codes are then divided by
  max |q_i| so that, like every type, they reach -1 or +1. `x` should be
  absmax-normalised values (`blockwise.normalized`).
  Shape (..., n) -> (..., 2^k), sorted; neighbouring codes may coincide (e.g. 256 codes
  from a block of 64 values), which `blockwise` handles. NaNs are ignored (use them to
  leave values out). Pass a flattened tensor for one codebook per tensor, or (blocks, B)
  for one per block.
  """
  _check_bits(bits)
  return quantile_codebook_padded(x, bits)[..., : 2**bits]


def quantile_codebook_padded(x: jax.Array, bits: int | jax.Array) -> jax.Array:
  """`padded(quantile_codebook(x, bits))`, computed with `bits` traced: one compiled
  function serves every k of a block layout (the grid's quantile cells).

  The edges j / 2^k are the edges j 2^(8-k) / 256, exactly in float32, so the quantiles
  are taken once at the 257 edges of 256 bins and code i of k bits pairs edges i s and
  (i + 1) s, s = 2^(8-k); codes past 2^k are +inf. Shape (..., n) -> (..., 256)."""
  n = CODEBOOK_SIZE
  levels_P = jnp.arange(n + 1, dtype=jnp.float32) / n
  q_Px = jnp.nanquantile(jnp.asarray(x, jnp.float32), levels_P, axis=-1)
  q_xP = jnp.moveaxis(q_Px, 0, -1)
  stride = 2 ** (max(BITS) - jnp.asarray(bits, jnp.int32))
  i_C = jnp.arange(n, dtype=jnp.int32)
  used_C = i_C < n // stride
  lo_C = jnp.where(used_C, i_C * stride, 0)
  q_xC = (q_xP[..., lo_C] + q_xP[..., lo_C + jnp.where(used_C, stride, 0)]) / 2
  # Sorted by construction, not by the compiler's rounding: jnp.nanquantile interpolates
  # equal order statistics as a(1-t) + at, which XLA at -O0 rounds to 0.99999994 beside
  # 1.0 (tests/test_codebooks.py); other backends fuse and round in their own ways.
  # Unused slots sort last as NaN (as NaNs do), then become +inf padding.
  q_xC = jnp.where(used_C, jnp.sort(jnp.where(used_C, q_xC, jnp.nan), axis=-1), jnp.inf)
  absmax_x1 = jnp.max(jnp.where(used_C, jnp.abs(q_xC), 0.0), axis=-1, keepdims=True)
  return q_xC / jnp.where(absmax_x1 > 0, absmax_x1, 1.0)

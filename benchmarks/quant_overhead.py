"""What k-bit weights cost on CPU: convert time, stored bytes, eval tokens/s vs float.

One run prints, for a Pythia-shaped preset with random weights (jit init):
  1. convert time (`aqt.convert`, PTQ CONVERT: float params -> packed codes + scales),
     first call (with compile) and second call, and the measured bytes of the converted
     storage next to `bits.bits_report`'s computed bits;
  2. eval throughput on one batch: float model, (a) AQT SERVE (`aqt.serve_apply`, kernels
     decoded inside every matmul, every step), (b) the study's PTQ eval: dequantize once
     (`aqt.dequantize_params`), then the float model, (c) TRAIN mode on float params
     (quantize every step: the QAT forward); all as ratios to float;
  3. one MLP matmul (d_model x d_ff) in TRAIN mode: blockwise at the quantizer (what
     `aqt.py` does) vs AQT's contraction-axis tiling (`AqtDotGeneral(tiling_fn=...)`,
     AQT int numerics, per-tile scales applied to the K/B tile outputs) vs float.

  python benchmarks/quant_overhead.py                       # 160m, int 4-bit, B=64
  python benchmarks/quant_overhead.py --preset 70m --dtype nf --steps 5

About a minute on 2 CPU cores with the defaults (batch 2 x 128 tokens, 10 rounds).
"""

from __future__ import annotations

import argparse
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from aqt.jax.v2 import config as aqt_config
from aqt.jax.v2 import tiled_dot_general
from aqt.jax.v2.flax import aqt_flax

from kbit_jax.model.presets import get_preset, param_counts
from kbit_jax.model.transformer import Transformer
from kbit_jax.quant import aqt, bits
from kbit_jax.quant.spec import QuantSpec


def timed(fn, *args) -> tuple[float, object]:
  """(seconds, output) of one call, waiting for the result."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0, out


def best_of(calls: dict[str, tuple], rounds: int) -> dict[str, float]:
  """Fastest of `rounds` calls per variant (after one warm-up call each), interleaved
  in a rotating order: the minimum over interleaved rounds keeps the comparison fair
  on a shared, noisy CPU."""
  for fn, *args in calls.values():
    timed(fn, *args)
  names = list(calls)
  best = {name: float("inf") for name in names}
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      fn, *args = calls[name]
      best[name] = min(best[name], timed(fn, *args)[0])
  return best


def _contraction_tiling(blocksize: int):
  def tiling_fn(lhs, rhs, dimension_numbers):
    (lhs_ca, rhs_ca), _ = dimension_numbers

    def tile(axis):
      return tiled_dot_general.AxisTiling(axis=axis, tile_size=blocksize)

    return tiled_dot_general.Cfg(
      lhs=tiled_dot_general.TensorTiling(contraction_axes=[tile(lhs_ca[0])], remaining_axes=[]),
      rhs=tiled_dot_general.TensorTiling(contraction_axes=[tile(rhs_ca[0])], remaining_axes=[]),
    )

  return tiling_fn


def matmul_comparison(p, spec: QuantSpec, tokens: int, repeats: int) -> None:
  x_TxD = jax.random.normal(jax.random.PRNGKey(2), (tokens, p.d_model), jnp.float32)
  w_DxF = 0.02 * jax.random.normal(jax.random.PRNGKey(3), (p.d_model, p.d_ff), jnp.float32)

  def dense(dg_cls):
    return nn.Dense(p.d_ff, use_bias=False, dot_general_cls=dg_cls)

  tiled_cfg = aqt_config.dot_general_make(lhs_bits=None, rhs_bits=spec.bits)
  variants = {
    "float": None,
    "quantizer-level blocks (aqt.py)": aqt.make_dot_general_cls(
      QuantSpec(bits=spec.bits, dtype="int", blocksize=spec.blocksize, targets="mlp")
    ),
    f"AQT tiling_fn, K/{spec.blocksize} tiles": functools.partial(
      aqt_flax.AqtDotGeneral,
      tiled_cfg,
      prng_name=None,
      tiling_fn=_contraction_tiling(spec.blocksize),
    ),
  }
  calls = {}
  for name, dg_cls in variants.items():
    # KbitDotGeneral picks its layers by module path: put the Dense under an "mlp".
    layer = nn.Sequential([dense(dg_cls)], name="mlp")
    calls[name] = (jax.jit(layer.apply), {"params": {"layers_0": {"kernel": w_DxF}}}, x_TxD)
  best = best_of(calls, repeats)
  print(
    f"\n3) one {p.d_model}x{p.d_ff} matmul, {tokens} tokens, int{spec.bits} "
    f"B={spec.blocksize}, TRAIN forward (ms, best of {repeats})"
  )
  for name, t in best.items():
    print(f"   {name:<34} {1e3 * t:9.2f}   {t / best['float']:5.2f}x float")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="160m")
  ap.add_argument("--dtype", default="int")
  ap.add_argument("--bits", type=int, default=4)
  ap.add_argument("--blocksize", type=int, default=64)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--steps", type=int, default=10)
  args = ap.parse_args()
  p = get_preset(args.preset)
  spec = QuantSpec(bits=args.bits, dtype=args.dtype, blocksize=args.blocksize)
  print(
    f"preset {args.preset} ({param_counts(p)['total'] / 1e6:.1f}M params), "
    f"{spec.dtype} k={spec.bits} B={spec.blocksize} targets={','.join(spec.targets)}, "
    f"weights-only; batch {args.batch}x{args.seq}; {jax.devices()[0].device_kind} x"
    f"{jax.device_count()}"
  )

  tokens_BxL = jax.random.randint(jax.random.PRNGKey(1), (args.batch, args.seq), 0, p.vocab_size)
  model = Transformer(p)
  init = jax.jit(lambda key: nn.meta.unbox(model.init(key, tokens_BxL[:1, :8]))["params"])
  t_init, params = timed(init, jax.random.PRNGKey(0))
  print(f"random init (jit, compile + run): {t_init:.1f} s")

  print("\n1) convert (float params -> packed codes + scales)")
  first, qparams = timed(aqt.convert, params, p, spec)
  again, qparams = timed(aqt.convert, params, p, spec)
  print(f"   first call (compile + run) {first:7.2f} s   second call {again:7.2f} s")
  measured = aqt.stored_bytes(qparams)
  report = bits.bits_report({"params": params}, spec)
  q_bits = sum(r["bits"] for r in report["rows"] if r["quantized"])
  print(
    f"   quantized tensors: measured {measured['quantized'] / 2**20:8.2f} MiB  "
    f"computed {q_bits / 8 / 2**20:8.2f} MiB "
    f"({report['quantized_bits_per_param']:.3f} bits/param over "
    f"{report['quantized_params'] / 1e6:.1f}M params)"
  )
  print(
    f"   whole model: measured {measured['total'] / 2**20:8.2f} MiB (unquantized params "
    f"kept float32) computed {report['total_bits'] / 8 / 2**20:8.2f} MiB (16-bit)"
  )

  n_tokens = tokens_BxL.size
  float_apply = jax.jit(lambda prm, t: model.apply({"params": prm}, t))
  t_deq_first, deq_params = timed(aqt.dequantize_params, qparams, p, spec)
  t_deq, deq_params = timed(aqt.dequantize_params, qparams, p, spec)
  qat_model = Transformer(p, dot_general_cls=aqt.make_dot_general_cls(spec))
  train_apply = jax.jit(lambda prm, t: qat_model.apply({"params": prm}, t))
  best = best_of(
    {
      "float": (float_apply, params, tokens_BxL),
      "serve": (aqt.serve_apply, qparams, tokens_BxL, p, spec),
      "once": (float_apply, deq_params, tokens_BxL),
      "train": (train_apply, params, tokens_BxL),
    },
    args.steps,
  )

  def rate(name):
    return n_tokens / best[name]

  def ratio(name):
    return best["float"] / best[name]

  print(f"\n2) eval throughput, tokens/s (best of {args.steps} interleaved steps)")
  print(f"   float                          {rate('float'):10.1f}")
  print(
    f"   (a) AQT SERVE, decode per step {rate('serve'):10.1f}   ratio {ratio('serve'):5.2f}x float"
  )
  print(
    f"   (b) dequantize once + float    {rate('once'):10.1f}   ratio "
    f"{ratio('once'):5.2f}x float  (dequantize: {t_deq:.2f} s, "
    f"{t_deq_first:.2f} s with compile)"
  )
  print(
    f"   (c) TRAIN, quantize per step   {rate('train'):10.1f}   ratio {ratio('train'):5.2f}x float"
  )
  matmul_comparison(p, spec, n_tokens, 3 * args.steps)


if __name__ == "__main__":
  main()

"""What GPTQ and AWQ cost on CPU: per layer, and per grid cell against RTN.

One run prints, for a preset with random weights (jit init) and random calibration
tokens (the `160m` preset by default: 12 layers of d_model 768, d_ff 3072):
  1. per layer (every layer has the same shapes): GPTQ of each of its kernels (q, k, v,
     out, wi, wo), first call (with its compile) and the warm time, and the memory XLA
     plans for it (`compiled.memory_analysis()`: arguments + outputs + temporaries), and the
     process's peak resident memory;
  2. per grid cell, quantizing the whole model as the grid does (targets attn,mlp, int,
     k = 3 then k = 4 so the second cell is warm like every cell after a layout's first):
     RTN (`reference.fake_quant_params`, jitted), GPTQ and AWQ (`methods.quantize_params`
     with fast-mode statistics), the calibration pass (once per model in the grid's fast
     mode), and one perplexity evaluation over `--eval_tokens` tokens (what every cell
     runs whatever its method); printed as ratios to RTN of the quantize step and of the
     whole cell (quantize + evaluation).

  python benchmarks/gptq_cost.py                        # 160m, the whole model
  python benchmarks/gptq_cost.py --layers 2             # the first 2 layers only (faster)
  python benchmarks/gptq_cost.py --preset 70m --sequences 16 --seq_len 512

With the defaults 20 minutes on 2 CPU cores shared at load 9 (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from kbit_jax.model.presets import get_preset, param_counts
from kbit_jax.model.transformer import Transformer, next_token_nll
from kbit_jax.quant import calibration, gptq, methods, reference
from kbit_jax.quant.spec import QuantSpec, is_quantized, named_leaves, unboxed


def timed(fn, *args, **kwargs) -> tuple[float, object]:
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args, **kwargs))
  return time.perf_counter() - t0, out


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def planned_mib(w, h, spec) -> float:
  """XLA's buffers for one GPTQ call: arguments + outputs + temporaries, MiB."""
  layout, codebook = reference.layout_spec(spec), jnp.asarray(reference.spec_codebook(spec))
  keep = jnp.zeros(w.shape[:1], bool)
  lowered = gptq._gptq.lower(
    w,
    h,
    codebook,
    keep,
    jnp.float32(gptq.PERCDAMP),
    jnp.bool_(False),
    spec=layout,
    block_columns=gptq.BLOCK_COLUMNS,
  )
  m = lowered.compile().memory_analysis()
  if m is None:
    return float("nan")
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return total / 2**20


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--preset", default="160m")
  ap.add_argument("--layers", type=int, default=0, help="first N layers only (0 = all)")
  ap.add_argument("--sequences", type=int, default=8, help="calibration sequences")
  ap.add_argument("--seq_len", type=int, default=256)
  ap.add_argument("--eval_tokens", type=int, default=4096, help="tokens of one evaluation")
  ap.add_argument("--blocksize", type=int, default=64)
  args = ap.parse_args()

  preset = get_preset(args.preset)
  if args.layers:
    preset = dataclasses.replace(preset, num_layers=min(args.layers, preset.num_layers))
  model = Transformer(preset)
  t, params = timed(jax.jit(model.init), jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  counts = param_counts(preset)
  print(
    f"# {args.preset}: {preset.num_layers} layers, d_model {preset.d_model}, d_ff "
    f"{preset.d_ff}, {counts['total']:,} parameters (random, init {t:.1f}s); "
    f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
  )
  rng = np.random.default_rng(0)
  batch = min(4, args.sequences)
  tokens = rng.integers(
    0, preset.vocab_size, (args.sequences // batch, batch, args.seq_len), dtype=np.int32
  )
  t_calib, calib = timed(calibration.calibrate, model, params, tokens)
  t_calib2, _ = timed(calibration.calibrate, model, params, tokens)
  n_tokens = tokens.size
  print(
    f"calibration: {args.sequences} x {args.seq_len} = {n_tokens:,} random tokens, "
    f"{t_calib:.1f}s first call, {t_calib2:.1f}s warm (once per model in fast mode)"
  )

  # 1. GPTQ per layer.
  spec = QuantSpec(bits=4, dtype="int", blocksize=args.blocksize, targets="attn,mlp")
  names, leaves, _ = named_leaves(params)
  values = {n: unboxed(leaf) for n, leaf in zip(names, leaves)}
  layer = [n for n in names if n[0] == "layer_0" and is_quantized(n, spec)]
  print(f"\n## GPTQ per layer (layer_0; int4, B={args.blocksize}, percdamp 0.01)")
  print(f"{'kernel':<24} {'shape':>12} {'first s':>8} {'warm s':>8} {'XLA MiB':>8}")
  total_first = total_warm = 0.0
  for n in layer:
    w, h = values[n], calib.kernels[n].h_KxK
    first, _ = timed(gptq.quantize_kernel, w, h, spec, name="/".join(n))
    warm, _ = timed(gptq.quantize_kernel, w, h, spec, name="/".join(n))
    total_first, total_warm = total_first + first, total_warm + warm
    print(
      f"{'/'.join(n[1:]):<24} {str(tuple(w.shape)):>12} {first:8.2f} {warm:8.2f} "
      f"{planned_mib(w, h, spec):8.1f}"
    )
  h_bytes = sum(calib.kernels[n].h_KxK.nbytes for n in layer)
  print(
    f"{'layer':<24} {'':>12} {total_first:8.2f} {total_warm:8.2f}   Hessians of the "
    f"layer {h_bytes / 2**20:.1f} MiB; peak RSS so far {peak_rss_mib():.0f} MiB"
  )

  # 2. Per cell, whole model: RTN, GPTQ, AWQ (k=3 cold, k=4 warm), and one evaluation.
  rtn_fn = jax.jit(reference.fake_quant_params, static_argnums=1)
  cells = [QuantSpec(bits=k, dtype="int", blocksize=args.blocksize) for k in (3, 4)]
  apply = jax.jit(model.apply)
  eval_batch = max(1, args.eval_tokens // args.seq_len)
  eval_tokens = jnp.asarray(
    rng.integers(0, preset.vocab_size, (eval_batch, args.seq_len + 1), dtype=np.int32)
  )

  def evaluate(p):
    logits = apply(p, eval_tokens[:, :-1])
    return next_token_nll(logits, eval_tokens[:, 1:]).mean()

  t_eval_first, _ = timed(evaluate, params)
  t_eval, _ = timed(evaluate, params)

  def rtn(s):
    return rtn_fn(params, reference.layout_spec(s), reference.spec_codebook(s))

  def gptq_cell(s):
    return methods.quantize_params(params, s, "gptq", calib)

  def awq_cell(s):
    return methods.quantize_params(params, s, "awq", calib, preset=preset)

  times = {}
  for name, fn in (("rtn", rtn), ("gptq", gptq_cell), ("awq", awq_cell)):
    cold, _ = timed(fn, cells[0])
    warm, _ = timed(fn, cells[1])
    times[name] = (cold, warm)
  print(
    f"\n## per grid cell ({args.preset}, {preset.num_layers} layers, targets attn,mlp, int, "
    f"B={args.blocksize}; k=3 first cell, k=4 warm)"
  )
  print(
    f"evaluation of {eval_batch * args.seq_len:,} tokens: {t_eval:.2f}s warm "
    f"({t_eval_first:.1f}s first)"
  )
  print(
    f"{'method':<6} {'first s':>8} {'warm s':>8} {'quantize / rtn':>15} {'cell / rtn cell':>16}"
  )
  rtn_warm = times["rtn"][1]
  for name, (cold, warm) in times.items():
    print(
      f"{name:<6} {cold:8.2f} {warm:8.2f} {warm / rtn_warm:15.1f} "
      f"{(warm + t_eval) / (rtn_warm + t_eval):16.2f}"
    )
  print(
    f"calibration pass (fast mode, once per model): {t_calib2:.1f}s warm = "
    f"{t_calib2 / rtn_warm:.1f} x an RTN quantize; peak RSS {peak_rss_mib():.0f} MiB"
  )


if __name__ == "__main__":
  main()

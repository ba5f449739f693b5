"""One-GPU check: bf16 training throughput and MFU of a ~350M preset, against PyTorch.

One run prints, on the default GPU:
  peak     this GPU's measured bf16 matmul FLOP/s (8192^3, best of 10), the MFU denominator;
  check    cuDNN flash attention (model.attention="cudnn") against the "einsum" attention
           on a small preset in bfloat16: relative L2 error of the logits (bf16: ~1e-2);
  ours     `kbit_jax.train.Trainer.step` (forward, backward, clip + AdamW, donated state;
           float32 parameters, bfloat16 compute, cuDNN attention) on embedded-corpus batches;
  peer     HF `GPT2LMHeadModel` with the same dims in PyTorch on the same GPU: float32
           parameters, bfloat16 autocast, SDPA (flash) attention, fused AdamW, same batches.
Rounds alternate ours and the peer; the table has medians. MFU = flops_per_token(training)
x tokens/s / measured peak; "MFU causal" counts attention's lower triangle only (what a
causal flash kernel computes; the stricter number).

  python benchmarks/gpu_check.py                       # gpt2-medium (355M), 16 x 1024
  python benchmarks/gpu_check.py --preset 410m --batch 8 --seq_len 2048
"""

from __future__ import annotations

import argparse
import faulthandler
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from train_throughput import our_runner, peer_runner, timed

from kbit_jax.model import flops, presets, transformer


def attention_check(preset: str = "s7", seq_len: int = 256) -> float:
  """Relative L2 error of cuDNN-attention logits against einsum-attention logits (bf16)."""
  p = presets.get_preset(preset)
  tokens_BxL = jax.random.randint(jax.random.key(0), (4, seq_len), 0, p.vocab_size)
  params = transformer.Transformer(p).init(jax.random.key(1), tokens_BxL)
  logits = {
    impl: np.asarray(
      jax.jit(transformer.Transformer(p, jnp.bfloat16, attention=impl).apply)(params, tokens_BxL),
      np.float64,
    )
    for impl in ("einsum", "cudnn")
  }
  assert np.isfinite(logits["cudnn"]).all(), "cuDNN attention gave non-finite logits"
  return float(
    np.linalg.norm(logits["cudnn"] - logits["einsum"]) / np.linalg.norm(logits["einsum"])
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="gpt2-medium")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--steps", type=int, default=10, help="timed steps per side per round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--attention", default="cudnn", choices=transformer.ATTENTION_IMPLS)
  parser.add_argument(
    "--scan_layers",
    action="store_true",
    help="model.scan_layers: one nn.scan over the blocks (compile time independent of depth)",
  )
  parser.add_argument("--no_peer", action="store_true")
  parser.add_argument("--no_check", action="store_true", help="skip the attention check")
  parser.add_argument(
    "--watchdog_s",
    type=float,
    default=120,
    help="print every thread's Python stack to stderr every this many "
    "seconds (0: never), to see where a slow compile or step is",
  )
  args = parser.parse_args()
  if args.watchdog_s:
    faulthandler.dump_traceback_later(args.watchdog_s, repeat=True)
  print(f"jax {jax.__version__}, devices {jax.devices()}", flush=True)
  p = presets.get_preset(args.preset)
  tokens_per_step = args.batch * args.seq_len
  fpt = flops.flops_per_token(p, args.seq_len, training=True)
  fpt_causal = flops.flops_per_token(p, args.seq_len, training=True, causal_half=True)

  peak = flops.measure_matmul_peak(jnp.bfloat16, n=8192, repeats=10)
  print(f"bf16 matmul peak (8192^3, best of 10): {peak / 1e12:.0f} TFLOP/s", flush=True)
  if args.attention == "cudnn" and not args.no_check:
    print(
      f"cuDNN vs einsum attention, bf16 logits, relative L2 error: {attention_check():.2e}",
      flush=True,
    )

  t0 = time.perf_counter()
  ours, batches = our_runner(
    args.preset, args.batch, args.seq_len, "bfloat16", args.attention, args.scan_layers
  )
  print(f"ours: sharded init (compile + run) {time.perf_counter() - t0:.1f} s", flush=True)
  t0 = time.perf_counter()
  ours(2)
  print(f"ours: train step compile + 2 steps {time.perf_counter() - t0:.1f} s", flush=True)
  peer = None
  if not args.no_peer:
    # On a machine without a GPU (trying the script out) both sides run on the CPU.
    peer = peer_runner(p, batches, device="cuda" if jax.default_backend() == "gpu" else "cpu")
    peer(2)
  rows = []
  for r in range(args.rounds):
    ours_tps = timed(ours, args.steps, tokens_per_step)[0]
    peer_tps = timed(peer, args.steps, tokens_per_step)[0] if peer else float("nan")
    rows.append((ours_tps, peer_tps))
    print(
      f"  round {r + 1}/{args.rounds}: ours {ours_tps:,.0f} tok/s (MFU "
      f"{ours_tps * fpt / peak:.3f}), peer {peer_tps:,.0f} tok/s (MFU "
      f"{peer_tps * fpt / peak:.3f})",
      flush=True,
    )
  med = statistics.median
  ours_tps, peer_tps = med(r[0] for r in rows), med(r[1] for r in rows)
  header = (
    "preset",
    "params",
    "batch x seq",
    "attention",
    "ours tok/s",
    "peer tok/s",
    "ratio",
    "MFU ours",
    "MFU causal",
    "MFU peer",
    "peak TFLOP/s",
  )
  values = (
    args.preset,
    f"{presets.param_counts(p)['total'] / 1e6:.0f}M",
    f"{args.batch} x {args.seq_len}",
    args.attention,
    f"{ours_tps:,.0f}",
    f"{peer_tps:,.0f}",
    f"{med(r[0] / r[1] for r in rows):.2f}",
    f"{ours_tps * fpt / peak:.3f}",
    f"{ours_tps * fpt_causal / peak:.3f}",
    f"{peer_tps * fpt / peak:.3f}",
    f"{peak / 1e12:.0f}",
  )
  widths = [max(len(h), len(v)) for h, v in zip(header, values)]
  for line in (header, values):
    print("  ".join(s.rjust(w) for s, w in zip(line, widths)), flush=True)


if __name__ == "__main__":
  main()

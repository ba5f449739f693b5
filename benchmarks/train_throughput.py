"""Training throughput on CPU: our jitted train step vs HF `transformers` GPT-2 in PyTorch.

One run prints, for one preset, batch and sequence length:
  ours   `kbit_jax.train.Trainer.step` (the step `kbit train` runs: forward, backward,
         clip + AdamW, donated state) on real batches of the embedded corpus, one device;
  peer   `GPT2LMHeadModel` with the same dims (layers, d_model, heads, d_ff, vocab,
         max_len; tied embeddings; exact GELU; dropout 0), the same loss on the same
         batches, `clip_grad_norm_` + `AdamW`, PyTorch CPU float32;
  plain  a plain Flax GPT-2 with the same dims (benchmarks/plain_gpt.py: nanoGPT written
         in flax.linen + optax, nothing of ours), the reference the MFU target names;
  peak   this machine's float32 matmul peak, `kbit_jax.flops.measure_matmul_peak`.
Rounds alternate ours, plain, peer, ours, ... (warmup and compile excluded) because the
machine is shared and noisy; the table shows medians over rounds, and each ratio is the
median of the per-round ratios. MFU = flops_per_token(training) x tokens/s / peak, with
the peak measured at the start of each round (same contention as that round's timings).
Like `kbit train`, the process first sets kbit_jax/train/host_memory.py's allocator options
(all three sides share them; `--no_retain_host_memory` keeps glibc's defaults).

  python benchmarks/train_throughput.py                      # s7, batch 32 x 128
  python benchmarks/train_throughput.py --preset s6 --batch 16 --seq_len 256 --rounds 7
  python benchmarks/train_throughput.py --dims 3,512,8,2048    # a wider ~10M shape
  python benchmarks/train_throughput.py --preset s4 --second l4 --no_peers   # GPT vs Llama

`--second PRESET` times our step for a second preset in the same rounds (after the first
preset's sides), with its own FLOPs per token, and prints its row and the ratio of the two
(tok/s and MFU; medians of the per-round ratios), e.g. a Llama-style `l*` preset against
the GPT-style `s*` of the same total parameters. `--no_peers` leaves out plain and peer.

Default 32 x 128 = 4096 tokens a step is configs/lm.py's default shape: every weight matmul
has 4096 rows (near the matmul peak on its own), attention's L x L work stays a small share
(at 16 x 256 it doubles per token), and a step of s7 takes ~1.2-4 s on 2 shared cores, so
5 rounds of 3 steps on each of the three sides finish in about 2 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the peer is built from a config, never fetched
# PyTorch's OpenMP threads spin-wait by default; on a shared, oversubscribed machine that
# made the peer 2-3x slower (measured), so its idle threads sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import numpy as np
import plain_gpt

from kbit_jax.config import files
from kbit_jax.model import flops, presets
from kbit_jax.train import data, host_memory, loop, sharding

lm = files.load_module(pathlib.Path(__file__).resolve().parents[1] / "configs" / "lm.py")

THREADS = 2


def our_runner(
  preset: str,
  batch: int,
  seq_len: int,
  dtype: str = "float32",
  attention: str = "einsum",
  scan_layers: bool = False,
):
  """(run(n_steps), batches) for our Trainer on a one-device mesh."""
  config = lm.get_config(f"size={preset},batch={batch},seq_len={seq_len}")
  config.mesh.data = 1
  config.model.dtype, config.model.attention = dtype, attention
  config.model.scan_layers = scan_layers
  trainer = loop.Trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
  state = trainer.init()
  batches = data.make_train_iterator(config.data, batch, config.train.seed, 0, 1)

  def run(n: int) -> None:
    nonlocal state
    for _ in range(n):
      state, _ = trainer.step(state, next(batches))
    jax.block_until_ready(state)

  return run, batches


def peer_runner(p: presets.Preset, batches, device: str = "cpu"):
  """run(n_steps) for HF GPT-2 with `p`'s dims, trained like ours, on the same batches.

  device "cpu": float32. device "cuda": float32 parameters, bfloat16 autocast (as ours with
  model.dtype=bfloat16), PyTorch's SDPA (flash) attention, fused AdamW.
  """
  import contextlib

  import torch
  import transformers

  if device == "cpu":
    torch.set_num_threads(THREADS)
  torch.manual_seed(0)
  gpt2_cfg = transformers.GPT2Config(
    n_layer=p.num_layers,
    n_embd=p.d_model,
    n_head=p.num_heads,
    n_inner=p.d_ff,
    vocab_size=p.vocab_size,
    n_positions=p.max_len,
    activation_function="gelu",
    layer_norm_epsilon=1e-5,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    tie_word_embeddings=True,
    bos_token_id=None,
    eos_token_id=None,
  )
  net = (
    transformers.GPT2LMHeadModel._from_config(gpt2_cfg, attn_implementation="sdpa")
    .to(device)
    .train()
  )
  ours = presets.param_counts(p)["total"]
  theirs = sum(t.numel() for t in net.parameters())
  if ours != theirs:
    raise AssertionError(f"peer has {theirs:,} params, ours {ours:,}: dims do not match")
  cuda = device == "cuda"
  opt = torch.optim.AdamW(
    net.parameters(),
    lr=3e-3,
    betas=(0.9, 0.95),
    weight_decay=0.1,
    **(dict(fused=True) if cuda else dict(foreach=True)),
  )
  loss_fn = torch.nn.CrossEntropyLoss()
  autocast = (
    (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
  )

  def run(n: int) -> None:
    for _ in range(n):
      b = next(batches)
      inputs = torch.from_numpy(b["inputs"].astype(np.int64)).to(device)
      targets = torch.from_numpy(b["targets"].astype(np.int64)).to(device)
      with autocast():
        logits = net(input_ids=inputs).logits
      loss = loss_fn(logits.float().view(-1, p.vocab_size), targets.view(-1))
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
      opt.step()
    if cuda:
      torch.cuda.synchronize()

  return run


def timed(run, steps: int, tokens_per_step: int) -> tuple[float, float]:
  """(tokens/s, cores busy): CPU seconds of this process per wall second shows contention."""
  t0, c0 = time.perf_counter(), time.process_time()
  run(steps)
  seconds = time.perf_counter() - t0
  return steps * tokens_per_step / seconds, (time.process_time() - c0) / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="s7", help="a key of kbit_jax.presets.PRESETS")
  parser.add_argument(
    "--dims",
    default="",
    help="LAYERS,D_MODEL,HEADS,D_FF: time this shape (a tiny preset with "
    "these dims, registered for this run only) instead of --preset",
  )
  parser.add_argument(
    "--second",
    default="",
    help="a second preset whose step is timed in the same rounds (its row and the ratio)",
  )
  parser.add_argument(
    "--no_peers", action="store_true", help="time ours only: no plain Flax GPT, no HF GPT-2"
  )
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds of (ours, plain, peer)")
  parser.add_argument(
    "--warmup",
    type=int,
    default=2,
    help="untimed rounds before the timed ones (ours compiles before them)",
  )
  parser.add_argument(
    "--no_retain_host_memory",
    action="store_true",
    help="keep glibc malloc's defaults instead of what `kbit train` sets "
    "(kbit_jax/train/host_memory.py), to measure what that gains",
  )
  args = parser.parse_args()
  # As `kbit train` does, before jax starts its backend; the whole process (all three
  # sides) runs with the same allocator settings.
  retained = not args.no_retain_host_memory and host_memory.retain_freed_memory()
  for name in ("batch", "seq_len", "steps", "rounds", "warmup"):
    if getattr(args, name) < 1:
      parser.error(f"--{name}={getattr(args, name)} must be >= 1")
  if jax.device_count() != 1:
    print(
      f"note: {jax.device_count()} devices (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}); "
      "ours runs on the first only. Unset XLA_FLAGS for comparable numbers."
    )
  if args.dims:
    try:
      layers, d_model, heads, d_ff = (int(v) for v in args.dims.split(","))
    except ValueError:
      parser.error(f"--dims={args.dims!r}: allowed LAYERS,D_MODEL,HEADS,D_FF (4 ints)")
    args.preset = f"dims-{layers}x{d_model}x{heads}x{d_ff}"
    presets.PRESETS[args.preset] = dataclasses.replace(
      presets.get_preset("s7"), num_layers=layers, d_model=d_model, num_heads=heads, d_ff=d_ff
    )
  p = presets.get_preset(args.preset)
  second = presets.get_preset(args.second) if args.second else None
  tokens_per_step = args.batch * args.seq_len
  flops_per_token = flops.flops_per_token(p, args.seq_len, training=True)

  t0 = time.perf_counter()
  ours, batches = our_runner(args.preset, args.batch, args.seq_len)
  ours(1)
  compile_s = time.perf_counter() - t0
  if args.no_peers:
    plain = peer = None
  else:
    plain = plain_gpt.runner(p, batches, presets.param_counts(p)["total"])
    peer = peer_runner(p, batches)
  ours2 = None
  if second is not None:
    ours2, _ = our_runner(args.second, args.batch, args.seq_len)
    ours2(1)
  sides = [run for run in (ours, plain, peer, ours2) if run is not None]
  # Untimed rounds, run as the timed ones: the retained heap grows to its high-water mark
  # in them (measured: ours faulted 0.9M then 0.4M pages in the first two, ~0 after).
  for _ in range(args.warmup):
    flops.measure_matmul_peak()
    for run in sides:
      run(args.steps)
  print(
    f"{args.preset}: {presets.param_counts(p)['total']:,} params, "
    f"{flops_per_token / 1e6:.1f} MFLOP/token (training); init+compile {compile_s:.1f} s; "
    f"threads: XLA {len(os.sched_getaffinity(0))} (all cores), torch {THREADS} "
    f"(OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}); host memory "
    f"{'retained (host_memory.py)' if retained else 'glibc defaults'}",
    flush=True,
  )

  rows, second_tps = [], []
  for r in range(args.rounds):
    peak = flops.measure_matmul_peak()
    ours_tps, ours_cores = timed(ours, args.steps, tokens_per_step)
    line = f"  round {r + 1}/{args.rounds}: peak {peak / 1e9:.0f} GFLOP/s; tok/s (cores): "
    line += f"ours {ours_tps:.0f} ({ours_cores:.1f})"
    if args.no_peers:
      plain_tps = peer_tps = float("nan")
    else:
      plain_tps, plain_cores = timed(plain, args.steps, tokens_per_step)
      peer_tps, peer_cores = timed(peer, args.steps, tokens_per_step)
      line += (
        f", plain {plain_tps:.0f} ({plain_cores:.1f}), peer {peer_tps:.0f} "
        f"({peer_cores:.1f}); ours/peer {ours_tps / peer_tps:.2f}, "
        f"ours/plain {ours_tps / plain_tps:.2f}"
      )
    if ours2 is not None:
      tps2, cores2 = timed(ours2, args.steps, tokens_per_step)
      second_tps.append(tps2)
      line += f"; {args.second} {tps2:.0f} ({cores2:.1f}), {args.second}/ours {tps2 / ours_tps:.2f}"
    rows.append((peak, ours_tps, peer_tps, plain_tps))
    print(line, flush=True)

  med = statistics.median
  peak = med([r[0] for r in rows])
  mfu_ours = med([r[1] * flops_per_token / r[0] for r in rows])
  mfu_peer = med([r[2] * flops_per_token / r[0] for r in rows])
  mfu_plain = med([r[3] * flops_per_token / r[0] for r in rows])
  header = (
    "preset",
    "params",
    "batch x seq",
    "ours tok/s",
    "peer tok/s",
    "ratio",
    "ours/plain",
    "MFU ours",
    "MFU plain",
    "MFU peer",
    "peak GFLOP/s",
  )

  def fmt(x: float, spec: str) -> str:
    return "-" if math.isnan(x) else format(x, spec)  # nan: --no_peers

  values = (
    args.preset,
    f"{presets.param_counts(p)['total'] / 1e6:.1f}M",
    f"{args.batch} x {args.seq_len}",
    f"{med([r[1] for r in rows]):.0f}",
    fmt(med([r[2] for r in rows]), ".0f"),
    fmt(med([r[1] / r[2] for r in rows]), ".2f"),
    fmt(med([r[1] / r[3] for r in rows]), ".2f"),
    f"{mfu_ours:.2f}",
    fmt(mfu_plain, ".2f"),
    fmt(mfu_peer, ".2f"),
    f"{peak / 1e9:.0f}",
  )
  lines = [header, values]
  if second is not None:
    flops2 = flops.flops_per_token(second, args.seq_len, training=True)
    mfu2 = med([t * flops2 / r[0] for t, r in zip(second_tps, rows)])
    lines.append(
      (
        args.second,
        f"{presets.param_counts(second)['total'] / 1e6:.1f}M",
        values[2],
        f"{med(second_tps):.0f}",
        *["-"] * 3,
        f"{mfu2:.2f}",
        *["-"] * 2,
        values[-1],
      )
    )
  widths = [max(len(s) for s in col) for col in zip(*lines)]
  for line in lines:
    print("  ".join(s.rjust(w) for s, w in zip(line, widths)))
  if second is not None:
    tok_ratio = med([t / r[1] for t, r in zip(second_tps, rows)])
    mfu_ratio = med([t * flops2 / (r[1] * flops_per_token) for t, r in zip(second_tps, rows)])
    print(
      f"{args.second}/{args.preset} in one run: tok/s ratio {tok_ratio:.2f}, MFU ratio "
      f"{mfu_ratio:.2f} ({flops2 / 1e6:.2f} vs {flops_per_token / 1e6:.2f} MFLOP/token; "
      f"medians of {args.rounds} per-round ratios)"
    )


if __name__ == "__main__":
  main()

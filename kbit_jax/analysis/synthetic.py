"""Synthetic results stores from a known law, for tests and demos of the fit stage.

    records = synthetic_records(sizes=("s1", "s2", "s3", "s4", "s5"), seeds=(0, 1))
    write_store(results_dir, records)          # then cells.load_cells(results_dir)

Each record has the shape the grid writes (key / model / bits / metrics groups: grid/driver.py),
so a synthetic store exercises the same column adapter as a real one. The loss follows
a precision law of forms.py (`form`), N = non-embedding parameters:

  ptq   nll = A N^-alpha + E + [k < 16] C m(dtype, B, p, k) (D/1M)^gamma_D N^-gamma_N
                e^(-k / gamma_post)      (gamma_D = 0 unless the law gives it)
  neff  nll = A (N (1 - e^(-k / gamma)))^-alpha + E

times (1 + checkpoint noise + cell noise); m is a method factor (int worse than nf, large
blocks worse than small ones, outliers help at low k; the neff law has none). Accuracy
is a sigmoid of the loss between each task's chance and a ceiling, so the two metrics
correlate as in the study.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kbit_jax.analysis import results
from kbit_jax.model import presets

# The generating laws' parameters, by form (forms.py); the neff law's gamma = 2 costs a
# 3-bit model 22% of its effective parameters, an 8-bit one 2%.
LAWS = {
  "ptq": dict(A=60.0, alpha=0.3, E=2.5, C=3000.0, gamma_N=0.25, gamma_post=0.5),
  "neff": dict(A=60.0, alpha=0.3, gamma=2.0, E=2.5),
}
DTYPE_FACTOR = {
  "int": 2.5,
  "int_centered": 2.5,
  "dynamic": 1.8,
  "float": 1.3,
  "nf": 1.0,
  "quantile": 0.9,
}
BLOCK_FACTOR = {
  32: 0.85,
  64: 1.0,
  128: 1.25,
  256: 1.6,
  512: 2.0,
  1024: 2.4,
  2048: 2.8,
  4096: 3.2,
  0: 4.0,
  -1: 2.5,
}
# (chance, ceiling) of each task's accuracy.
TASKS = {
  "lambada": (0.0, 0.7),
  "hellaswag": (0.25, 0.6),
  "piqa": (0.5, 0.8),
  "winogrande": (0.5, 0.7),
}
ACC_MIDPOINT, ACC_SLOPE = 4.3, 2.0  # accuracy sigmoid in nll: centre, steepness
QUANTIZED_SHARE = 0.9  # of a model's parameters in the quantized targets


def method_factor(dtype: str, blocksize: int, outlier_share: float, k: int) -> float:
  outliers = 1.0 - min(0.8, 20 * outlier_share) * (k <= 4)
  return DTYPE_FACTOR[dtype] * BLOCK_FACTOR[blocksize] * outliers


def true_nll(
  n: float,
  k: int,
  dtype: str = "nf",
  blocksize: int = 64,
  outlier_share: float = 0.0,
  form: str = "ptq",
  law: dict[str, float] | None = None,
  tokens: float = 1_000_000,
) -> float:
  """The noise-free loss of the generating law `form` at `law`'s parameters (LAWS[form]
  unless given): ptq with the method factor on its penalty, or neff, the same for every
  method (and k = 16 keeping 1 - e^(-16/gamma) of N, as the form has it)."""
  p = LAWS[form] if law is None else law
  if form == "neff":
    return float(p["A"] * (n * -np.expm1(-k / p["gamma"])) ** -p["alpha"] + p["E"])
  loss = p["A"] * n ** -p["alpha"] + p["E"]
  if k < 16:
    loss += (
      p["C"]
      * method_factor(dtype, blocksize, outlier_share, k)
      * (tokens / 1e6) ** p.get("gamma_D", 0.0)
      * n ** -p["gamma_N"]
      * np.exp(-k / p["gamma_post"])
    )
  return float(loss)


def total_bits(params: int, k: int, blocksize: int, outlier_share: float, d_model: int) -> int:
  """The study's k + 16/B + p (16 - k) bits on the quantized share, 16 on the rest."""
  if k >= 16:
    return 16 * params
  per_block = {0: 0.0, -1: 16.0 / d_model}.get(blocksize, 16.0 / max(blocksize, 1))
  quantized = QUANTIZED_SHARE * params
  return int(
    round(quantized * (k + per_block + outlier_share * (16 - k)) + (params - quantized) * 16)
  )


def _task_metrics(nll: float, rng: np.random.Generator, acc_noise: float) -> dict[str, Any]:
  level = 1.0 / (1.0 + np.exp(ACC_SLOPE * (nll - ACC_MIDPOINT)))
  out = {}
  for task, (chance, ceiling) in TASKS.items():
    acc = float(np.clip(chance + (ceiling - chance) * level + rng.normal(0, acc_noise), 0, 1))
    out[task] = {"n": 1000, "acc": acc, "acc_stderr": 0.015}
    if task not in ("lambada", "winogrande"):
      out[task].update(acc_norm=min(1.0, acc + 0.01), acc_norm_stderr=0.015)
  accs = [m["acc"] for m in out.values()]
  out["mean"] = {"acc": float(np.mean(accs)), "acc_stderr": 0.0075, "tasks": len(accs)}
  return out


def synthetic_records(
  sizes: Sequence[str] = ("s1", "s2", "s3", "s4", "s5", "s6"),
  bits: Sequence[int] = (3, 4, 5, 6, 8, 16),
  dtypes: Sequence[str] = ("int", "nf"),
  blocksizes: Sequence[int] = (64,),
  outlier_shares: Sequence[float] = (0.0,),
  seeds: Sequence[int] = (0,),
  tokens: int = 1_000_000,
  noise: float = 0.01,
  cell_noise: float = 0.003,
  acc_noise: float = 0.01,
  form: str = "ptq",
  law: dict[str, float] | None = None,
  seed: int = 0,
  eval_id: str = "synthetic",
  targets: str = "attn,mlp,embed",
) -> list[dict[str, Any]]:
  """One record per (size, seed) x (16 bits, and every k < 16 x dtype x B x p), the loss
  from true_nll(form, law) times (1 + checkpoint noise + cell noise)."""
  rng = np.random.default_rng(seed)
  records = []
  for size in sizes:
    preset = presets.get_preset(size)
    counts = presets.param_counts(preset)
    for s in seeds:
      checkpoint_noise = rng.normal(0, noise)
      specs = [(16, "none", None, 0.0)] + [
        (k, d, b, p)
        for b in blocksizes
        for p in outlier_shares
        for d in dtypes
        for k in bits
        if k < 16
      ]
      for k, dtype, blocksize, share in specs:
        q = k < 16
        b = 64 if blocksize is None else blocksize
        nll = true_nll(counts["non_embedding"], k, dtype, b, share, form, law, tokens)
        nll *= 1 + checkpoint_noise + rng.normal(0, cell_noise)
        tb = total_bits(counts["total"], k, b, share, preset.d_model)
        metrics = _task_metrics(nll, rng, acc_noise)
        metrics["ppl/validation"] = {"nll": nll, "perplexity": float(np.exp(nll)), "tokens": 8192}
        key = dict(
          preset=size,
          seed=s,
          train_tokens=tokens,
          bits=k,
          dtype=dtype,
          exponent_bits=3 if dtype == "float" else 0,
          blocksize=blocksize,
          outlier_share=share if q else 0.0,
          targets=targets if q else "none",
          double_quant=False,
          eval_id=eval_id,
        )
        name = (
          f"{size}-seed{s} k{k} {dtype} B{blocksize} p{share:g}" if q else f"{size}-seed{s} k16"
        )
        records.append(
          dict(
            key=key,
            name=name,
            git_commit="synthetic",
            created="2026-01-01T00:00:00+00:00",
            model=dict(
              params=counts["total"],
              non_embedding_params=counts["non_embedding"],
              embedding_params=counts["embedding"],
              train_steps=tokens // 4096,
              train_batch_size=32,
              seq_len=128,
              train_lr=3e-3,
            ),
            bits=dict(total_bits=tb, bits_per_param=tb / counts["total"]),
            metrics=metrics,
          )
        )
  return records


def write_store(results_dir: str, records: Sequence[dict[str, Any]]) -> None:
  for record in records:
    results.write(results_dir, record)

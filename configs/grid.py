"""The post-training-quantization grid: sizes x k x data types x block sizes x outlier
shares x training seeds. Each (size, seed) is trained once on the embedded corpus, then
every quantization cell of it is evaluated (zero-shot tasks + perplexity).

    kbit grid --config configs/grid.py --workdir /tmp/kbit/grid --dry_run       # plan + cost
    kbit grid --config configs/grid.py --workdir workdirs/local/grid   # README command 1
    kbit grid --config configs/grid.py:runlocal --workdir /tmp/kbit/smoke      # seconds
    kbit grid --config configs/grid.py --config.grid.sizes=s1,s2 --config.grid.bits="(4,16)" ...

Arguments: `runlocal` (one size, 20 steps, 7 cells: a smoke run), `tokens`
(training tokens per size), `seeds` (number of training seeds).

Optional axes (defaults leave the grid as it is; settable on the command line, e.g.
`--config.grid.tokens="(250000,1000000)"`): `grid.act_bits` (activation bits a, e.g.
(8, 16): AQT input quantization of the attn/mlp matmuls, one evaluation net per a),
`grid.tokens` (training-token budgets per size, e.g. (250_000, 1_000_000): one run per
budget in W/models/<size>-seed<s>-D<tokens>/), `grid.methods` (quantization methods, e.g.
("rtn", "gptq", "awq"): every quantized cell once per method, the 16-bit cell once;
gptq and awq calibrate on the `calibration` section's data, kbit_jax/config/
calibration_section.py; experiments/methods/ uses them). k-bit probes: `eval.probes="1,2,3,4"`
(kbit_jax/evals/probes.py). experiments/kbit_probes/ uses all three.

Sections: `grid` (the axes; `grid.sizes` accepts one comma list, as above), `calibration`
(GPTQ's and AWQ's calibration data and settings; read only with a calibrated method), `base` (the
training config every size starts from, kbit_jax/config/defaults.py), `per_size` (overrides of
`base` for one preset: its steps, batch, lr; sizes without an entry train with `base`),
`eval` (kbit_jax/config/eval_section.py: tasks, items per task, perplexity batches).

The default CPU grid: 4 sizes (s1..s4, 25k..793k non-embedding parameters) trained on
~1M tokens each, k in {3, 4, 5, 6, 8, 16}, data types int / float / quantile / nf, block
sizes 64, 256 and per tensor (0), no outliers, one seed: 4 x (1 + 5 x 4 x 3) = 244 cells.
The evaluation is sized to the main job's time budget (README command 1 under 20 minutes
on 2 cores): 50 items per task and 8k perplexity tokens. Measured in one session on this
2-core machine under load ~11 (one s1 cell, kbit_jax.grid.evaluator): 6.2 s at 25 items,
11.8 s at 50, 18.1 s at 100 (perplexity alone 1.1-1.6 s), so 50 items cost ~1.9x the 25 of
before in evaluation, which is most of the grid's time; 100 would leave no margin. The
mean accuracy's standard error is still ~0.035 at 50 items per task; the report marks
each metric's signal (kbit_jax/analysis/noise.py) and perplexity is the precise one here.

quant.targets: "attn,mlp,embed". The study quantized all linear layers of models whose
parameters are mostly outside the embedding. The tiny presets tie the output head to the
token embedding, which holds 40-85% of their parameters (s1..s4); leaving it in 16 bits
would make total model bits, the study's x-axis, barely depend on k. With tied weights
the head *is* the embedding matmul, a linear layer, so it is quantized too (the learned
position table, biases and LayerNorms stay 16-bit, as in the study).
"""

from __future__ import annotations

import ml_collections

from kbit_jax.config import calibration_section, defaults, files

# preset -> (peak learning rate, sequences per batch): larger models a smaller lr.
CPU_SIZES = {"s1": (3e-3, 32), "s2": (3e-3, 32), "s3": (2e-3, 32), "s4": (2e-3, 32)}


def _eval_section(runlocal: bool) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      tasks="lambada,hellaswag,piqa,winogrande",
      task_dir="",  # '' = built-in tasks from the corpus's test split
      items_per_task=4 if runlocal else 50,
      task_seed=0,
      batch_size=8 if runlocal else 32,
      max_len=0,  # 0 = the model's max_len
      ppl_split="validation",
      ppl_max_batches=1 if runlocal else 2,
      text_file="",
      probes="",  # k-bit probes off: keys at their defaults leave the
      probe_items=64,  # cells' eval fingerprint unchanged (evaluate.py)
      probe_file="",
      probe_threshold=0.5,
      bos="tokenizer",  # BOS as the tokenizer sets it; "none": lm-eval <= 0.4.9 (eval_section.py)
    )
  )


def get_config(arg=None):
  a = files.parse_arg(arg, runlocal=False, tokens=1_000_000, seeds=1)
  c = ml_collections.ConfigDict()
  c.grid = ml_collections.ConfigDict(
    dict(
      sizes=tuple(CPU_SIZES),
      seeds=tuple(range(a.seeds)),
      bits=(3, 4, 5, 6, 8, 16),
      dtypes=("int", "float", "quantile", "nf"),
      blocksizes=(64, 256, 0),
      outlier_shares=(0.0,),
      targets="attn,mlp,embed",
      # The optional axes at their defaults add nothing to cell keys, names or model
      # directories (grid/plan.py OPTIONAL_AXES); here so that the command line can set
      # them: --config.grid.act_bits="(8,16)" --config.grid.tokens="(250000,1000000)".
      act_bits=(16,),
      tokens=(),
      checkpoints=(),
      methods=("rtn",),
    )
  )
  # GPTQ / AWQ calibration: 32 windows of data.seq_len tokens of the corpus' train split.
  c.calibration = ml_collections.ConfigDict(calibration_section.DEFAULTS)

  base = defaults.base_config()
  base.data.seq_len = 128
  base.train.log_every = 50
  base.train.eval_batches = 4
  base.train.keep_checkpoints = 1
  c.base = base
  c.per_size = ml_collections.ConfigDict()
  for size, (lr, batch) in CPU_SIZES.items():
    steps = max(1, round(a.tokens / (batch * base.data.seq_len)))
    c.per_size[size] = ml_collections.ConfigDict(
      {
        "train": dict(
          lr=lr,
          batch_size=batch,
          steps=steps,
          warmup_steps=max(1, steps // 10),
          eval_every=steps,
          checkpoint_every=100,
        )
      }
    )
  c.eval = _eval_section(a.runlocal)

  if a.runlocal:
    c.grid.sizes = ("s0",)
    c.grid.bits = (3, 4, 16)
    c.grid.dtypes = ("int", "nf", "quantile")
    c.grid.blocksizes = (64,)
    base.data.seq_len = 32
    c.per_size = ml_collections.ConfigDict(
      {
        "s0": {
          "train": dict(
            lr=3e-3,
            batch_size=8,
            steps=20,
            warmup_steps=5,
            log_every=10,
            eval_every=20,
            eval_batches=2,
            checkpoint_every=10,
          )
        }
      }
    )
  return c

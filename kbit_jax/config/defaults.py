"""The defaults of every config section: what a `kbit train` run reads.

A config file (configs/*.py) starts from `base_config()` and overrides what it needs; a
grid config keeps one of these as its `base` and overrides it per size. Keys a section
gains later must leave what existing configs mean unchanged.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = ""  # set by --workdir; configs may leave it empty

  c.model = ml_collections.ConfigDict()
  c.model.preset = "s2"  # a key of kbit_jax.model.presets.PRESETS
  c.model.dtype = "float32"  # compute dtype: float32 (CPU) | bfloat16 (GPU/TPU)
  c.model.remat = False  # recompute blocks in backward (saves activations)
  # One nn.scan over the blocks: compile time independent of depth (params stacked; the
  # grid evaluates unrolled).
  c.model.scan_layers = False
  c.model.attention = "einsum"  # einsum | cudnn (GPU flash, bf16) | xla (transformer.py)

  c.data = ml_collections.ConfigDict()
  c.data.source = "embedded"  # embedded | tfds
  c.data.tokenizer = "embedded"  # embedded | path to a SentencePiece .model
  c.data.seq_len = 128
  c.data.tfds_name = ""  # e.g. lm1b, c4/en:3.1.0, wikipedia/20230601.en
  c.data.tfds_data_dir = ""  # where the prepared ArrayRecord files are
  c.data.tfds_train_split = "train"
  c.data.tfds_eval_split = "validation"
  c.data.text_key = "text"

  c.train = ml_collections.ConfigDict()
  c.train.steps = 600
  c.train.batch_size = 32  # global, in sequences
  c.train.lr = 3e-3
  c.train.warmup_steps = 60
  c.train.min_lr_ratio = 0.1  # the schedule decays to lr * min_lr_ratio
  # cosine (warmup, cosine decay over the run) | wsd (warmup, stable at lr, then a linear
  # cool-down over the last decay_fraction of the steps: Hägele et al. 2024)
  c.train.schedule = "cosine"
  c.train.decay_fraction = 0.2  # wsd only: the cool-down's share of train.steps
  c.train.weight_decay = 0.1  # AdamW; not applied to biases, norms, embeddings
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.grad_clip = 1.0
  c.train.seed = 0
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.eval_batches = 8
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  # Steps also saved and kept beside the newest keep_checkpoints (grid.checkpoints: the
  # training-length axis evaluates them); () = none.
  c.train.keep_steps = ()
  # > 0: a jax.profiler trace of that many steps (after compile) into <workdir>/profile
  # (TensorBoard or Perfetto).
  c.train.profile_steps = 0

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by fsdp x tensor
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = "megatron"  # a key of kbit_jax.train.sharding.RULE_SETS
  c.mesh.distributed = False  # call jax.distributed.initialize() (multi-host)
  # Left empty/0/-1, jax detects these on Cloud TPU, SLURM and other managed clusters;
  # set them for hand-started processes (e.g. two CPU processes on one machine).
  c.mesh.coordinator_address = ""  # host:port of process 0
  c.mesh.num_processes = 0
  c.mesh.process_id = -1

  c.eval = ml_collections.ConfigDict()
  c.eval.tasks = "lambada,hellaswag,piqa,winogrande"  # zero-shot tasks; "" = none
  # "" = built-in tasks from the corpus's test split; else a folder with
  # lambada_test.jsonl, hellaswag_val.jsonl, valid.jsonl (+ valid-labels.lst) and dev.jsonl
  # (winogrande).
  c.eval.task_dir = ""
  c.eval.items_per_task = 400  # built-in: items generated; files: first N (0 = all)
  c.eval.task_seed = 0  # built-in tasks' generator seed
  c.eval.batch_size = 32  # rows per log-likelihood / perplexity call
  c.eval.max_len = 0  # longest scored sequence; 0 = the model's max_len
  c.eval.ppl_split = "validation"  # perplexity split of the data source; "" = none
  c.eval.ppl_max_batches = 0  # 0 = the whole split
  c.eval.text_file = ""  # also report perplexity on this local UTF-8 file
  # k-bit probes (evals/probes.py): "" = none, or k's in 1..6 ("1,2,3,4,5,6"): a 2^k-way
  # continuation choice each.
  c.eval.probes = ""
  c.eval.probe_items = 64  # items per built-in probe (a multiple of 2^k balances)
  c.eval.probe_file = ""  # JSONL {"context", "options": [>= 2], "label"} probe
  c.eval.probe_threshold = 0.5  # probe/summary/max_k: largest k with acc above this
  # BOS before each scored context: "tokenizer" (as the tokenizer's own setting says:
  # lm-evaluation-harness since its PR #3347) | "none" (harness <= 0.4.9, the study's era)
  c.eval.bos = "tokenizer"
  # lm-evaluation-harness tasks (names or YAML paths, comma-separated) evaluated per grid
  # cell through the bridge (evals/harness, needs kbit-jax[harness]); "" = none. Their
  # metrics are the record's "harness/<task>"; the four study tasks above stay built in.
  c.eval.harness_tasks = ""
  c.eval.harness_include_path = ""  # task YAML folders, comma-separated (offline.py's)

  c.quant = ml_collections.ConfigDict()
  c.quant.bits = 16  # weight bits k: 2..8, or 16 for the float baseline
  c.quant.dtype = "int"  # int | int_centered | float | quantile | dynamic | nf
  c.quant.exponent_bits = 0  # float only; 0 = the study's default for k
  c.quant.blocksize = 64  # B values per absmax block; 0 = per tensor, -1 = per channel
  c.quant.outlier_share = 0.0  # p: share of hidden units kept in 16 bits
  c.quant.double_quant = False  # nf: quantize the block constants too (QLoRA)
  c.quant.targets = "attn,mlp"  # which linear layers: attn, mlp, head, embed
  c.quant.act_bits = 16  # matmul-input bits (16 = weights-only, as in the study)
  c.quant.mode = "ptq"  # ptq | qat
  return c

"""Shared defaults for every kbit-jax config, and the `file.py:key=value,...` argument parser.

A config file defines `get_config(arg: str | None)`, starts from `base_config()` and
overrides what it needs; `parse_arg` turns the part after the colon into typed values.
"""

from __future__ import annotations

import ml_collections

# Logical axis -> mesh axis. Each rule set here is checked by
# tests/test_sharding.py::test_sharded_gradients_match_single_device.
# Megatron layout: the MLP's first weight is (fsdp, tensor) and its second (tensor, fsdp).
# (Both (fsdp, tensor) gives silently wrong gradients on XLA CPU, see sharding.py.)
RULE_SETS = {
  "megatron": (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
    ("norm", None),
    ("layers", None),
  ),
  "fsdp": (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("vocab", None),
    ("length", None),
    ("norm", None),
    ("layers", None),
  ),
  "replicated": (
    ("batch", ("data", "fsdp")),
    ("embed", None),
    ("mlp", None),
    ("heads", None),
    ("vocab", None),
    ("length", None),
    ("norm", None),
    ("layers", None),
  ),
}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = ""  # set by --workdir; configs may leave it empty

  c.model = ml_collections.ConfigDict()
  c.model.preset = "s2"  # a key of kbit_jax.presets.PRESETS
  c.model.dtype = "float32"  # compute dtype: float32 (CPU) | bfloat16 (GPU/TPU)
  c.model.remat = False  # recompute blocks in backward (saves activations)
  c.model.scan_layers = False  # one nn.scan over the blocks: compile time independent
  # of depth (params stacked; grid evaluates unrolled)
  c.model.attention = "einsum"  # einsum | cudnn (GPU flash, bf16) | xla (model.py)

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
  c.train.min_lr_ratio = 0.1  # cosine decays to lr * min_lr_ratio
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
  c.train.profile_steps = 0  # >0: jax.profiler trace of that many steps (after
  # compile) into <workdir>/profile (TensorBoard/Perfetto)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by fsdp x tensor
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = "megatron"  # a key of RULE_SETS
  c.mesh.distributed = False  # call jax.distributed.initialize() (multi-host)
  # Left empty/0/-1, jax detects these on Cloud TPU, SLURM and other managed clusters;
  # set them for hand-started processes (e.g. two CPU processes on one machine).
  c.mesh.coordinator_address = ""  # host:port of process 0
  c.mesh.num_processes = 0
  c.mesh.process_id = -1

  c.eval = ml_collections.ConfigDict()
  c.eval.tasks = "lambada,hellaswag,piqa,winogrande"  # zero-shot tasks; "" = none
  c.eval.task_dir = ""  # "" = built-in tasks from the corpus's test split; else a
  # folder with lambada_test.jsonl, hellaswag_val.jsonl,
  # valid.jsonl (+ valid-labels.lst), dev.jsonl (winogrande)
  c.eval.items_per_task = 400  # built-in: items generated; files: first N (0 = all)
  c.eval.task_seed = 0  # built-in tasks' generator seed
  c.eval.batch_size = 32  # rows per log-likelihood / perplexity call
  c.eval.max_len = 0  # longest scored sequence; 0 = the model's max_len
  c.eval.ppl_split = "validation"  # perplexity split of the data source; "" = none
  c.eval.ppl_max_batches = 0  # 0 = the whole split
  c.eval.text_file = ""  # also report perplexity on this local UTF-8 file
  c.eval.probes = ""  # k-bit probes (probes.py): "" = none, or k's in 1..6
  # ("1,2,3,4,5,6"): 2^k-way continuation choice
  c.eval.probe_items = 64  # items per built-in probe (a multiple of 2^k balances)
  c.eval.probe_file = ""  # JSONL {"context", "options": [>= 2], "label"} probe
  c.eval.probe_threshold = 0.5  # probe/summary/max_k: largest k with acc above this

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


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`"size=s3,bits=4"` -> ConfigDict, each value cast to the type of its default.

  Unknown keys raise, naming the key and the allowed ones. A bare word `runlocal`
  sets the boolean default of that name.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is unknown; allowed: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("", "1", "true", "yes")
    else:
      try:
        out[key] = type(default)(value)
      except ValueError:
        raise ValueError(
          f"config argument {key}={value!r} is not a {type(default).__name__}"
        ) from None
  return out

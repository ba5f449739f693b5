"""Evaluates lm-evaluation-harness tasks on a kbit-jax model (trained or imported) at any
k-bit quantization, and stores a record beside lm_eval's own results JSON
(kbit_jax/evals/README.md, "Harness"); needs `pip install "kbit-jax[harness]"`.

    kbit harness --model_dir ~/kbit/pretrained/pythia-70m --bits 4 --dtype nf \\
      --tasks hellaswag,piqa --out /tmp/kbit/harness
    kbit harness --model_dir W/models/s2-seed0 --task_dir ~/data/kbit_tasks \\
      --tasks lambada_openai,hellaswag,piqa,winogrande --out R

--out R gets R/results/<id>.json (the record: key, model, bits, metrics) and
R/harness/<id>.json (lm_eval's results). --task_dir reads the study's four tasks from
local files instead of the hub (kbit_jax/evals/harness/offline.py).
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FlagValues()
MODEL_DIR = flags.DEFINE_string(
  "model_dir",
  None,
  "a `kbit import` dir, a `kbit train` workdir or a grid's W/models/<name>",
  flag_values=FLAGS,
)
TASKS = flags.DEFINE_list(
  "tasks", None, "harness task names or YAML paths, comma-separated", flag_values=FLAGS
)
OUT = flags.DEFINE_string(
  "out", None, "results/ (records) and harness/ (lm_eval's JSON) go here", flag_values=FLAGS
)
BITS = flags.DEFINE_integer("bits", 16, "weight bits k: 2..8, or 16 (float)", flag_values=FLAGS)
DTYPE = flags.DEFINE_string(
  "dtype", "int", "int | int_centered | float | quantile | dynamic | nf", flag_values=FLAGS
)
EXPONENT_BITS = flags.DEFINE_integer(
  "exponent_bits", 0, "float only; 0 = the study's default for k", flag_values=FLAGS
)
BLOCKSIZE = flags.DEFINE_integer(
  "blocksize", 64, "block size B; 0 = per tensor, -1 = per channel", flag_values=FLAGS
)
OUTLIER_SHARE = flags.DEFINE_float(
  "outlier_share", 0.0, "share p of hidden units kept in 16 bits", flag_values=FLAGS
)
DOUBLE_QUANT = flags.DEFINE_bool(
  "double_quant", False, "nf: quantize the block constants too", flag_values=FLAGS
)
TARGETS = flags.DEFINE_string(
  "targets", "attn,mlp", "which linear layers: attn, mlp, head, embed", flag_values=FLAGS
)
ACT_BITS = flags.DEFINE_integer(
  "act_bits", 16, "matmul-input bits (16 = weights only)", flag_values=FLAGS
)
BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", 32, "rows per scoring call (several requests to a row)", flag_values=FLAGS
)
SHARE_PREFIXES = flags.DEFINE_bool(
  "share_prefixes",
  True,
  "score each shared context once; false: a row per request",
  flag_values=FLAGS,
)
MAX_LENGTH = flags.DEFINE_integer(
  "max_length", 0, "longest scored sequence; 0 = the model's", flag_values=FLAGS
)
FSDP = flags.DEFINE_integer("fsdp", 1, "devices the weights are split over", flag_values=FLAGS)
TENSOR = flags.DEFINE_integer("tensor", 1, "tensor-parallel devices", flag_values=FLAGS)
STEP = flags.DEFINE_integer(
  "step", -1, "trained models: checkpoint step; -1 = the newest", flag_values=FLAGS
)
TASK_DIR = flags.DEFINE_string(
  "task_dir", "", "the study's four tasks from this folder's jsonl files", flag_values=FLAGS
)
INCLUDE_PATH = flags.DEFINE_multi_string(
  "include_path", [], "more task YAML folders (lm_eval's --include_path)", flag_values=FLAGS
)
NUM_FEWSHOT = flags.DEFINE_integer(
  "num_fewshot", None, "few-shot examples; unset = each task's default", flag_values=FLAGS
)
LIMIT = flags.DEFINE_float(
  "limit", None, "items per task (a count, or a share if < 1); unset = all", flag_values=FLAGS
)
LOG_SAMPLES = flags.DEFINE_bool(
  "log_samples", False, "also write every request and response", flag_values=FLAGS
)
REQUIRED = ("model_dir", "tasks", "out")
ERRORS = (
  (ImportError, 'needs lm-evaluation-harness: pip install "kbit-jax[harness]"'),
  (FileNotFoundError, "not found"),
  (ValueError, "invalid input"),
)


def main() -> None:
  from kbit_jax.evals.harness import loading, run

  args = loading.ModelArgs(
    model_dir=MODEL_DIR.value,
    bits=BITS.value,
    dtype=DTYPE.value,
    exponent_bits=EXPONENT_BITS.value,
    blocksize=BLOCKSIZE.value,
    outlier_share=OUTLIER_SHARE.value,
    double_quant=DOUBLE_QUANT.value,
    targets=TARGETS.value,
    act_bits=ACT_BITS.value,
    batch_size=BATCH_SIZE.value,
    max_length=MAX_LENGTH.value,
    fsdp=FSDP.value,
    tensor=TENSOR.value,
    step=STEP.value,
    share_prefixes=SHARE_PREFIXES.value,
  )
  result = run.evaluate(
    args,
    TASKS.value,
    OUT.value,
    num_fewshot=NUM_FEWSHOT.value,
    limit=LIMIT.value,
    task_dir=TASK_DIR.value,
    include_path=INCLUDE_PATH.value,
    log_samples=LOG_SAMPLES.value,
  )
  record = result["record"]
  for task, metrics in record["metrics"].items():
    shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if not k.endswith("_stderr"))
    print(f"{task}: {shown}", flush=True)
  record_id = record["harness_results"].split("/")[-1].removesuffix(".json")
  print(f"wrote {OUT.value}/results/{record_id}.json and {OUT.value}/harness/{record_id}.json")

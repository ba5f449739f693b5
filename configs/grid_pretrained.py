"""The k-bit study's grid on pretrained models: OPT, Pythia, GPT-2 and BLOOM, and the
modern families (SmolLM2, Llama 3.x, Mistral, Qwen2.5, Qwen3, Gemma), quantized
post-training and evaluated. The checkpoints are downloaded beforehand and imported once
(kbit_jax/convert/README.md has the download and import commands):

    hf download facebook/opt-125m --local-dir ~/hf/opt-125m
    kbit import --hf_dir ~/hf/opt-125m --workdir ~/kbit/pretrained/opt-125m

    kbit grid --config configs/grid_pretrained.py:families=opt,runlocal --workdir W --dry_run
    kbit grid --config configs/grid_pretrained.py:families=opt,runlocal --workdir W

    python configs/grid_pretrained.py fsdp=8,tensor=1            # memory per device table
    python configs/grid_pretrained.py fsdp=8,families=opt,max_params=7e9,device_gib=80

Arguments: `families` (opt, pythia, gpt2, bloom, the study's and the default; smollm2,
llama, mistral, qwen2.5, qwen3, gemma; `modern` = all six of these; several joined by "+" on
the command line, where "," separates arguments: families=opt+llama), `max_params` (sizes up
to this many parameters; 0 = all), `runlocal` (the smallest model of each family, cheap
evaluation: a CPU run), `fsdp`, `tensor` (the evaluation mesh: devices = fsdp x tensor),
`device_gib` (mark what fits), `hf_root` (downloads), `import_root` (imported workdirs),
`deduped` (Pythia's deduped runs), `revisions` (Pythia's intermediate checkpoints along
training: "log" = steps 1000, 2000, 4000, ..., 64000, 143000; "all" = every 1000 steps from
1000 to 143000; or steps joined by "+", e.g. revisions=1000+8000+143000), `methods`
(quantization methods joined by "+", e.g. methods=rtn+gptq+awq; default rtn; gptq and awq
calibrate on the `calibration` section: 128 windows of data.seq_len tokens (2048, or the
sizes' shortest context; runlocal: 16 of 256) of the corpus' train split in the model's own
tokenizer, kbit_jax/config/calibration_section.py), `task_dir` (the released
LAMBADA/HellaSwag/PiQA/Winogrande files, see kbit_jax/evals/tasks.py; '' = the built-in
tasks made from the embedded corpus).

Sections follow configs/grid.py (`grid`, `base`, `per_size`, `eval`), so
`grid_plan.make_plan` expands and validates the cells; the sizes are the pretrained
presets of kbit_jax/model/presets.py. `pretrained` says where each size's checkpoint comes
from: `repos` ((size, hub id) pairs), downloaded to `hf_root/<size>`, imported to
`import_root/<size>`. With it `kbit grid` trains nothing (`per_size` and the `train`
keys of `base` are unused; W/models/ stays empty): each size is restored from
`import_root/<size>` (`convert.importer.load_imported`, onto the fsdp x tensor mesh), its
net built from the architecture the import saved (architecture.json, so an import whose
shapes differ from the preset of its size name still runs), and evaluated with its own
tokenizer (`data.tokenizer` = the import dir, for perplexity and the tasks). Records
name the hub id (key `hub_id`) and the import dir; cells are named by size ("opt-125m
k4 int B64 p0"). `--dry_run` lists missing imports with the commands that create them;
without it a missing import stops the grid before any work, naming the size, the path
and the `kbit import` command (kbit_jax/grid/plan.py).

quant.targets "attn,mlp": every linear layer of the blocks, as the study (a gated MLP's
gate too); the token embedding (also the tied output layer of OPT, GPT-2, BLOOM, SmolLM2,
Llama 3.2, Qwen2.5 <= 3B, Qwen3 <= 4B, Gemma) and the untied heads stay 16-bit; they are
2-40% of these models' parameters (Gemma-2B: 21%; SmolLM2-135M: 21%). The memory table
shows both. The perplexity rows are min(2048, the shortest context among the sizes)
tokens long: OPT/Pythia/BLOOM's 2048 for the modern families, whose contexts are longer.

Pythia along training (Ouyang et al. 2024 measured quantization damage on these):
each revision stepN saw N x 2,097,152 tokens (Pythia's 1,024 sequences of 2,048 tokens a
step) and is downloaded and imported into its own directory, `<size>-stepN`:

    kbit grid --config configs/grid_pretrained.py:families=pythia,max_params=2e8,revisions=log \
      --workdir W --dry_run      # prints the hf download --revision and kbit import of each

Records carry the revision (key `revision`) and D (`train_tokens`); sizes without
revisions are evaluated at their final model as before.

Meta's Llama and Google's Gemma repos are gated: accept their licence on the hub and
`hf auth login` before `hf download`. The hub ids are the base (pretrained) models.
"""

from __future__ import annotations

import re
import sys

import ml_collections

from kbit_jax.config import calibration_section, defaults, files

# family -> {preset name: Hugging Face hub id}, smallest first
FAMILIES = {
  "opt": {
    f"opt-{s}": f"facebook/opt-{s}"
    for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")
  },
  "pythia": {
    f"pythia-{s}": f"EleutherAI/pythia-{s}"
    for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
  },
  "gpt2": {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
  },
  "bloom": {
    **{f"bloom-{s}": f"bigscience/bloom-{s}" for s in ("560m", "1b1", "1b7", "3b", "7b1")},
    "bloom-176b": "bigscience/bloom",
  },
  "smollm2": {
    f"smollm2-{s.lower()}": f"HuggingFaceTB/SmolLM2-{s}" for s in ("135M", "360M", "1.7B")
  },
  "llama": {
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
  },
  "mistral": {"mistral-7b-v0.3": "mistralai/Mistral-7B-v0.3"},
  "qwen2.5": {f"qwen2.5-{s.lower()}": f"Qwen/Qwen2.5-{s}" for s in ("0.5B", "1.5B", "3B", "7B")},
  "qwen3": {f"qwen3-{s.lower()}": f"Qwen/Qwen3-{s}-Base" for s in ("0.6B", "1.7B", "4B", "8B")},
  "gemma": {"gemma-2b": "google/gemma-2b", "gemma-7b": "google/gemma-7b"},
}
STUDY = ("opt", "pythia", "gpt2", "bloom")  # the default: the k-bit study's families
MODERN = ("smollm2", "llama", "mistral", "qwen2.5", "qwen3", "gemma")  # families=modern
MAX_SEQ_LEN = 2048  # perplexity rows: at most OPT's, Pythia's and BLOOM's context
PYTHIA_TOKENS_PER_STEP = 2_097_152  # 1,024 sequences x 2,048 tokens
PYTHIA_STEPS = tuple(range(1000, 143_001, 1000))  # the hub's step<N> revisions used here
PYTHIA_LOG_STEPS = (1000, 2000, 4000, 8000, 16000, 32000, 64000, 143000)


def pythia_revisions(spec: str) -> tuple[tuple[str, int], ...]:
  """(revision, training tokens) of `revisions=`: "" none, "log", "all", or "+"-joined steps."""
  if not spec:
    return ()
  if spec in ("log", "all"):
    steps = PYTHIA_LOG_STEPS if spec == "log" else PYTHIA_STEPS
  else:
    try:
      steps = tuple(int(s.removeprefix("step")) for s in spec.split("+"))
    except ValueError:
      steps = ()
    bad = [s for s in steps if s not in PYTHIA_STEPS] if steps else [spec]
    if bad:
      raise ValueError(
        f"revisions={spec!r}: {bad[0]!r} is not a Pythia revision used here; allowed: "
        f"'log', 'all' or steps {PYTHIA_STEPS[0]}..{PYTHIA_STEPS[-1]} in multiples of 1000 "
        "joined by '+'"
      )
  return tuple((f"step{s}", s * PYTHIA_TOKENS_PER_STEP) for s in steps)


def _sizes(a: ml_collections.ConfigDict) -> dict[str, str]:
  from kbit_jax.model import presets

  # "+" joins families on the command line, where "," separates arguments
  names = [f.strip() for f in re.split(r"[,+]", a.families) if f.strip()]
  names = [m for f in names for m in (MODERN if f == "modern" else (f,))]
  bad = [f for f in names if f not in FAMILIES]
  if bad or not names:
    raise ValueError(
      f"families={a.families!r}: allowed a comma list of {list(FAMILIES)} or 'modern'"
    )
  out = {}
  for family in names:
    repos = FAMILIES[family]
    if family == "pythia" and a.deduped:
      repos = {k: v + "-deduped" for k, v in repos.items()}
    if a.runlocal:
      repos = dict(list(repos.items())[:1])
    out.update(
      {
        size: repo
        for size, repo in repos.items()
        if not a.max_params
        or presets.param_counts(presets.get_preset(size))["total"] <= a.max_params
      }
    )
  return out


def get_config(arg=None):
  from kbit_jax.model import presets

  a = files.parse_arg(
    arg,
    families=",".join(STUDY),
    max_params=0.0,
    runlocal=False,
    fsdp=1,
    tensor=1,
    device_gib=0.0,
    hf_root="~/hf",
    import_root="~/kbit/pretrained",
    deduped=False,
    task_dir="",
    revisions="",
    methods="rtn",
  )
  sizes = _sizes(a)
  revisions = pythia_revisions(a.revisions)
  pythia = [size for size in sizes if size.startswith("pythia-")]
  if revisions and not pythia:
    raise ValueError(
      f"revisions={a.revisions!r}: only Pythia publishes its checkpoints along training "
      f"here; the grid's sizes are {list(sizes)} (add families=pythia)"
    )
  c = ml_collections.ConfigDict()
  c.grid = ml_collections.ConfigDict(
    dict(
      sizes=tuple(sizes),
      seeds=(0,),
      bits=(3, 4, 5, 6, 8, 16),
      dtypes=("int", "float", "quantile", "nf"),
      blocksizes=(64, 256, 0),
      outlier_shares=(0.0,),
      targets="attn,mlp",
      act_bits=(16,),  # the optional axis at its default (configs/grid.py)
      methods=tuple(m.strip() for m in a.methods.split("+") if m.strip()),
    )
  )
  # The GPTQ reference's 128 x 2048 tokens (its C4 samples; here the corpus' train split).
  c.calibration = ml_collections.ConfigDict(
    {
      **calibration_section.DEFAULTS,
      "sequences": 16 if a.runlocal else 128,
      "seq_len": 0,  # data.seq_len: 2048 or the shortest context of the sizes
      "batch_size": 4,
    }
  )
  base = defaults.base_config()
  # One perplexity row length for all (per_size cannot key sizes with dots, like opt-1.3b):
  # the shortest context among the sizes (GPT-2's 1024 when it is included), at most 2048.
  contexts = [presets.get_preset(size).max_len for size in sizes]
  base.data.seq_len = 256 if a.runlocal else min([MAX_SEQ_LEN, *contexts])
  base.mesh.data, base.mesh.fsdp, base.mesh.tensor = -1, a.fsdp, a.tensor
  c.base = base
  c.per_size = ml_collections.ConfigDict()
  c.eval = ml_collections.ConfigDict(
    dict(
      tasks="lambada,hellaswag,piqa,winogrande",
      task_dir=a.task_dir,  # the released task files ('' = built-in, corpus-made)
      items_per_task=50 if a.runlocal else 0 if a.task_dir else 400,  # 0: every item of a file
      task_seed=0,
      batch_size=8,
      max_len=0,
      ppl_split="validation",
      ppl_max_batches=0 if not a.runlocal else 4,
      text_file="",
      bos="tokenizer",  # BOS as each tokenizer sets it (OPT: yes); "none": lm-eval <= 0.4.9
    )
  )
  c.pretrained = ml_collections.ConfigDict(
    dict(
      hf_root=a.hf_root,
      import_root=a.import_root,
      device_gib=a.device_gib,
      repos=tuple(sizes.items()),
      revisions=tuple((size, r, tokens) for size in pythia for r, tokens in revisions),
    )
  )  # (size, hub id) pairs: sizes like opt-1.3b hold dots
  return c


# ----------------------------------------------------------------------------- memory


def memory_table(config: ml_collections.ConfigDict) -> list[dict]:
  """Per size: parameters and GiB per device on the config's mesh (grid/memory.py)."""
  from kbit_jax.grid import memory
  from kbit_jax.model import presets

  return memory.memory_rows(config, {s: presets.get_preset(s) for s in config.grid.sizes})


def format_memory_table(config: ml_collections.ConfigDict, rows: list[dict]) -> str:
  from kbit_jax.grid import memory

  return memory.format_memory(config, rows, device_gib=config.pretrained.device_gib)


def print_memory_table(arg: str | None = None) -> str:
  config = get_config(arg)
  text = format_memory_table(config, memory_table(config))
  print(text)
  return text


if __name__ == "__main__":
  print_memory_table(sys.argv[1] if len(sys.argv) > 1 else None)

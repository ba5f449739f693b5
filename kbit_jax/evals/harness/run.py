"""`kbit harness`: lm_eval.simple_evaluate on a kbit-jax model, stored as a results record.

    record = run.evaluate(ModelArgs(model_dir=W, bits=4, dtype="nf"), ["hellaswag"], out=R)

    R/results/<id>.json   our record (analysis/results.py): key, model, bits, metrics, as a
                          grid cell's, with the harness's metrics under "harness/<task>"
    R/harness/<id>.json   lm_eval's own results JSON (and <id>.samples.json with
                          log_samples)

Everything is checked before the model is read: the quantization (the grid's messages),
the task directory's files, and every task name against lm_eval's task index (its own
"Tasks not found" error, with our model arguments named). Nothing is written until the
evaluation has finished; each file is written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import pathlib
import tempfile
from typing import Any, Sequence

import jax
import lm_eval
from etils import epath
from lm_eval.tasks import TaskManager
from lm_eval.utils import handle_non_serializable

from kbit_jax.analysis import results
from kbit_jax.evals.harness import loading, offline
from kbit_jax.evals.harness.lm import KbitLM
from kbit_jax.model import presets
from kbit_jax.quant import bits as quant_bits
from kbit_jax.quant.spec import UNQUANTIZED_BITS, QuantSpec

PREFIX = "harness/"  # metrics of harness task T are the record's metrics["harness/T"]


@dataclasses.dataclass(frozen=True)
class HarnessConfig:
  """What the harness evaluates, beside the model: part of every record's key."""

  tasks: tuple[str, ...]
  num_fewshot: int | None = None
  limit: float | None = None
  task_dir: str = ""  # the study's four tasks from local files (offline.py)
  include_path: tuple[str, ...] = ()

  def fingerprint(self, args: loading.ModelArgs) -> str:
    what = dict(
      harness_tasks=list(self.tasks),
      num_fewshot=self.num_fewshot,
      limit=self.limit,
      task_dir=str(pathlib.Path(self.task_dir).absolute()) if self.task_dir else "",
      max_length=args.max_length,
      add_bos_token=args.add_bos_token,
      prefix_token_id=args.prefix_token_id,
      max_gen_toks=args.max_gen_toks,
      lm_eval=lm_eval.__version__,
    )
    return results.cell_id(what)[:8]


def describe(args: loading.ModelArgs) -> str:
  """The model arguments that differ from their defaults, as --model_args writes them."""
  default = loading.ModelArgs()
  return ",".join(
    f"{f.name}={getattr(args, f.name)}"
    for f in dataclasses.fields(args)
    if getattr(args, f.name) != getattr(default, f.name)
  )


def task_manager(harness: HarnessConfig, yaml_dir: str | None) -> TaskManager:
  paths = list(harness.include_path) + ([yaml_dir] if yaml_dir else [])
  return TaskManager(include_path=paths or None)


def check_tasks(tm: TaskManager, harness: HarnessConfig, args: loading.ModelArgs) -> None:
  """lm_eval's own check of --tasks (EvaluatorConfig.process_tasks), before any work."""
  missing = [
    t
    for t in harness.tasks
    if not (pathlib.Path(t).exists() if t.endswith(".yaml") else tm.match_tasks([t]))
  ]
  if missing:
    raise ValueError(
      f"Tasks not found: {', '.join(missing)} (lm_eval's task index"
      f"{' with include_path ' + ':'.join(harness.include_path) if harness.include_path else ''}"
      f"; kbit model_args {describe(args)})"
    )


def harness_metrics(output: dict[str, Any]) -> dict[str, dict[str, float]]:
  """{"harness/<task>": {metric: value}} from simple_evaluate's output: "acc,none" ->
  "acc", "exact_match,strict-match" -> "exact_match/strict-match", plus "n"."""
  out = {}
  for task, values in output["results"].items():
    metrics: dict[str, float] = {}
    for name, value in values.items():
      if "," not in name:
        continue
      metric, filter_name = name.split(",", 1)
      number = value if isinstance(value, (int, float)) else math.nan  # "N/A"
      metrics[metric if filter_name == "none" else f"{metric}/{filter_name}"] = float(number)
    samples = output.get("n-samples", {}).get(task)
    if samples:
      metrics["n"] = samples["effective"]
    out[PREFIX + task] = metrics
  return out


def record_key(model: loading.LoadedModel, eval_id: str) -> dict[str, Any]:
  """The grid's cell key fields (grid/keys.py cell_key) for this model and spec, and the
  model directory: trained models name their preset, seed and training tokens."""
  s: QuantSpec = model.spec
  if model.kind == "trained":
    t, seq_len = model.config.train, model.config.data.seq_len
    seed, train_tokens = t.seed, t.steps * t.batch_size * seq_len
  else:
    seed, train_tokens = 0, 0
  key = dict(
    preset=model.name,
    seed=seed,
    train_tokens=train_tokens,
    **s.key_fields(),
    eval_id=eval_id,
    model_dir=str(pathlib.Path(model.args.model_dir).expanduser().absolute()),
  )
  if s.act_bits != UNQUANTIZED_BITS:
    key["act_bits"] = s.act_bits
  return key


def cell_name(model_name: str, s: QuantSpec) -> str:
  """As grid/plan.py names a cell: "<model> k4 nf B64 p0"."""
  a = f" a{s.act_bits}" if s.act_bits != UNQUANTIZED_BITS else ""
  if not s.quantized:
    return f"{model_name} k16{a}"
  e = f"e{s.exponent_bits}" if s.dtype == "float" else ""
  return f"{model_name} k{s.bits} {s.dtype}{e} B{s.blocksize} p{s.outlier_share:g}{a}"


def make_record(
  model: loading.LoadedModel, metrics: dict[str, Any], eval_id: str, seconds: float
) -> dict[str, Any]:
  """A record of the grid's shape (grid/driver.py make_record): key, model, bits, metrics."""
  counts = presets.param_counts(model.preset)
  report = quant_bits.bits_report(model.float_params, model.spec)
  source = (
    dict(train_steps=model.config.train.steps, step=model.step)
    if model.kind == "trained"
    else dict(family=model.source.get("family", ""), imported_preset=model.source.get("preset"))
  )
  return dict(
    key=record_key(model, eval_id),
    model=dict(
      params=counts["total"],
      non_embedding_params=counts["non_embedding"],
      embedding_params=counts["embedding"],
      kind=model.kind,
      max_length=model.max_len,
      **source,
    ),
    bits=dict(
      total_bits=report["total_bits"],
      bits_per_param=report["bits_per_param"],
      quantized_params=report["quantized_params"],
      quantized_bits_per_param=report["quantized_bits_per_param"],
    ),
    metrics=metrics,
    time=dict(eval_s=seconds),
    name=cell_name(model.name, model.spec),
    lm_eval=lm_eval.__version__,
    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  )


def simple_evaluate(lm: KbitLM, harness: HarnessConfig, tm: TaskManager, **kwargs) -> dict:
  return lm_eval.simple_evaluate(
    model=lm,
    tasks=list(harness.tasks),
    num_fewshot=harness.num_fewshot,
    limit=harness.limit,
    task_manager=tm,
    **kwargs,
  )


def _write_json(path: epath.Path, value: Any) -> None:
  tmp = path.parent / f"{results.TMP_PREFIX}{path.name}"
  tmp.write_text(json.dumps(value, indent=1, default=handle_non_serializable))
  tmp.replace(path)


def evaluate(
  args: loading.ModelArgs,
  tasks: Sequence[str],
  out: str | None = None,
  *,
  num_fewshot: int | None = None,
  limit: float | None = None,
  task_dir: str = "",
  include_path: Sequence[str] = (),
  log_samples: bool = False,
) -> dict[str, Any]:
  """Evaluates, then writes the record and lm_eval's JSON under `out` (if given)."""
  harness = HarnessConfig(tuple(tasks), num_fewshot, limit, task_dir, tuple(include_path))
  loading.check_args(args)
  if not harness.tasks:
    raise ValueError("no tasks: name harness tasks or YAML files, e.g. hellaswag,piqa")
  with tempfile.TemporaryDirectory(prefix="kbit-harness-") as tmp:
    yaml_dir = None
    if task_dir:
      offline.write_task_yamls(task_dir, tmp)
      yaml_dir = tmp
    tm = task_manager(harness, yaml_dir)
    check_tasks(tm, harness, args)
    lm = KbitLM.from_loaded(loading.load(args))
    t0 = datetime.datetime.now()
    output = simple_evaluate(lm, harness, tm, log_samples=log_samples)
    seconds = (datetime.datetime.now() - t0).total_seconds()
  eval_id = harness.fingerprint(args)
  record = make_record(lm.model, harness_metrics(output), eval_id, seconds)
  if out and jax.process_index() == 0:
    out_dir = epath.Path(out)
    record_id = results.cell_id(record["key"])
    (out_dir / "harness").mkdir(parents=True, exist_ok=True)
    samples = output.pop("samples", None)
    if samples is not None:
      _write_json(out_dir / "harness" / f"{record_id}.samples.json", samples)
    _write_json(out_dir / "harness" / f"{record_id}.json", output)
    record["harness_results"] = f"harness/{record_id}.json"
    results.write(out_dir / "results", record)
  return dict(record=record, output=output)

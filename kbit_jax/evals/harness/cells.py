"""Harness tasks inside a grid cell: `eval.harness_tasks` through the bridge.

    check(config.eval)                      # grid plan: lm_eval's own task check, before work
    metrics = cell_metrics(params, net, tokenizer, eval_cfg, spec, import_dir=...)

Each cell's already quantized parameters and net (grid/evaluator.py) are wrapped in a
`KbitLM` without reloading anything, and `lm_eval.simple_evaluate` runs the tasks; the
result is the record's metrics["harness/<task>"] (acc, acc_stderr, ...: run.harness_metrics),
beside the built-in scorer's study tasks, which stay the default. The cell's key carries the
tasks through the eval fingerprint (config/eval_section.py), so adding harness tasks makes
new cells and a grid without them keeps its keys. Imported lazily by the grid, only when
`eval.harness_tasks` is set.
"""

from __future__ import annotations

import functools
from typing import Any

import ml_collections

from kbit_jax.config import eval_section
from kbit_jax.evals import scoring
from kbit_jax.quant.spec import QuantSpec


def _lm_eval():
  try:
    import lm_eval  # noqa: F401
  except ImportError:
    raise ValueError(
      'eval.harness_tasks needs lm-evaluation-harness: pip install "kbit-jax[harness]"'
    ) from None


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: tuple[str, ...]):
  from lm_eval.tasks import TaskManager

  return TaskManager(include_path=list(include_path) or None)


def _harness(eval_cfg: ml_collections.ConfigDict):
  from kbit_jax.evals.harness import run

  return run.HarnessConfig(
    tasks=tuple(eval_section.harness_tasks(eval_cfg)),
    include_path=tuple(eval_section.harness_include_path(eval_cfg)),
  )


def check(eval_cfg: ml_collections.ConfigDict) -> None:
  """lm_eval's check of eval.harness_tasks ("Tasks not found: ..."); nothing when unset."""
  if not eval_section.harness_tasks(eval_cfg):
    return
  _lm_eval()
  from kbit_jax.evals.harness import loading, run

  harness = _harness(eval_cfg)
  try:
    run.check_tasks(_task_manager(harness.include_path), harness, loading.ModelArgs())
  except ValueError as e:
    raise ValueError(f"eval.harness_tasks: {str(e).split(' (lm_eval')[0]}") from None


def cell_metrics(
  params: Any,
  net,
  tokenizer,
  eval_cfg: ml_collections.ConfigDict,
  spec: QuantSpec,
  *,
  kind: str,
  preset,
  import_dir: str = "",
) -> dict[str, dict[str, float]]:
  """{"harness/<task>": metrics} of one cell; {} when eval.harness_tasks is unset."""
  if not eval_section.harness_tasks(eval_cfg):
    return {}
  from kbit_jax.evals.harness import loading, run
  from kbit_jax.evals.harness.lm import KbitLM

  args = loading.ModelArgs(
    model_dir=import_dir, batch_size=eval_cfg.batch_size, max_length=eval_cfg.max_len
  )
  model = loading.LoadedModel(
    args=args,
    kind=kind,
    preset=preset,
    net=net,
    float_params=params,
    params=params,
    spec=spec,
    tokenizer=tokenizer,
    max_len=scoring.scoring_length(net, eval_cfg.max_len),
    step=-1,
  )
  harness = _harness(eval_cfg)
  output = run.simple_evaluate(
    KbitLM.from_loaded(model), harness, _task_manager(harness.include_path)
  )
  return run.harness_metrics(output)

"""Metrics out of the training loop: TensorBoard events, JSONL, and a progress line.

Only process 0 writes. Values arrive as host floats: the loop fetches step t-1's metrics
after dispatching step t, so the host never waits on the device just to log.

A resumed run replays the steps after its checkpoint: metrics.jsonl is first cut back to
the rows of steps up to the resumed step (rewritten atomically) and TensorBoard is told
to purge later events (tensorboardX's `purge_step`), so each step is there once.

MFU (`MfuMeter`) is against a stable peak (model/flops.py `peak_flops`): a known
accelerator's published one, else the best of several matmul measurements. A measured
peak can still be too low on a loaded machine; if a step achieves more, the peak is
raised to what was achieved and said once, so MFU never exceeds 1.

TensorBoard events are written by tensorboardX, whose writer queues events for a
background thread. (clu's `metric_writers` package imports TensorFlow at import time, a
~600 MB dependency that nothing else here needs.)
"""

from __future__ import annotations

import json
import os
import time

import jax
from etils import epath


class MfuMeter:
  """achieved FLOP/s -> model FLOPs utilisation in [0, 1] (see the module docstring)."""

  def __init__(self, peak: float):
    self.peak, self.raised = peak, False

  def __call__(self, achieved: float) -> float:
    if achieved > self.peak and not self.raised and jax.process_index() == 0:
      print(
        f"mfu: this run achieved {achieved:.3g} FLOP/s, above the peak "
        f"{self.peak:.3g} measured at start-up (a loaded machine measures too low); "
        "the peak is raised to it (and to any higher rate later)",
        flush=True,
      )
      self.raised = True
    self.peak = max(self.peak, achieved)
    return achieved / self.peak


def keep_steps_up_to(path: epath.Path, step: int) -> None:
  """Rewrites the JSONL file `path` without its rows of steps after `step` (atomically:
  a temporary file renamed over it)."""
  if not path.exists():
    return
  lines = path.read_text().splitlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (json.JSONDecodeError, KeyError, TypeError):
      continue  # a line a kill cut short
  if len(kept) == len(lines):
    return
  tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
  tmp.write_text("".join(line + "\n" for line in kept))
  tmp.replace(path)


class MetricsLogger:
  def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
    """`start_step`: the step resumed from (0: a fresh run); later rows already written,
    by the run that was stopped, are dropped (see the module docstring)."""
    self.active = jax.process_index() == 0
    self.total_steps = total_steps
    self.logdir = epath.Path(workdir) / "tensorboard"
    self.jsonl_path = epath.Path(workdir) / "metrics.jsonl"
    self._t0 = time.time()
    self._first_step = None
    if self.active:
      import tensorboardX  # here: it imports torch when torch is installed (the harness extra)

      replay = self.logdir.exists() or self.jsonl_path.exists()
      self.writer = tensorboardX.SummaryWriter(
        str(self.logdir), purge_step=start_step + 1 if replay else None
      )
      self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
      keep_steps_up_to(self.jsonl_path, start_step)
      self._jsonl = self.jsonl_path.open("a")

  def write(self, step: int, metrics: dict[str, float], prefix: str = "train"):
    if not self.active:
      return
    named = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
    for name, value in named.items():
      self.writer.add_scalar(name, value, global_step=step)
    self._jsonl.write(json.dumps({"step": step, **named}) + "\n")
    self._jsonl.flush()

  def progress(self, step: int, metrics: dict[str, float]):
    """One line: step/total, loss, tokens/s, MFU, ETA."""
    if not self.active:
      return
    if self._first_step is None:
      self._first_step, self._t0 = step, time.time()
      eta = "?"
    else:
      rate = (step - self._first_step) / max(time.time() - self._t0, 1e-9)
      eta = f"{(self.total_steps - step) / max(rate, 1e-9):.0f}s"
    extra = "".join(f" {k}={metrics[k]:.4g}" for k in ("loss", "val_loss") if k in metrics)
    mfu = f" mfu={metrics['mfu']:.1%}" if "mfu" in metrics else ""
    tps = f" tok/s={metrics['tokens_per_s']:.0f}" if "tokens_per_s" in metrics else ""
    print(f"step {step}/{self.total_steps}{extra}{tps}{mfu} eta={eta}", flush=True)

  def close(self):
    if self.active:
      self.writer.flush()
      self.writer.close()
      self._jsonl.close()

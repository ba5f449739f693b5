"""Metrics out of the training loop: TensorBoard events, JSONL, and a progress line.

Only process 0 writes. Values arrive as host floats: the loop fetches step t-1's metrics
after dispatching step t, so the host never waits on the device just to log.

TensorBoard events are written by tensorboardX, whose writer queues events for a
background thread. (clu's `metric_writers` package imports TensorFlow at import time, a
~600 MB dependency that nothing else here needs.)
"""

from __future__ import annotations

import json
import time

import jax
from etils import epath


class MetricsLogger:
  def __init__(self, workdir: str, total_steps: int):
    self.active = jax.process_index() == 0
    self.total_steps = total_steps
    self.logdir = epath.Path(workdir) / "tensorboard"
    self.jsonl_path = epath.Path(workdir) / "metrics.jsonl"
    self._t0 = time.time()
    self._first_step = None
    if self.active:
      import tensorboardX  # here: it imports torch when torch is installed (the harness extra)

      self.writer = tensorboardX.SummaryWriter(str(self.logdir))
      self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
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

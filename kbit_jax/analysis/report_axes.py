"""The report's tables of the grid's extra axes (extra_axes.py) as blocks: k-bit probes,
weight x activation bits, the N-D fits and the PTQ penalty against training tokens.
"""

from __future__ import annotations

import pandas as pd

from kbit_jax.analysis import extra_axes
from kbit_jax.analysis.render import Block, frame_table, num


def table_blocks(cells: pd.DataFrame) -> list[Block]:
  """The tables the cells (extra_axes.axes_cells) allow; [] without any."""
  blocks: list[Block] = []
  probe = extra_axes.probe_table(cells)
  if not probe.empty:
    blocks += [
      ("h", 3, "k-bit probes: recovered bits (clipped at 0) per weight precision"),
      frame_table(probe),
    ]
    probe_fits = extra_axes.probe_fits(cells)
    if not probe_fits.empty:
      blocks += [
        ("h", 3, "Recovered bits = a + b ln x, least squares over sizes"),
        frame_table(probe_fits.set_index(["tokens", "k", "x"])),
      ]
  for metric, what, digits in (("nll", "ln perplexity", 5), ("acc", "mean zero-shot accuracy", 3)):
    for name, table in extra_axes.act_tables(cells, metric).items():
      blocks += [
        ("h", 3, f"{name}: {what}, weight bits (rows) x activation bits"),
        frame_table(table, digits),
      ]
  fits = extra_axes.nd_fits(cells)
  if fits:
    blocks += [
      ("h", 3, "Performance = a N^b D^c (16-bit cells, log-linear least squares)"),
      (
        "table",
        ("metric", "a", "b (N)", "c (D)", "R^2", "points"),
        [
          (f["metric"], num(f["a"]), num(f["b"]), num(f["c"]), num(f["r2"]), num(f["points"]))
          for f in fits.values()
        ],
      ),
    ]
  penalty = extra_axes.penalty_table(extra_axes.ptq_penalty(cells))
  if not penalty.empty and penalty.shape[1] > 2:
    blocks += [
      ("h", 3, "PTQ penalty nll(k) - nll(16) [nats] per training tokens D"),
      frame_table(penalty),
    ]
  return blocks

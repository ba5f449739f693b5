"""Figures of the grid's extra axes (extra_axes.py): probes, activation bits, tokens.

    figures, notes = plots_axes.make_figures(cells, out_dir)   # cells: extra_axes.axes_cells

  probe_bits    bits recovered by the k-bit probes (summed over k) against non-embedding
                parameters, one curve per weight precision, one panel per training budget
  act_bits      perplexity per weight bits (rows) x activation bits (columns), per model
  ptq_penalty   PTQ penalty (nll of k-bit - nll of 16-bit) against training tokens per
                parameter D/N, one colour per k, one line style per size
A figure whose data is missing is skipped and named in `notes` (plot_style.render).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from etils import epath

from kbit_jax.analysis import extra_axes, plot_style
from kbit_jax.analysis.labels import tokens_label
from kbit_jax.analysis.plot_style import (
  Figure,
  SkipFigure,
  k_color,
  legend,
  log_x_axes,
  panel_grid,
  save,
)

STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")


def fig_probe_bits(cells: pd.DataFrame, out: epath.Path) -> Figure:
  table = extra_axes.probe_table(cells)
  if table.empty or "bits total" not in table:
    raise SkipFigure("no cell has k-bit probe metrics (eval.probes)")
  budgets = sorted(table.index.get_level_values("tokens").unique())
  fig, axes = panel_grid(len(budgets), width=5.0, height=3.8)
  offered = float(sum(int(c.rsplit("k", 1)[1]) for c in extra_axes.probe_columns(cells)))
  for ax, tokens in zip(axes, budgets):
    part = table.xs(tokens, level="tokens").reset_index()
    for k in sorted(part["k"].unique()):
      rows = part[part["k"] == k].sort_values("n")
      ax.plot(rows["n"], rows["bits total"], "-o", color=k_color(k), label=f"{k}-bit", ms=4)
    ax.axhline(offered, color="#999999", ls=":", lw=1, label=f"offered ({offered:g} bits)")
    log_x_axes(
      ax,
      "non-embedding parameters N (log scale)",
      "recovered bits, summed over probes",
      tokens_label(tokens),
    )
    legend(ax)
  return Figure(
    "probe_bits",
    "Recovered bits of the k-bit probes vs parameters",
    "Information recovered, sum over the probes of max(0, k - H(answer | model)) "
    "in bits, weights-only cells of the main method; one curve per weight "
    "precision.",
    save(fig, out, "probe_bits"),
  )


def fig_act_bits(cells: pd.DataFrame, out: epath.Path) -> Figure:
  tables = extra_axes.act_tables(cells, "nll")
  if not tables:
    raise SkipFigure("no cell has activation bits < 16 (grid.act_bits)")
  fig, axes = panel_grid(len(tables), width=3.6, height=3.0)
  for ax, (name, table) in zip(axes, tables.items()):
    ppl = np.exp(table.to_numpy(float))
    ax.imshow(np.log(ppl), cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [f"a{a}" for a in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"k{k}" for k in table.index])
    for i in range(ppl.shape[0]):
      for j in range(ppl.shape[1]):
        ax.text(j, i, f"{ppl[i, j]:.1f}", ha="center", va="center", fontsize=8, color="w")
    ax.set_xlabel("activation bits")
    ax.set_ylabel("weight bits")
    ax.set_title(name, fontsize=9)
  return Figure(
    "act_bits",
    "Weight bits x activation bits (perplexity)",
    "Validation perplexity per weight precision k (rows) and matmul-input "
    "precision a (columns), main method, per trained model.",
    save(fig, out, "act_bits"),
  )


def fig_ptq_penalty(cells: pd.DataFrame, out: epath.Path) -> Figure:
  penalty = extra_axes.ptq_penalty(cells)
  if penalty.empty or penalty["tokens"].nunique() < 2:
    raise SkipFigure(
      "needs quantized and 16-bit cells at >= 2 training-token budgets (grid.tokens)"
    )
  fig, axes = panel_grid(1, width=5.6, height=4.2)
  ax = axes[0]
  presets = list(penalty.sort_values("n")["preset"].unique())
  for k in sorted(penalty["k"].unique()):
    for i, preset in enumerate(presets):
      rows = penalty[(penalty["k"] == k) & (penalty["preset"] == preset)]
      rows = rows.groupby("d_over_n", as_index=False)["penalty"].mean()
      ax.plot(
        rows["d_over_n"],
        rows["penalty"],
        STYLES[i % len(STYLES)],
        marker=MARKERS[i % len(MARKERS)],
        color=k_color(k),
        ms=4,
        label=f"{k}-bit {preset}",
      )
  ax.axhline(0, color="#999999", lw=0.8)
  log_x_axes(
    ax,
    "training tokens per non-embedding parameter D/N (log scale)",
    "PTQ penalty: nll(k-bit) - nll(16-bit) [nats]",
  )
  legend(ax)
  return Figure(
    "ptq_penalty",
    "PTQ penalty vs training tokens",
    "Post-training-quantization penalty at fixed N as the training budget D "
    "grows (main method, weights only).",
    save(fig, out, "ptq_penalty"),
  )


FIGURES: tuple[Callable[[pd.DataFrame, epath.Path], Figure], ...] = (
  fig_probe_bits,
  fig_act_bits,
  fig_ptq_penalty,
)


def make_figures(cells: pd.DataFrame, out_dir: str) -> tuple[list[Figure], list[str]]:
  """The probe, activation-bits and PTQ-penalty figures the cells allow."""
  return plot_style.render(FIGURES, cells, out_dir)

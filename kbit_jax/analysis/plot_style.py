"""What every figure shares: colours, labels, panel grids, axes, saving, the pieces of an
Analysis its figures draw (bits panels, method titles, main family), and running the
makers.

    fig, axes = plot_style.panel_grid(3)                # up to 3 panels a row
    figure = Figure(name, title, caption, plot_style.save(fig, out, name))
    figures, notes = plot_style.render(makers, data, out_dir)

A maker is a `fig_*(data, out) -> Figure` that raises SkipFigure when its data is
missing; `render` turns each skip into a note naming the figure and why.
"""
# ruff: noqa: E402 (pyplot is imported after choosing its backend)

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from etils import epath
from matplotlib import ticker

from kbit_jax.analysis import bitoptimal
from kbit_jax.analysis.analyse import Analysis
from kbit_jax.analysis.labels import blocksize_label

K_COLORS = {
  2: "#8c564b",
  3: "#d62728",
  4: "#ff7f0e",
  5: "#bcbd22",
  6: "#2ca02c",
  7: "#17becf",
  8: "#1f77b4",
  16: "#000000",
}
OTHER_COLORS = (
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#9467bd",
  "#ff7f0e",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
)
BITS_LABEL = "total model bits (log scale)"
METRIC_LABEL = {"acc": "mean zero-shot accuracy", "nll": "perplexity (validation, log scale)"}
DPI = 130


class SkipFigure(Exception):
  """This figure's data is missing (the message says what)."""


@dataclasses.dataclass
class Figure:
  name: str
  title: str
  caption: str
  paths: list[epath.Path]

  @property
  def png(self) -> epath.Path:
    return next(p for p in self.paths if p.suffix == ".png")


def k_color(k: int) -> str:
  return K_COLORS.get(int(k), "#7f7f7f")


def plotted(metric: str, values):
  """Plotted value: perplexity for nll, accuracy as is."""
  return np.exp(values) if metric == "nll" else values


def log_x_axes(
  ax,
  xlabel: str,
  ylabel: str,
  title: str = "",
  title_size: float = 10,
  log_perplexity: bool = False,
):
  """Every figure's axes: log x, labels, a title if given, the grid; log_perplexity: a log
  perplexity y axis too."""
  ax.set_xscale("log")
  # Labels at 1-2-5 steps only: matplotlib labels every minor tick of an axis spanning
  # under two decades, and "3x10^1 4x10^1 6x10^1" overlap.
  ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(ticker.LogFormatterSciNotation(labelOnlyBase=False))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  if log_perplexity:
    log_perplexity_axis(ax)
  if xlabel:
    ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=title_size)
  ax.grid(True, which="both", alpha=0.25)


def log_perplexity_axis(ax):
  """Log y with plain numbers at 1-2-5 steps (perplexity spans one to three decades)."""
  ax.set_yscale("log")
  ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def mean_points(cells: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(total bits, plotted metric) per size: mean over seeds, sorted by bits."""
  lb, y = bitoptimal.curve_points(cells[np.isfinite(cells[metric].to_numpy(float))], metric)
  return np.exp(lb), plotted(metric, y)


def line(ax, cells, metric, label, color, style="-", marker="o"):
  x, y = mean_points(cells, metric)
  if len(x):
    ax.plot(x, y, style, marker=marker, color=color, label=label, lw=1.6, ms=4)


def legend(ax):
  handles, labels = ax.get_legend_handles_labels()
  if handles:
    ax.legend(fontsize=8, loc="best", framealpha=0.8)


def save(fig, out_dir: epath.Path, name: str) -> list[epath.Path]:
  paths = []
  for ext in ("png", "pdf"):
    path = out_dir / f"{name}.{ext}"
    fig.savefig(str(path), dpi=DPI)
    paths.append(path)
  plt.close(fig)
  return paths


def subplots(rows: int, cols: int, width: float, height: float, **kwargs):
  """(figure, rows x cols array of axes), each panel `width` x `height` inches."""
  return plt.subplots(
    rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained", **kwargs
  )


def panel_grid(n: int, width: float = 4.6, height: float = 3.6):
  """(figure, list of n axes), up to 3 a row; the unused places of the last row hidden."""
  cols = min(n, 3)
  fig, axes = subplots(-(-n // cols), cols, width, height)
  for ax in axes.flat[n:]:
    ax.set_visible(False)
  return fig, list(axes.flat[:n])


# ----------------------------------------------------------------------------- analysis panels


def finish_bits_panel(ax, a: Analysis, metric: str, title: str):
  """A panel of total bits against `metric`: the tasks' chance accuracy dotted (acc),
  its axes, its legend."""
  if metric == "acc" and len(a.cells):
    ax.axhline(a.cells["chance"].mean(), color="#999999", ls=":", lw=1, label="chance")
  log_x_axes(ax, BITS_LABEL, METRIC_LABEL[metric], title, log_perplexity=metric == "nll")
  legend(ax)


def has_metric(cells: pd.DataFrame, metric: str) -> bool:
  """Whether any cell has a finite `metric`."""
  return bool(len(cells)) and bool(np.isfinite(cells[metric].to_numpy(float)).any())


def main_family(a: Analysis) -> str:
  """The training family the figures draw (Analysis.main_family)."""
  return a.main_family()


def method_title(a: Analysis, method: str, family: str | None = None) -> str:
  """e.g. 'data type nf+dq, block size 64, outliers p=0.02 (D=1M)' (the family only when
  there are several)."""
  c = a.cells[a.cells["method"] == method].iloc[0]
  b = blocksize_label(c["blocksize"])
  title = f"data type {c['dtype']}{'+dq' if c['double_quant'] else ''}, block size {b}"
  title += f", outliers p={c['outlier_share']:g}" if c["outlier_share"] else ""
  qm = c.get("quant_method", "rtn")
  title += f", {qm.upper()}" if isinstance(qm, str) and qm != "rtn" else ""
  return title + (f" ({family})" if family and len(a.families()) > 1 else "")


def render(
  makers: Sequence[Callable[[Any, epath.Path], Figure]], data: Any, out_dir: str
) -> tuple[list[Figure], list[str]]:
  """Runs each `fig_*` maker on `data`; `notes` names the skipped figures and why."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  figures, notes = [], []
  for make in makers:
    try:
      figures.append(make(data, out))
    except SkipFigure as e:
      notes.append(f"figure {make.__name__.removeprefix('fig_')} skipped: {e}")
    finally:
      plt.close("all")
  return figures, notes

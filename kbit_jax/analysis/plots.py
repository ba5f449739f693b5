"""Paper-style figures of the k-bit study from an `Analysis` (PNG + PDF, Agg): those of
the measurements here, then those of the fits (plots_fits.py).

    figures, notes = plots.make_figures(analysis, out_dir)

Figures (x = total model bits, log scale; one colour per k, fixed in K_COLORS):
  acc_vs_bits           mean zero-shot accuracy per data type at the main block size
  ppl_vs_bits           perplexity, the same panels
  acc_vs_bits_by_setup  the main method per training family, or per training seed
  blocksize_dtype_4bit  4-bit: data types at the main block size; block sizes of the main type
  outliers              outlier-dependent (proxy) quantization against plain, k <= 4
  bits_scaling_<m>      one per quantization method m (rtn, gptq, awq) when there are several
  fits, bit_optimal, precision_law   (plots_fits.py)
  bitopt_vs_tokens, bits_by_budget, qid_laws   (plots_length.py: several training budgets)
A figure whose data is missing is skipped and named in `notes`, never an error.
The *main* method is labels.main_method's, as in the extra axes' tables and the report;
the figures above it show the main quantization method's cells (rtn when present).
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
from etils import epath

from kbit_jax.analysis import plot_style
from kbit_jax.analysis.analyse import Analysis
from kbit_jax.analysis.cells import METRICS
from kbit_jax.analysis.labels import (
  BASELINE_BITS,
  MAIN_DTYPES,
  blocksize_label,
  blocksize_order,
  curve_k,
  main_method,
  main_quant_method,
  method_label,
  quant_method_of,
  quant_methods,
)
from kbit_jax.analysis.plot_style import (
  METRIC_LABEL,
  OTHER_COLORS,
  Figure,
  SkipFigure,
  finish_bits_panel,
  has_metric,
  k_color,
  line,
  main_family,
  method_title,
  panel_grid,
  save,
  subplots,
)
from kbit_jax.analysis.plots_fits import fig_bit_optimal, fig_fits, fig_precision_law
from kbit_jax.analysis.plots_length import fig_bitopt_vs_tokens, fig_bits_by_budget, fig_qid_laws


def _plain(a: Analysis, blocksize=None) -> pd.DataFrame:
  """Quantized cells without outliers (at `blocksize` if given) of the main quantization
  method (rtn when present; the others have their own figures, `method_figures`)."""
  c = a.cells
  q = c[(c["k"] != BASELINE_BITS) & (c["outlier_share"] == 0)]
  q = q[quant_method_of(q) == main_quant_method(q)]
  return q if blocksize is None else q[q["blocksize"] == blocksize]


# ----------------------------------------------------------------------------- figures


def _bits_panels(a: Analysis, metric: str, out: epath.Path, name: str) -> Figure:
  if not has_metric(a.cells, metric):
    raise SkipFigure(f"no cell has a finite {metric}")
  main = main_method(a.cells)
  b = main.blocksize if main else None
  methods = list(
    dict.fromkeys(
      _plain(a, b).sort_values(
        "dtype", key=lambda s: s.map(lambda d: MAIN_DTYPES.index(d) if d in MAIN_DTYPES else 99)
      )["method"]
    )
  )
  if not methods:
    raise SkipFigure("no quantized cells without outliers")
  family = main_family(a)
  fig, axes = panel_grid(len(methods))
  for ax, method in zip(axes, methods):
    for curve, cells in a.curves(family, method).items():
      k = curve_k(curve)
      line(
        ax,
        cells,
        metric,
        f"{k}-bit" if k != BASELINE_BITS else "16-bit (float)",
        k_color(k),
        "--" if k == BASELINE_BITS else "-",
      )
    finish_bits_panel(ax, a, metric, method_title(a, method, family))
  what = METRIC_LABEL[metric].split(" (")[0]
  fig.suptitle(f"{what} vs total model bits, one curve per k")
  return Figure(
    name,
    f"{what.capitalize()} vs total model bits",
    f"One panel per data type at block size {blocksize_label(b)}, no "
    f"outliers ({family}); points are model sizes (mean over seeds).",
    save(fig, out, name),
  )


def fig_acc_vs_bits(a, out):
  return _bits_panels(a, "acc", out, "acc_vs_bits")


def fig_ppl_vs_bits(a, out):
  return _bits_panels(a, "nll", out, "ppl_vs_bits")


def fig_by_setup(a: Analysis, out: epath.Path) -> Figure:
  main = main_method(a.cells)
  if main is None or not has_metric(a.cells, "acc"):
    raise SkipFigure("no quantized cells with accuracy")
  method = main.label
  families, seeds = a.families(), sorted(a.cells["seed"].unique())
  if len(families) > 1:
    panels = [(f"training setup {f}", f, None) for f in families]
  elif len(seeds) > 1:
    panels = [(f"training seed {s}", families[0], s) for s in seeds]
  else:
    raise SkipFigure("one training setup and one seed: nothing to compare")
  fig, axes = panel_grid(len(panels))
  for ax, (title, family, seed) in zip(axes, panels):
    for curve, cells in a.curves(family, method).items():
      k = curve_k(curve)
      cells = cells if seed is None else cells[cells["seed"] == seed]
      line(ax, cells, "acc", f"{k}-bit", k_color(k), "--" if k == BASELINE_BITS else "-")
    finish_bits_panel(ax, a, "acc", f"{title}\n{method_title(a, method)}")
  return Figure(
    "acc_vs_bits_by_setup",
    "Accuracy vs total bits per training setup",
    f"The main method ({method}) for each "
    f"{'training family' if len(families) > 1 else 'training seed'}.",
    save(fig, out, "acc_vs_bits_by_setup"),
  )


def _compare_panel(ax, a, metric, groups: dict[str, pd.DataFrame], title: str):
  for i, (label, cells) in enumerate(groups.items()):
    line(ax, cells, metric, label, OTHER_COLORS[i % len(OTHER_COLORS)])
  base = a.cells[(a.cells["k"] == BASELINE_BITS) & (a.cells["family"] == main_family(a))]
  line(ax, base, metric, "16-bit (float)", k_color(BASELINE_BITS), "--")
  finish_bits_panel(ax, a, metric, title)


def fig_blocksize_dtype(a: Analysis, out: epath.Path, k: int = 4) -> Figure:
  family = main_family(a)
  q = _plain(a)
  q = q[(q["k"] == k) & (q["family"] == family)]
  main = main_method(a.cells)
  b = main.blocksize if main else None
  by_dtype = {d: c for d, c in q[q["blocksize"] == b].groupby("dtype")}
  dtype_with_most = q.groupby("dtype")["blocksize"].nunique()
  dtype = (
    main.dtype
    if main and dtype_with_most.get(main.dtype, 0) > 1
    else (dtype_with_most.idxmax() if len(dtype_with_most) else None)
  )
  blocks = dict(tuple(q[q["dtype"] == dtype].groupby("blocksize"))) if dtype else {}
  by_block = {f"B={blocksize_label(bs)}": blocks[bs] for bs in sorted(blocks, key=blocksize_order)}
  panels = [
    (f"{k}-bit data types, block size {blocksize_label(b)}", by_dtype),
    (f"{k}-bit block sizes, data type {dtype}", by_block),
  ]
  panels = [(t, g) for t, g in panels if len(g) >= 2]
  metrics = [m for m in METRICS if has_metric(q, m)]
  if not panels or not metrics:
    raise SkipFigure(f"fewer than 2 data types and fewer than 2 block sizes at k={k}")
  metrics = sorted(metrics, key=lambda m: m != "acc")
  fig, axes = subplots(len(metrics), len(panels), width=5.2, height=3.8)
  for row, metric in enumerate(metrics):
    for col, (title, groups) in enumerate(panels):
      _compare_panel(axes[row][col], a, metric, groups, title)
  return Figure(
    "blocksize_dtype_4bit",
    f"Block size and data type at {k} bits",
    "Left: data types at one block size; right: block sizes of one data type. "
    "16-bit baseline dashed.",
    save(fig, out, "blocksize_dtype_4bit"),
  )


def fig_outliers(a: Analysis, out: epath.Path) -> Figure:
  c = a.cells[a.cells["family"] == main_family(a)]
  c = c[quant_method_of(c) == main_quant_method(c)]
  proxy = c[(c["outlier_share"] > 0) & (c["k"] != BASELINE_BITS)]
  if proxy.empty:
    raise SkipFigure("no cells with outlier-dependent quantization (outlier_share > 0)")
  dtype, b = proxy["dtype"].mode().iloc[0], proxy["blocksize"].mode().iloc[0]
  plain = c[(c["outlier_share"] == 0) & (c["dtype"] == dtype) & (c["blocksize"] == b)]
  proxy = proxy[(proxy["dtype"] == dtype) & (proxy["blocksize"] == b)]
  ks = sorted(k for k in set(proxy["k"]) if k <= 4) or sorted(set(proxy["k"]))[:2]
  metrics = sorted([m for m in METRICS if has_metric(proxy, m)], key=lambda m: m != "acc")
  fig, axes = panel_grid(len(metrics), width=5.2, height=3.8)
  for ax, metric in zip(axes, metrics):
    for k in ks:
      line(ax, plain[plain["k"] == k], metric, f"{k}-bit plain", k_color(k))
      for p, cells in proxy[proxy["k"] == k].groupby("outlier_share"):
        line(ax, cells, metric, f"{k}-bit, outliers p={p:g}", k_color(k), "--", "s")
    finish_bits_panel(
      ax,
      a,
      metric,
      f"outlier-dependent vs plain, data type {dtype}, block size {blocksize_label(b)}",
    )
  return Figure(
    "outliers",
    "Outlier-dependent quantization vs plain",
    "Solid: plain; dashed: the p share of hidden units kept in 16 bits.",
    save(fig, out, "outliers"),
  )


def _method_figure(a: Analysis, out: epath.Path, quant_method: str) -> Figure:
  """Bit-level scaling under one quantization method: perplexity (and accuracy) vs total
  bits, one curve per k, at the main data type and block size."""
  main = main_method(a.cells)
  if main is None:
    raise SkipFigure("no quantized cells without outliers")
  rows = a.cells[a.cells["dtype"] == main.dtype]
  double_quant = bool(rows.loc[rows["method"] == main.label, "double_quant"].iloc[0])
  label = method_label(main.dtype, main.blocksize, 0.0, double_quant, quant_method)
  if label not in set(a.cells["method"]):
    raise SkipFigure(f"no {quant_method} cells of {main.label}")
  family = main_family(a)
  metrics = sorted([m for m in METRICS if has_metric(a.cells, m)], key=lambda m: m != "nll")
  fig, axes = panel_grid(len(metrics), width=5.2, height=3.8)
  for ax, metric in zip(axes, metrics):
    for curve, cells in a.curves(family, label).items():
      k = curve_k(curve)
      base = k == BASELINE_BITS
      line(
        ax,
        cells,
        metric,
        "16-bit (float)" if base else f"{k}-bit",
        k_color(k),
        "--" if base else "-",
      )
    finish_bits_panel(ax, a, metric, method_title(a, label, family))
  name = f"bits_scaling_{quant_method}"
  return Figure(
    name,
    f"Bit-level scaling with {quant_method.upper()}",
    f"{label}: one curve per k ({family}); points are model sizes (mean over seeds). "
    "Same axes as the other methods' figures.",
    save(fig, out, name),
  )


def method_figures(a: Analysis) -> list[Callable[[Analysis, epath.Path], Figure]]:
  """One bit-level scaling figure per quantization method (rtn, gptq, awq) when the cells
  hold more than one; none otherwise (a store without the methods axis is unchanged)."""
  methods = quant_methods(a.cells)
  if len(methods) < 2:
    return []
  makers = []
  for qm in methods:

    def make(a, out, qm=qm):
      return _method_figure(a, out, qm)

    make.__name__ = f"fig_bits_scaling_{qm}"
    makers.append(make)
  return makers


FIGURES: tuple[Callable[[Analysis, epath.Path], Figure], ...] = (
  fig_acc_vs_bits,
  fig_by_setup,
  fig_blocksize_dtype,
  fig_outliers,
  fig_ppl_vs_bits,
  fig_fits,
  fig_bit_optimal,
  fig_precision_law,
  fig_bitopt_vs_tokens,
  fig_bits_by_budget,
  fig_qid_laws,
)


def make_figures(a: Analysis, out_dir: str) -> tuple[list[Figure], list[str]]:
  """Every figure the analysis allows; `notes` names the skipped ones and why."""
  return plot_style.render(FIGURES + tuple(method_figures(a)), a, out_dir)

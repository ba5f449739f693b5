"""Figures of a knowledge-graph analysis (kg_analyse.KGAnalysis), PNG + PDF, in the LM
figures' style (plot_style.py: one colour per k, log total bits on x, one panel per
training family):

  kg_mrr_vs_bits        MRR vs total model bits, one curve per k (main method + 16-bit),
                        error bars = one standard error over test triples
  kg_hits10_vs_bits     Hits@10, the same panels
  kg_unleaked_vs_bits   MRR on the unleaked test triples (no reversed twin in train)
  kg_fits               the bounded fits per k with bootstrap bands (metrics with signal)
  kg_bit_optimal        best k per budget (filled: resolved beyond noise, open: a tie)
                        and the winner's margin in standard errors
  kg_nd_fit             16-bit MRR vs N = dim x entities, one line per D, a N^b D^c

    figures, notes = kg_plots.make_figures(analysis, out_dir)

A panel whose metric is "no signal" (kg_analyse) says so on the panel; a figure without
data is skipped and named in `notes`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from etils import epath

from kbit_jax.analysis import plot_style
from kbit_jax.analysis.kg_analyse import NO_SIGNAL, KGAnalysis
from kbit_jax.analysis.kg_cells import FIT_METRICS, METRIC_LABEL, Z, size_means
from kbit_jax.analysis.labels import BASELINE_BITS, curve_k, main_method
from kbit_jax.analysis.plot_style import (
  BITS_LABEL,
  OTHER_COLORS,
  Figure,
  SkipFigure,
  k_color,
  legend,
  log_x_axes,
  panel_grid,
  save,
  subplots,
)


def _main(a: KGAnalysis) -> str:
  main = main_method(a.cells)
  if main is None:
    raise SkipFigure("no quantized cells")
  return main.label


def _k_label(k: int) -> str:
  return f"{k}-bit" if k != BASELINE_BITS else "16-bit (float)"


def _errorbar_curve(ax, cells, metric, label, color, style="-"):
  p = size_means(cells, metric)
  if len(p):
    ax.errorbar(
      p["total_bits"],
      p["value"],
      yerr=p["stderr"],
      fmt=style,
      marker="o",
      color=color,
      label=label,
      lw=1.4,
      ms=4,
      capsize=2,
    )


def _no_signal_note(ax, a: KGAnalysis, family: str, metric: str) -> None:
  if a.verdict(family, metric) == NO_SIGNAL:
    ax.text(
      0.5,
      0.5,
      f"{NO_SIGNAL}: flat within {Z:g} standard errors",
      transform=ax.transAxes,
      ha="center",
      va="center",
      fontsize=9,
      color="#b00000",
      bbox=dict(facecolor="white", alpha=0.8, edgecolor="#b00000"),
    )


def _bits_panels(a: KGAnalysis, metric: str, out: epath.Path, name: str) -> Figure:
  if not np.isfinite(a.cells[metric].to_numpy(float)).any():
    raise SkipFigure(f"no cell has a finite {metric}")
  method = _main(a)
  families = a.families()
  fig, axes = panel_grid(len(families))
  for ax, family in zip(axes, families):
    for curve, cells in a.curves(family, method).items():
      k = curve_k(curve)
      _errorbar_curve(ax, cells, metric, _k_label(k), k_color(k), "--" if k == 16 else "-")
    chance = a.cells[f"chance/{metric}"].mean()
    ax.axhline(chance, color="#999999", ls=":", lw=1, label=f"chance ({chance:.1e})")
    log_x_axes(ax, BITS_LABEL, METRIC_LABEL[metric], f"{family}\n{method}")
    _no_signal_note(ax, a, family, metric)
    legend(ax)
  what = METRIC_LABEL[metric]
  fig.suptitle(f"{what} vs total model bits, one curve per k")
  return Figure(
    name,
    f"{what} vs total model bits",
    f"One panel per (model, training triples); points are embedding dimensions (mean "
    f"over seeds), {method} and the 16-bit tables; error bars: one standard error over "
    "test triples.",
    save(fig, out, name),
  )


def fig_kg_mrr_vs_bits(a, out):
  return _bits_panels(a, "mrr", out, "kg_mrr_vs_bits")


def fig_kg_hits10_vs_bits(a, out):
  return _bits_panels(a, "hits@10", out, "kg_hits10_vs_bits")


def fig_kg_unleaked_vs_bits(a, out):
  return _bits_panels(a, "unleaked/mrr", out, "kg_unleaked_vs_bits")


def fig_kg_fits(a: KGAnalysis, out: epath.Path) -> Figure:
  method = _main(a)
  metrics = [m for m in FIT_METRICS if any(key[3] == m for key in a.curve_fits)]
  if not metrics:
    raise SkipFigure("no curve fitted (every metric flat within noise, or too few sizes)")
  families = a.families()
  fig, axes = subplots(len(metrics), len(families), width=4.6, height=3.6)
  for row, metric in enumerate(metrics):
    for col, family in enumerate(families):
      ax = axes[row][col]
      for curve, cells in a.curves(family, method).items():
        k, fit = curve_k(curve), a.curve_fit(family, method, curve, metric)
        p = size_means(cells, metric)
        ax.errorbar(
          p["total_bits"], p["value"], yerr=p["stderr"], fmt="o", color=k_color(k), ms=4, capsize=2
        )
        if fit is None:
          continue
        lb = np.log(p["total_bits"].to_numpy(float))
        grid = np.linspace(lb.min() - 0.3, lb.max() + 0.3, 80)
        point, low, high = fit.predict_band((grid - fit.data.ctx["x0"])[:, None])
        ax.plot(
          np.exp(grid),
          point,
          "--" if k == BASELINE_BITS else "-",
          color=k_color(k),
          lw=1.5,
          label=f"{k}-bit (hi={fit.params['hi']:.2f})",
        )
        if np.isfinite(low).all():
          ax.fill_between(np.exp(grid), low, high, color=k_color(k), alpha=0.15, lw=0)
      log_x_axes(ax, BITS_LABEL, METRIC_LABEL[metric], f"bounded fits, {family}", title_size=9)
      _no_signal_note(ax, a, family, metric)
      legend(ax)
  return Figure(
    "kg_fits",
    "Bounded fits per k with bootstrap bands",
    "Lines: lo + (hi - lo) sigmoid(s ln(bits / m_bits)) per k, lo = chance fixed; bands: "
    f"{a.level:.0%} bootstrap bands ({a.n_boot} replicates over trained models); points: "
    "measured, one standard error. Curves flat within noise are not fitted.",
    save(fig, out, "kg_fits"),
  )


def fig_kg_bit_optimal(a: KGAnalysis, out: epath.Path) -> Figure:
  method = _main(a)
  panels = [(f, m) for f in a.families() for m in FIT_METRICS if (f, method, m) in a.bit_optimal]
  if not panels:
    raise SkipFigure("no bit-optimal comparison (no metric moves beyond noise, or < 2 k)")
  # One column per family, a (k, margin) pair of rows per metric: a readable grid, not
  # one row of families x metrics panels.
  families = list(dict.fromkeys(f for f, _ in panels))
  metrics = [m for m in FIT_METRICS if any(pm == m for _, pm in panels)]
  fig, axes = subplots(
    2 * len(metrics),
    len(families),
    width=4.6,
    height=2.8,
    sharex="col",
    gridspec_kw={"height_ratios": [2, 1] * len(metrics)},
  )
  for ax in axes.flat:
    ax.set_visible(False)
  ks = sorted(
    {curve_k(c) for f, m in panels for c in a.bit_optimal[(f, method, m)]["best_interp"].dropna()}
  ) or [4]
  for family, metric in panels:
    row, col = 2 * metrics.index(metric), families.index(family)
    t, top, bottom = a.bit_optimal[(family, method, metric)], axes[row][col], axes[row + 1][col]
    top.set_visible(True), bottom.set_visible(True)
    ok = t["best_interp"].notna()
    won = [curve_k(c) for c in t["best_interp"][ok]]
    resolved = t["resolved_interp"][ok].fillna(False).astype(bool).to_numpy()
    y = np.array([ks.index(k) for k in won])
    x = t["budget_bits"][ok].to_numpy()
    top.step(x, y, "-", where="mid", color="#444444", lw=1)
    colors = [k_color(k) for k in won]
    top.scatter(
      x[resolved],
      y[resolved],
      c=np.array(colors)[resolved],
      s=40,
      zorder=3,
      label=f"resolved (> {Z:g} s.e.)",
    )
    top.scatter(
      x[~resolved],
      y[~resolved],
      facecolors="none",
      edgecolors=np.array(colors)[~resolved],
      s=40,
      zorder=3,
      label="within noise of another k",
    )
    top.set_ylim(-0.5, len(ks) - 0.5)
    top.set_yticks(range(len(ks)), [f"{k}-bit" for k in ks])
    log_x_axes(top, "", "bit-optimal k", f"{METRIC_LABEL[metric]}\n{family}, {method}", 9)
    legend(top)
    bottom.plot(x, t["margin_z"][ok], "-o", color=OTHER_COLORS[0], ms=4)
    bottom.axhline(Z, color="#b00000", ls=":", lw=1)
    log_x_axes(bottom, BITS_LABEL, "margin over\nrunner-up (s.e.)")
  return Figure(
    "kg_bit_optimal",
    "Bit-optimal k per total-bits budget",
    "Top: the k with the best interpolated metric at each budget (filled: it beats every "
    f"other k there by more than {Z:g} standard errors; open: within noise of another k); "
    "bottom: the winner's smallest margin, in standard errors (dotted: the threshold).",
    save(fig, out, "kg_bit_optimal"),
  )


def fig_kg_nd_fit(a: KGAnalysis, out: epath.Path) -> Figure:
  fits = {key: f for key, f in a.nd_fits.items() if key[1] == "mrr"} or a.nd_fits
  if not fits:
    raise SkipFigure("no N-D fit (16-bit cells at >= 2 dims x >= 2 data sizes that move)")
  fig, axes = panel_grid(len(fits), width=5.0, height=3.8)
  for ax, ((model, metric), f) in zip(axes, fits.items()):
    base = a.cells[(a.cells["model"] == model) & (a.cells["k"] == BASELINE_BITS)]
    for i, (d, rows) in enumerate(sorted(base.groupby("triples"))):
      rows = rows.sort_values("n")
      color = OTHER_COLORS[i % len(OTHER_COLORS)]
      ax.errorbar(
        rows["n"],
        rows[metric],
        yerr=rows[f"{metric}_stderr"],
        fmt="o",
        color=color,
        ms=4,
        capsize=2,
      )
      grid = np.geomspace(rows["n"].min() / 1.3, rows["n"].max() * 1.3, 50)
      ax.plot(grid, f["a"] * grid ** f["b"] * d ** f["c"], "-", color=color, label=f"D={d:,}")
    ax.set_yscale("log")
    log_x_axes(
      ax,
      "entity-table parameters N = dim x entities (log scale)",
      f"{METRIC_LABEL[metric]} (log)",
      f"{model}: {f['a']:.3g} N^{f['b']:.2f} D^{f['c']:.2f}, R²={f['r2']:.2f}, "
      f"χ²/dof={f['chi2']:.0f}/{f['dof']}",
      title_size=9,
    )
    legend(ax)
  return Figure(
    "kg_nd_fit",
    "Performance = a N^b D^c (16-bit tables)",
    "Points: 16-bit cells (one standard error); lines: the log-linear least-squares fit, one "
    "per training-set size D. χ² against the cells' standard errors: far above its dof "
    "means the form misses the data beyond noise.",
    save(fig, out, "kg_nd_fit"),
  )


FIGURES: tuple[Callable[[KGAnalysis, epath.Path], Figure], ...] = (
  fig_kg_mrr_vs_bits,
  fig_kg_hits10_vs_bits,
  fig_kg_unleaked_vs_bits,
  fig_kg_fits,
  fig_kg_bit_optimal,
  fig_kg_nd_fit,
)


def make_figures(a: KGAnalysis, out_dir: str) -> tuple[list[Figure], list[str]]:
  return plot_style.render(FIGURES, a, out_dir)

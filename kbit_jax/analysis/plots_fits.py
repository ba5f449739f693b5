"""Figures of the fits of an `Analysis` (PNG + PDF), drawn for its main method:

  fits           fitted power-law / sigmoid curves per k with bootstrap bands
  bit_optimal    best k per total-bits budget, and the bootstrap share it wins
  precision_law  the joint ptq / neff laws against parameters, one curve per k

plots.make_figures draws them after the figures of the measurements.
"""

from __future__ import annotations

import numpy as np
from etils import epath

from kbit_jax.analysis.analyse import Analysis
from kbit_jax.analysis.cells import METRICS
from kbit_jax.analysis.labels import BASELINE_BITS, curve_k, main_method
from kbit_jax.analysis.plot_style import (
  BITS_LABEL,
  METRIC_LABEL,
  Figure,
  SkipFigure,
  finish_bits_panel,
  k_color,
  legend,
  log_x_axes,
  main_family,
  mean_points,
  method_title,
  panel_grid,
  plotted,
  save,
  subplots,
)


def fig_fits(a: Analysis, out: epath.Path) -> Figure:
  main = main_method(a.cells)
  family = main_family(a)
  if main is None:
    raise SkipFigure("no quantized cells without outliers")
  method = main.label
  metrics = [
    m for m in METRICS if any(a.curve_fit(family, method, c, m) for c in a.curves(family, method))
  ]
  if not metrics:
    raise SkipFigure(f"no fitted curve for {method}: " + "; ".join(a.skipped[:2]))
  metrics = sorted(metrics, key=lambda m: m != "acc")
  fig, axes = panel_grid(len(metrics), width=5.6, height=4.2)
  for ax, metric in zip(axes, metrics):
    for curve, cells in a.curves(family, method).items():
      k, fit = curve_k(curve), a.curve_fit(family, method, curve, metric)
      x, y = mean_points(cells, metric)
      ax.plot(x, y, "o", color=k_color(k), ms=4)
      if fit is None:
        continue
      lb = np.log(x) if len(x) else np.zeros(0)
      grid = np.linspace(lb.min() - 0.3, lb.max() + 0.3, 80) if len(lb) else np.zeros(0)
      point, low, high = fit.predict_band((grid - fit.data.ctx["x0"])[:, None])
      ax.plot(
        np.exp(grid),
        plotted(metric, point),
        "-" if k != BASELINE_BITS else "--",
        color=k_color(k),
        lw=1.5,
        label=f"{k}-bit {_fit_label(fit)}",
      )
      if np.isfinite(low).all():
        ax.fill_between(
          np.exp(grid),
          plotted(metric, low),
          plotted(metric, high),
          color=k_color(k),
          alpha=0.15,
          lw=0,
        )
    finish_bits_panel(
      ax,
      a,
      metric,
      f"{'power law' if metric == 'nll' else 'sigmoid'} fits, {method_title(a, method)}",
    )
  return Figure(
    "fits",
    "Fitted curves with bootstrap bands",
    f"Lines: robust fits per k; bands: {a.level:.0%} bootstrap bands "
    f"({a.n_boot} replicates); points: measured (mean over seeds).",
    save(fig, out, "fits"),
  )


def _fit_label(fit) -> str:
  p = fit.params
  return f"(α={p['alpha']:.2f})" if "alpha" in p else f"(hi={p['hi']:.2f})"


def fig_bit_optimal(a: Analysis, out: epath.Path) -> Figure:
  main = main_method(a.cells)
  family = main_family(a)
  tables = {m: a.bit_optimal.get((family, main.label, m)) for m in METRICS} if main else {}
  tables = {m: t for m, t in tables.items() if t is not None}
  if not tables:
    raise SkipFigure("no bit-optimal comparison (needs >= 2 bit widths with data)")
  metrics = sorted(tables, key=lambda m: m != "acc")
  fig, axes = subplots(
    2, len(metrics), width=5.4, height=3.1, sharex="col", gridspec_kw={"height_ratios": [2, 1]}
  )
  ks = sorted(
    {curve_k(c) for t in tables.values() for c in t["best_interp"].dropna()}
    | {curve_k(c) for t in tables.values() for c in t["best_fit"].dropna()}
  ) or [4]
  for col, metric in enumerate(metrics):
    t, top, bottom = tables[metric], axes[0][col], axes[1][col]
    for source, style, marker, offset in (("interp", "-", "o", -0.06), ("fit", "--", "s", 0.06)):
      best = t[f"best_{source}"]
      ok = best.notna()
      if not ok.any():
        continue
      k_won = [curve_k(c) for c in best[ok]]
      y = [ks.index(k) + offset for k in k_won]  # categorical rows, one per k
      top.step(
        t["budget_bits"][ok],
        y,
        style,
        where="mid",
        color="#444444",
        lw=1,
        label=f"by {'interpolation' if source == 'interp' else 'fitted curves'}",
      )
      top.scatter(
        t["budget_bits"][ok], y, c=[k_color(k) for k in k_won], marker=marker, s=36, zorder=3
      )
      bottom.plot(
        t["budget_bits"][ok],
        t[f"share_{source}"][ok],
        style,
        marker=marker,
        color="#444444",
        ms=4,
        label=source,
      )
    top.set_ylim(-0.5, len(ks) - 0.5)
    top.set_yticks(range(len(ks)), [f"{k}-bit" for k in ks])
    what = METRIC_LABEL[metric].split(" (")[0]
    log_x_axes(
      top, "", "bit-optimal k", f"best k per budget by {what}\n{method_title(a, main.label)}"
    )
    legend(top)
    log_x_axes(bottom, BITS_LABEL, "bootstrap share\nwinning")
    bottom.set_ylim(0, 1.05)
  return Figure(
    "bit_optimal",
    "Bit-optimal precision per budget",
    "Top: the k with the best metric at each total-bits budget (marker colour = k); "
    "bottom: share of bootstrap replicates in which that k wins.",
    save(fig, out, "bit_optimal"),
  )


def fig_precision_law(a: Analysis, out: epath.Path) -> Figure:
  main = main_method(a.cells)
  if main is None or not any((main.label, f) in a.joint_fits for f in ("ptq", "neff")):
    raise SkipFigure(
      "no precision-law fit for the main method: "
      + "; ".join(s for s in a.skipped if "precision law" in s)[:300]
    )
  method = main.label
  forms = [f for f in ("ptq", "neff") if (method, f) in a.joint_fits]
  fig, axes = panel_grid(len(forms), width=5.6, height=4.2)
  for ax, form in zip(axes, forms):
    fit = a.joint_fits[(method, form)]
    x, ctx = fit.data.x, fit.data.ctx
    family = 0
    for k in sorted(set(x[:, 2].astype(int))):
      rows = (x[:, 2] == k) & (x[:, 3] == family)
      if not rows.any():
        continue
      n = np.exp(x[rows, 0] + ctx["lnN0"])
      ax.plot(n, np.exp(fit.data.y[rows]), "o", color=k_color(k), ms=4)
      grid_n = np.geomspace(n.min() / 1.5, n.max() * 1.5, 60)
      d = np.full(60, x[rows, 1].mean())
      xg = np.stack([np.log(grid_n) - ctx["lnN0"], d, np.full(60, k), np.zeros(60)], axis=1)
      ax.plot(
        grid_n,
        np.exp(fit.predict(xg)),
        "-" if k != BASELINE_BITS else "--",
        color=k_color(k),
        label=f"{k}-bit",
      )
    shown = ", ".join(
      f"{p}={v:.3g}" for p, v in fit.params.items() if p.startswith(("alpha", "gamma"))
    )
    log_x_axes(
      ax,
      "non-embedding parameters N (log scale)",
      METRIC_LABEL["nll"],
      f"{form} law ({shown})\n{method_title(a, method)}",
      title_size=9,
      log_perplexity=True,
    )
    legend(ax)
  return Figure(
    "precision_law",
    "Precision-aware laws (joint over k)",
    "Points: measured; lines: one joint fit over all k (first training family).",
    save(fig, out, "precision_law"),
  )

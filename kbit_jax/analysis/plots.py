"""Paper-style figures of the k-bit study from an `Analysis` (PNG + PDF, Agg).

    figures, notes = plots.make_figures(analysis, out_dir)

Figures (x = total model bits, log scale; one colour per k, fixed in K_COLORS):
  acc_vs_bits           mean zero-shot accuracy per data type at the main block size
  ppl_vs_bits           perplexity, the same panels
  acc_vs_bits_by_setup  the main method per training family, or per training seed
  blocksize_dtype_4bit  4-bit: data types at the main block size; block sizes of the main type
  outliers              outlier-dependent (proxy) quantization against plain, k <= 4
  fits                  fitted power-law / sigmoid curves with bootstrap bands
  bit_optimal           best k per total-bits budget, and the bootstrap share it wins
  precision_law         the joint ptq / neff laws against parameters, one curve per k
A figure whose data is missing is skipped and named in `notes`, never an error.
The *main* method is cells.main_method's, as in the extra axes' tables and the report.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from etils import epath

from kbit_jax.analysis import plot_style
from kbit_jax.analysis.analyse import Analysis
from kbit_jax.analysis.cells import (
  BASELINE_BITS,
  MAIN_DTYPES,
  METRICS,
  blocksize_label,
  blocksize_order,
  curve_k,
  main_method,
)
from kbit_jax.analysis.plot_style import (
  BITS_LABEL,
  METRIC_LABEL,
  OTHER_COLORS,
  Figure,
  SkipFigure,
  bits_axes,
  k_color,
  legend,
  line,
  log_x_axes,
  mean_points,
  panel_grid,
  plotted,
  save,
  subplots,
)


def _chance(ax, a, metric):
  if metric == "acc" and len(a.cells):
    ax.axhline(a.cells["chance"].mean(), color="#999999", ls=":", lw=1, label="chance")


# ----------------------------------------------------------------------------- choices


def _has(cells: pd.DataFrame, metric: str) -> bool:
  return bool(len(cells)) and bool(np.isfinite(cells[metric].to_numpy(float)).any())


def _plain(a: Analysis, blocksize=None) -> pd.DataFrame:
  """Quantized cells without outliers (at `blocksize` if given)."""
  c = a.cells
  q = c[(c["k"] != BASELINE_BITS) & (c["outlier_share"] == 0)]
  return q if blocksize is None else q[q["blocksize"] == blocksize]


def _main_family(a: Analysis) -> str:
  return a.families()[0]


def _method_title(a: Analysis, method: str, family: str | None = None) -> str:
  c = a.cells[a.cells["method"] == method].iloc[0]
  b = blocksize_label(c["blocksize"])
  title = f"data type {c['dtype']}{'+dq' if c['double_quant'] else ''}, block size {b}"
  title += f", outliers p={c['outlier_share']:g}" if c["outlier_share"] else ""
  return title + (f" ({family})" if family and len(a.families()) > 1 else "")


# ----------------------------------------------------------------------------- figures


def _bits_panels(a: Analysis, metric: str, out: epath.Path, name: str) -> Figure:
  if not _has(a.cells, metric):
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
  family = _main_family(a)
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
    _chance(ax, a, metric)
    bits_axes(ax, metric, _method_title(a, method, family))
    legend(ax)
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
  if main is None or not _has(a.cells, "acc"):
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
    _chance(ax, a, "acc")
    bits_axes(ax, "acc", f"{title}\n{_method_title(a, method)}")
    legend(ax)
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
  base = a.cells[(a.cells["k"] == BASELINE_BITS) & (a.cells["family"] == _main_family(a))]
  line(ax, base, metric, "16-bit (float)", k_color(BASELINE_BITS), "--")
  _chance(ax, a, metric)
  bits_axes(ax, metric, title)
  legend(ax)


def fig_blocksize_dtype(a: Analysis, out: epath.Path, k: int = 4) -> Figure:
  family = _main_family(a)
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
  metrics = [m for m in METRICS if _has(q, m)]
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
  c = a.cells[a.cells["family"] == _main_family(a)]
  proxy = c[(c["outlier_share"] > 0) & (c["k"] != BASELINE_BITS)]
  if proxy.empty:
    raise SkipFigure("no cells with outlier-dependent quantization (outlier_share > 0)")
  dtype, b = proxy["dtype"].mode().iloc[0], proxy["blocksize"].mode().iloc[0]
  plain = c[(c["outlier_share"] == 0) & (c["dtype"] == dtype) & (c["blocksize"] == b)]
  proxy = proxy[(proxy["dtype"] == dtype) & (proxy["blocksize"] == b)]
  ks = sorted(k for k in set(proxy["k"]) if k <= 4) or sorted(set(proxy["k"]))[:2]
  metrics = sorted([m for m in METRICS if _has(proxy, m)], key=lambda m: m != "acc")
  fig, axes = panel_grid(len(metrics), width=5.2, height=3.8)
  for ax, metric in zip(axes, metrics):
    for k in ks:
      line(ax, plain[plain["k"] == k], metric, f"{k}-bit plain", k_color(k))
      for p, cells in proxy[proxy["k"] == k].groupby("outlier_share"):
        line(ax, cells, metric, f"{k}-bit, outliers p={p:g}", k_color(k), "--", "s")
    _chance(ax, a, metric)
    bits_axes(
      ax, metric, f"outlier-dependent vs plain, data type {dtype}, block size {blocksize_label(b)}"
    )
    legend(ax)
  return Figure(
    "outliers",
    "Outlier-dependent quantization vs plain",
    "Solid: plain; dashed: the p share of hidden units kept in 16 bits.",
    save(fig, out, "outliers"),
  )


def fig_fits(a: Analysis, out: epath.Path) -> Figure:
  main = main_method(a.cells)
  family = _main_family(a)
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
    _chance(ax, a, metric)
    bits_axes(
      ax,
      metric,
      f"{'power law' if metric == 'nll' else 'sigmoid'} fits, {_method_title(a, method)}",
    )
    legend(ax)
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
  family = _main_family(a)
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
      top, "", "bit-optimal k", f"best k per budget by {what}\n{_method_title(a, main.label)}"
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
      f"{form} law ({shown})\n{_method_title(a, method)}",
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


FIGURES: tuple[Callable[[Analysis, epath.Path], Figure], ...] = (
  fig_acc_vs_bits,
  fig_by_setup,
  fig_blocksize_dtype,
  fig_outliers,
  fig_ppl_vs_bits,
  fig_fits,
  fig_bit_optimal,
  fig_precision_law,
)


def make_figures(a: Analysis, out_dir: str) -> tuple[list[Figure], list[str]]:
  """Every figure the analysis allows; `notes` names the skipped ones and why."""
  return plot_style.render(FIGURES, a, out_dir)

"""Figures of training length (PNG + PDF): several training budgets D in one store, from
grid.tokens, grid.checkpoints or WSD branches (the families of cells.assign_families).

  bitopt_vs_tokens  the bit-optimal k against training tokens per non-embedding parameter,
                    one line per data type at the main block size
  bits_by_budget    the study's bit-level scaling plot (perplexity vs total model bits,
                    one curve per k) once per training budget
  qid_laws          QiD = nll(k) - nll(16) against D/N per size and k, with both laws

plots.make_figures draws them after the others; a store with one budget skips them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from etils import epath

from kbit_jax.analysis.analyse import Analysis
from kbit_jax.analysis.labels import BASELINE_BITS, MAIN_DTYPES, curve_k, main_method
from kbit_jax.analysis.plot_style import (
  OTHER_COLORS,
  Figure,
  SkipFigure,
  finish_bits_panel,
  k_color,
  legend,
  line,
  log_x_axes,
  panel_grid,
  save,
  subplots,
)

METRIC = "nll"  # perplexity: the metric with signal at these sizes (noise.py decides)


def budget_d_over_n(a: Analysis, family: str) -> float:
  """A family's tokens per non-embedding parameter: the geometric mean over its sizes
  (the bit-optimal comparison is across sizes at one D, so D/N varies along it)."""
  fam = a.cells[a.cells["family"] == family]
  per_size = fam.groupby("preset")[["tokens", "n"]].first()
  return float(np.exp(np.mean(np.log(per_size["tokens"] / per_size["n"]))))


def bit_optimal_by_budget(a: Analysis, metric: str = METRIC) -> pd.DataFrame:
  """Rows (family, d_over_n, method, dtype): the median, min and max over the total-bits
  budgets of the bit-optimal k by interpolation, and how many budgets had a winner."""
  main = main_method(a.cells)
  rows = []
  for (family, method, m), t in a.bit_optimal.items():
    cells = a.cells[a.cells["method"] == method]
    if m != metric or main is None or cells.empty:
      continue
    first = cells.iloc[0]
    if first["blocksize"] != main.blocksize or first["outlier_share"]:
      continue
    best = [curve_k(c) for c in t["best_interp"].dropna()]
    if best:
      rows.append(
        dict(
          family=family,
          d_over_n=budget_d_over_n(a, family),
          method=method,
          dtype=first["dtype"],
          median_k=float(np.median(best)),
          min_k=min(best),
          max_k=max(best),
          budgets=len(best),
        )
      )
  return pd.DataFrame(rows)


def fig_bitopt_vs_tokens(a: Analysis, out: epath.Path) -> Figure:
  table = bit_optimal_by_budget(a)
  if table.empty or table["family"].nunique() < 2:
    raise SkipFigure("needs bit-optimal comparisons at >= 2 training budgets")
  fig, axes = panel_grid(1, width=5.6, height=4.0)
  ax = axes[0]
  order = sorted(
    table["dtype"].unique(), key=lambda d: MAIN_DTYPES.index(d) if d in MAIN_DTYPES else 99
  )
  for i, dtype in enumerate(order):
    rows = table[table["dtype"] == dtype].sort_values("d_over_n")
    offset = 1 + 0.03 * (i - (len(order) - 1) / 2)  # dodge the lines apart on the log axis
    ax.errorbar(
      rows["d_over_n"] * offset,
      rows["median_k"],
      yerr=[rows["median_k"] - rows["min_k"], rows["max_k"] - rows["median_k"]],
      fmt="-o",
      ms=4,
      capsize=3,
      color=OTHER_COLORS[i % len(OTHER_COLORS)],
      label=dtype,
    )
  log_x_axes(
    ax,
    "training tokens per non-embedding parameter D/N (log scale)",
    "bit-optimal k (median over budgets)",
    "bit-optimal k by perplexity vs training length",
  )
  legend(ax)
  return Figure(
    "bitopt_vs_tokens",
    "Bit-optimal k against training tokens per parameter",
    "Per training budget (x: its D over the non-embedding parameters, geometric mean "
    "over the sizes) and data type at the main block size: the median over total-bits "
    "budgets of the k with the lowest perplexity by the study's interpolation; bars: "
    "the smallest and largest such k.",
    save(fig, out, "bitopt_vs_tokens"),
  )


def fig_bits_by_budget(a: Analysis, out: epath.Path) -> Figure:
  main = main_method(a.cells)
  families = sorted(a.families(), key=lambda f: budget_d_over_n(a, f))
  if main is None or len(families) < 2:
    raise SkipFigure("needs the main method at >= 2 training budgets")
  fig, axes = panel_grid(len(families), width=4.2, height=3.4)
  for ax, family in zip(axes, families):
    for curve, cells in a.curves(family, main.label).items():
      k = curve_k(curve)
      label = f"{k}-bit" if k != BASELINE_BITS else "16-bit"
      line(ax, cells, METRIC, label, k_color(k), "--" if k == BASELINE_BITS else "-")
    finish_bits_panel(ax, a, METRIC, f"{family} (D/N ~ {budget_d_over_n(a, family):.3g})")
  return Figure(
    "bits_by_budget",
    "Bit-level scaling per training budget",
    f"Perplexity against total model bits, one curve per k, {main.label}; one panel "
    "per training budget, smallest D/N first.",
    save(fig, out, "bits_by_budget"),
  )


def fig_qid_laws(a: Analysis, out: epath.Path) -> Figure:
  main = main_method(a.cells)
  fits = {law: f for (m, law), f in a.qid_fits.items() if main and m == main.label}
  if not fits:
    raise SkipFigure("no QiD law fitted for the main method (needs >= 2 training budgets)")
  rows = next(iter(fits.values())).rows
  presets = list(rows.sort_values("n")["preset"].unique())
  fig, axes = subplots(1, len(presets), width=4.0, height=3.4)
  for ax, preset in zip(axes[0], presets):
    part = rows[rows["preset"] == preset]
    n = part["n"].iloc[0]
    grid_d = np.exp(np.linspace(*np.log(part["tokens"].agg(["min", "max"]).to_numpy()), 30))
    for k in sorted(part["k"].unique()):
      pts = part[part["k"] == k].groupby("tokens")["qid"].mean()
      ax.plot(pts.index / n, pts.to_numpy(), "o", color=k_color(k), ms=4, label=f"{k}-bit")
      for law, style in (("ouyang", "-"), ("kumar", ":")):
        if law in fits:
          f = fits[law].fit
          x = np.stack(
            [
              np.full_like(grid_d, np.log(n) - f.data.ctx["lnN0"]),
              np.log(grid_d) - f.data.ctx["lnD0"],
              np.full_like(grid_d, k),
              np.full_like(grid_d, np.log(k)),
            ],
            axis=1,
          )
          ax.plot(grid_d / n, f.predict(x), style, color=k_color(k), lw=1)
    ax.set_yscale("log")
    log_x_axes(ax, "D/N (log scale)", "QiD = nll(k) - nll(16) [nats]", preset)
    legend(ax)
  return Figure(
    "qid_laws",
    "Quantization-induced degradation along training",
    f"QiD of {main.label} (points, QiD > 0) against tokens per non-embedding parameter; "
    "solid: Ouyang's c D^beta / (N^alpha k^gamma), dotted: Kumar's C D^gamma_D / "
    "N^gamma_N e^(-k/gamma_post), both fitted to all sizes jointly.",
    save(fig, out, "qid_laws"),
  )

"""The report of a knowledge-graph analysis as report.md and report.html.

    kg_report.write_report(analysis, out_dir)   # figures/ (kg_plots.py) + report.md/.html

kg_stage.py calls it for `kbit report` of a KG store. The report is the LM report's kind
of document (render.py's blocks, plot_style's figures): what the metrics measure and
which the fits use, the signal-against-noise table, the figures, the bit-optimal k per
budget with whether it is resolved, the fitted curves, the N-D fit, the extrapolation
errors, the skipped fits and the provenance.

The tables beside it (fits.json, params.csv, ...) are kg_tables.py's.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from etils import epath

from kbit_jax.analysis import kg_plots, kg_tables
from kbit_jax.analysis.kg_analyse import NO_SIGNAL, KGAnalysis
from kbit_jax.analysis.kg_cells import ALPHA, FIT_METRICS, Z
from kbit_jax.analysis.labels import main_method
from kbit_jax.analysis.plot_style import Figure
from kbit_jax.analysis.render import Block, cell_text, num, percent, to_html, to_markdown, with_ci
from kbit_jax.analysis.report import MAX_LIST, figure_blocks

TITLE = "k-bit knowledge-graph embeddings: report"


# ----------------------------------------------------------------------------- blocks


def _limited(items: Sequence[str]) -> list[str]:
  items = list(items)
  if len(items) > MAX_LIST:
    return items[:MAX_LIST] + [f"... and {len(items) - MAX_LIST} more (fits.json lists all)"]
  return items


def metrics_blocks(a: KGAnalysis) -> list[Block]:
  p = kg_tables.provenance(a)
  unleaked = ", ".join(map(str, p["unleaked_triples"])) or "-"
  test = ", ".join(map(str, p["test_triples"])) or "-"
  return [
    ("h", 2, "What the metrics measure, and which the fits use"),
    (
      "p",
      "Filtered link prediction: each test triple is ranked against every entity as head "
      "and as tail, other true triples removed, ties counted half. MRR (mean reciprocal "
      "rank) and Hits@10 over all test triples "
      f"({test}) follow the published protocol; `unleaked/` is the same over the test "
      f"triples whose reversed twin is not a training triple ({unleaked}). On WordNet-"
      "style graphs the symmetric relations answer a leaked triple from its twin, so the "
      "all-triples MRR mostly measures that memorisation; the unleaked MRR measures "
      "generalisation, and is often too small to move beyond its standard error.",
    ),
    (
      "p",
      "The fits and the bit-optimal ranking use both MRRs, each on its own "
      f"({', '.join(FIT_METRICS)}), each only where it moves beyond noise "
      f"(chi-square, level {ALPHA:g}: the table below); Hits@10 is shown in the figures, "
      "not fitted. Curve form "
      "(`bounded`): metric = lo + (hi - lo)·sigmoid(s·ln(bits / m_bits)), lo = the metric "
      "under random ranks (H_E / E), fixed: MRR is bounded in (0, 1], with a floor and a "
      "ceiling, as accuracy is in the LM analysis, whose sigmoid this is.",
    ),
  ]


def signal_blocks(a: KGAnalysis) -> list[Block]:
  rows = [
    [
      r.family,
      r.metric,
      f"{r.low:.4f} .. {r.high:.4f}",
      f"{r.median_stderr:.4f}",
      f"{_p(r.p_sizes)} ({r.curves})",
      f"{_p(r.p_k)} ({r.models})",
      ("**" + r.verdict + "**") if r.verdict == NO_SIGNAL else r.verdict,
    ]
    for r in a.signal.itertuples()
  ]
  blocks: list[Block] = [
    ("h", 2, "Signal against noise"),
    (
      "p",
      "Per family and metric: the range over its cells, the median standard error (over "
      "test triples), and two chi-square tests that a set of cells is one value within "
      "their standard errors: across sizes within each curve (p sizes) and across k within "
      "each trained model (p k), each the smallest p times the number of sets tested "
      f"(Bonferroni; in brackets). Neither below {ALPHA:g}: the metric is flat within "
      "noise, **no signal**, and it is neither fitted nor ranked; a curve is fitted only "
      "if its own corrected p is below it. Conservative: cells of one model share their "
      "test triples, so a paired difference is more precise than these tests assume.",
    ),
    (
      "table",
      ["family", "metric", "range", "median s.e.", "p sizes (curves)", "p k (models)", "verdict"],
      rows,
    ),
  ]
  flat = [f"{r.family}: {r.metric}" for r in a.signal.itertuples() if r.verdict == NO_SIGNAL]
  if flat:
    blocks.append(("p", f"No signal (not fitted, not ranked): {'; '.join(flat)}."))
  return blocks


def _p(p: float) -> str:
  return "-" if not np.isfinite(p) else f"{p:.2g}"


def _k(label: Any) -> str:
  return label if isinstance(label, str) else "-"


def _one_seed_note(a: KGAnalysis) -> str:
  """A caveat when no trained model has a second seed: the errors are then over test
  triples only, and a "resolved" winner can still be one training run's luck."""
  seeds = a.cells.groupby(["model", "dim", "triples"])["seed"].nunique()
  if len(seeds) and seeds.max() > 1:
    return ""
  return (
    " One seed per model: the standard errors are over test triples only; the variation "
    "between training runs is not in them."
  )


def bit_optimal_blocks(a: KGAnalysis) -> list[Block]:
  blocks: list[Block] = [("h", 2, "Bit-optimal k per total-bits budget")]
  if not a.bit_optimal:
    return blocks + [
      ("p", "No comparison was made (no metric moves beyond noise, or fewer than 2 k).")
    ]
  blocks.append(
    (
      "p",
      "For each budget, the k whose model is best at that many total bits, by linear "
      "interpolation between measured dimensions in log bits (the study's method) and by "
      "the fitted curves. *Resolved*: the interpolated winner beats every other k reaching "
      f"the budget by more than {Z:g} standard errors (errors interpolated like the "
      "values); otherwise the k within noise of it are listed. Share: bootstrap replicates "
      "(over trained models) in which that k wins again." + _one_seed_note(a),
    )
  )
  main = main_method(a.cells)
  summary_rows = []
  for (family, method, metric), t in a.bit_optimal.items():
    best = t["best_interp"].dropna()
    resolved = t.loc[t["resolved_interp"].fillna(False).astype(bool), "best_interp"]
    counts = best.value_counts()
    summary_rows.append(
      [
        family,
        method,
        metric,
        ", ".join(f"{k} {n}" for k, n in counts.items()) or "-",
        f"{len(resolved)}/{len(best)}",
        ", ".join(f"{k} {n}" for k, n in resolved.value_counts().items()) or "none",
      ]
    )
    if main is None or method != main.label:
      continue
    rows = [
      [
        num(r.budget_bits),
        f"{r.budget_bits / 8 / 2**10:.3g}",
        str(r.candidates),
        _k(r.best_interp),
        "yes" if r.resolved_interp is True else "no" if r.resolved_interp is False else "-",
        num(r.margin_z),
        r.within_noise or "-",
        percent(r.share_interp),
        _k(r.best_fit),
        percent(r.share_fit),
      ]
      for r in t.itertuples()
    ]
    blocks += [
      ("h", 3, f"{family}, {method}, by {metric}"),
      (
        "table",
        [
          "budget (bits)",
          "KiB",
          "k reaching it",
          "best k (interp)",
          "resolved",
          "margin (s.e.)",
          "within noise",
          "share",
          "best k (fit)",
          "share",
        ],
        rows,
      ),
    ]
  blocks += [
    ("h", 3, "Summary: how often each k is best, and how often beyond noise"),
    (
      "table",
      ["family", "method", "metric", "best k (interp): budgets", "resolved", "resolved wins"],
      summary_rows,
    ),
  ]
  return blocks


def fit_blocks(a: KGAnalysis) -> list[Block]:
  blocks: list[Block] = [("h", 2, "Fitted curves per k (bounded form)")]
  if not a.curve_fits:
    return blocks + [("p", "No curve was fitted; see 'Signal against noise' and 'Skipped fits'.")]
  blocks.append(
    (
      "p",
      f"[{a.level:.0%} bootstrap interval]; chi2/dof against the cells' standard errors "
      "(p: the chance of a chi2 this large if the form held; p < 0.01: the form misses the "
      "data beyond noise). 'at bound': a parameter on its search bound.",
    )
  )
  rows = []
  for key, fit in a.curve_fits.items():
    family, method, curve, metric = key
    check = a.fit_checks.get(key, {})
    note = ", ".join(
      filter(
        None,
        [
          "misses the data beyond noise" if check.get("p", 1.0) < 0.01 else "",
          f"at bound: {', '.join(fit.at_bound)}" if fit.at_bound else "",
        ],
      )
    )
    rows.append(
      [family, method, curve, metric]
      + [with_ci(fit.params[p], fit.ci.get(p)) for p in ("hi", "s", "m_bits")]
      + [num(fit.params["lo"]), f"{check.get('chi2', np.nan):.2f}/{check.get('dof', '-')}"]
      + [percent(check.get("p", np.nan)) if np.isfinite(check.get("p", np.nan)) else "-"]
      + [str(fit.n_sizes), str(fit.n_boot_ok), note]
    )
  return blocks + [
    (
      "table",
      ["family", "method", "k", "metric", "hi", "s", "m_bits", "lo", "chi2/dof", "p"]
      + ["sizes", "boot ok", "note"],
      rows,
    )
  ]


def nd_blocks(a: KGAnalysis) -> list[Block]:
  blocks: list[Block] = [
    ("h", 2, "Performance = a·N^b·D^c (16-bit tables)"),
    (
      "p",
      "N = embedding dimension x entities (the entity table's parameters; the relation "
      "table adds < 0.1%), D = training triples; ln metric = ln a + b ln N + c ln D by "
      "least squares on the 16-bit cells, per model. ± : standard errors from the "
      "residuals; chi2/dof: residuals against the cells' standard errors (in ln units).",
    ),
  ]
  if not a.nd_fits:
    return blocks + [("p", "Not fitted; see 'Skipped fits'.")]
  rows = [
    [
      model,
      metric,
      num(f["a"]),
      f"{f['b']:.3f} ± {f['b_stderr']:.3f}",
      f"{f['c']:.3f} ± {f['c_stderr']:.3f}",
      num(f["r2"]),
      f"{f['chi2']:.1f}/{f['dof']}",
      str(f["points"]),
      ", ".join(f"{n:,}" for n in f["n_values"]),
      ", ".join(f"{d:,}" for d in f["d_values"]),
    ]
    for (model, metric), f in a.nd_fits.items()
  ]
  return blocks + [
    (
      "table",
      ["model", "metric", "a", "b (N)", "c (D)", "R^2", "chi2/dof", "cells", "N", "D"],
      rows,
    )
  ]


def extrapolation_blocks(a: KGAnalysis) -> list[Block]:
  t = kg_tables.extrapolation_table(a)
  blocks: list[Block] = [("h", 2, "Extrapolation: leave the largest dimension out")]
  if t.empty:
    return blocks + [("p", "No fit to check.")]
  done, not_done = t[t["note"] == ""], t[t["note"] != ""]
  blocks.append(
    (
      "p",
      "Each curve refitted without its largest dimension and asked to predict it; error "
      "in metric points (positive: the fit predicts higher).",
    )
  )
  if len(done):
    blocks.append(
      (
        "table",
        ["family", "method", "k", "metric", "held-out params", "mean error"],
        [
          [r.family, r.method, r.curve, r.metric, num(r.heldout_params), num(r.mean_error)]
          for r in done.itertuples()
        ],
      )
    )
  if len(not_done):
    blocks += [("p", "Not checked:"), ("ul", _limited(sorted(set(not_done["note"]))))]
  return blocks


def provenance_blocks(a: KGAnalysis) -> list[Block]:
  p = kg_tables.provenance(a)
  rows = [
    ("results", f"`{p['results_dir'] or '(in memory)'}`"),
    ("cells analysed", num(p["cells"])),
    ("git commits", ", ".join(f"`{c[:12]}` ({n} cells)" for c, n in p["commits"].items())),
    ("records created", " .. ".join(p["created"]) or "-"),
    ("graph", ", ".join(p["graph"])),
    ("entities", ", ".join(f"{e:,}" for e in p["num_entities"]) or "-"),
    ("evaluation (eval_id)", ", ".join(f"`{e}`" for e in p["eval_id"])),
    ("bit widths k", ", ".join(map(str, p["bits"]))),
    ("methods", ", ".join(p["methods"]) or "-"),
    ("quantized tables", ", ".join(p["targets"]) or "-"),
    ("families", ", ".join(p["families"])),
    ("noise threshold", f"{p['z']:g} standard errors"),
    ("bootstrap", f"{p['n_boot']} replicates over trained models, {p['level']:.0%} intervals"),
  ]
  cols = [c for c in (p["models"][0] if p["models"] else {})]
  model_rows = [[cell_text(m[c]) for c in cols] for m in p["models"]]
  return [
    ("h", 2, "Provenance"),
    ("table", ["", "value"], rows),
    ("p", "Trained models (from their 16-bit records):"),
    ("table", cols, model_rows),
  ]


def report_blocks(
  a: KGAnalysis | None,
  figures: Sequence[Figure],
  notes: Sequence[str],
  out: epath.Path,
  error: str = "",
) -> list[Block]:
  blocks: list[Block] = [("h", 1, TITLE)]
  if a is None:
    return blocks + [("p", f"No analysis could be made: {error}")]
  blocks.append(
    (
      "p",
      f"{len(a.cells)} cells in {len(a.families())} families (model x training triples), "
      f"{len(a.curve_fits)} curve fits, {len(a.nd_fits)} N-D fits, {len(figures)} figures.",
    )
  )
  if a.issues:
    blocks += [("h", 2, "Data issues"), ("ul", _limited(a.issues))]
  blocks += metrics_blocks(a) + signal_blocks(a)
  blocks += figure_blocks(figures, notes, out)
  blocks += bit_optimal_blocks(a) + fit_blocks(a) + nd_blocks(a) + extrapolation_blocks(a)
  if a.skipped:
    blocks += [("h", 2, "Skipped fits"), ("ul", _limited(a.skipped))]
  return blocks + provenance_blocks(a)


def write_report(a: KGAnalysis | None, out_dir: str, error: str = "") -> dict[str, epath.Path]:
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  figures, notes = kg_plots.make_figures(a, str(out / "figures")) if a is not None else ([], [])
  blocks = report_blocks(a, figures, notes, out, error)
  paths = {"md": out / "report.md", "html": out / "report.html"}
  paths["md"].write_text(to_markdown(blocks))
  paths["html"].write_text(to_html(blocks).replace("k-bit inference scaling report", TITLE))
  return paths

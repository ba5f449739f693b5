"""The report of a results store: figures, fitted parameters with intervals, bit-optimal
precision per budget, extrapolation errors and provenance, as `report.md` + `report.html`.

    kbit report --results W/results --out W/report     # -> stage.report(results_dir, out_dir)
    paths = report.write(analysis, out_dir, all_cells=all_cells)   # report.md, .html

The report is built as a list of blocks (heading, paragraph, list, table, image) that
render.py writes as Markdown and as an HTML page; report_axes.py adds the tables of the
grid's extra axes. Whatever cannot be computed (no records, a fit the data cannot
identify, a figure without data) becomes a line in the report instead of an error.
"""

from __future__ import annotations

from typing import Any, Sequence

from etils import epath

from kbit_jax.analysis import plots, plots_axes, report_axes, report_length, report_methods, tables
from kbit_jax.analysis.analyse import Analysis
from kbit_jax.analysis.cells import METRICS
from kbit_jax.analysis.labels import BASELINE_METHOD, main_method
from kbit_jax.analysis.plot_style import Figure
from kbit_jax.analysis.render import Block, cell_text, num, percent, to_html, to_markdown

MAX_LIST = 30  # longest list of skipped fits / issues shown in full


def _label(v: Any) -> str:
  return v if isinstance(v, str) else "-"


# ----------------------------------------------------------------------------- sections


def provenance_blocks(a: Analysis) -> list[Block]:
  p = tables.provenance(a)
  rows = [
    ("results", f"`{p['results_dir'] or '(in memory)'}`"),
    ("cells analysed", num(p["cells"])),
    ("git commits", ", ".join(f"`{c[:12]}` ({n} cells)" for c, n in p["commits"].items())),
    ("records created", " .. ".join(p["created"]) or "-"),
    ("evaluation settings (eval_id)", ", ".join(f"`{e}`" for e in p["eval_id"])),
    ("perplexity split", p["ppl_split"]),
    ("zero-shot tasks (mean chance)", f"{', '.join(p['tasks']) or '-'} ({p['chance']:.3f})"),
    ("bit widths k", ", ".join(map(str, p["bits"]))),
    ("data types", ", ".join(p["dtypes"]) or "-"),
    ("block sizes", ", ".join(p["blocksizes"]) or "-"),
    ("outlier shares", ", ".join(f"{s:g}" for s in p["outlier_shares"]) or "-"),
    ("quantization targets", ", ".join(p["targets"]) or "-"),
    *(
      [("quantization methods", ", ".join(p["quant_methods"]))]
      if len(p["quant_methods"]) > 1
      else []
    ),
    ("training families", ", ".join(p["families"])),
    (
      "bootstrap",
      f"{p['n_boot']} replicates over checkpoints, {p['level']:.0%} percentile intervals",
    ),
  ]
  preset_cols = [
    c
    for c in (
      "preset",
      "params",
      "non_embedding",
      "tokens",
      "seeds",
      "train_steps",
      "train_batch_size",
      "seq_len",
      "train_lr",
      "cells",
    )
    if p["presets"] and c in p["presets"][0]
  ]
  preset_rows = [[cell_text(r[c]) for c in preset_cols] for r in p["presets"]]
  return [
    ("h", 2, "Provenance"),
    ("table", ["", "value"], rows),
    ("p", "Training setup per preset (from the records):"),
    ("table", preset_cols, preset_rows),
  ]


def _limited(items: Sequence[str]) -> list[str]:
  items = list(items)
  if len(items) > MAX_LIST:
    return items[:MAX_LIST] + [f"... and {len(items) - MAX_LIST} more (fits.json lists all)"]
  return items


def figure_blocks(
  figures: Sequence[Figure], notes: Sequence[str], out_dir: epath.Path
) -> list[Block]:
  blocks: list[Block] = [("h", 2, "Figures")]
  for f in figures:
    src = str(f.png.relative_to(out_dir)) if str(f.png).startswith(str(out_dir)) else str(f.png)
    pdf = next((p for p in f.paths if p.suffix == ".pdf"), None)
    blocks += [
      ("h", 3, f.title),
      ("img", src, f.title),
      ("p", f.caption + (f" ([PDF]({src[:-4]}.pdf))" if pdf else "")),
    ]
  if notes:
    blocks += [("p", "Not drawn:"), ("ul", list(notes))]
  return blocks


def bit_optimal_blocks(a: Analysis) -> list[Block]:
  blocks: list[Block] = [("h", 2, "Bit-optimal precision per total-bits budget")]
  if not a.bit_optimal:
    return blocks + [("p", "No comparison could be made (it needs >= 2 bit widths with data).")]
  blocks.append(
    (
      "p",
      "For each budget, the k whose model is best at that many total bits: "
      "by linear interpolation between measured sizes in log bits (the study's "
      "method; '-' where fewer than two k reach the budget) and by the fitted "
      "curves (which may extrapolate). Share: bootstrap replicates in which that "
      "k wins again.",
    )
  )
  main = main_method(a.cells)
  family = a.main_family()
  for metric in METRICS:
    t = a.bit_optimal.get((family, main.label, metric)) if main else None
    if t is None:
      continue
    rows = [
      [
        num(r.budget_bits),
        f"{r.budget_bits / 8 / 2**20:.3g}",
        str(r.candidates),
        _label(r.best_interp),
        percent(r.share_interp),
        _label(r.best_fit),
        percent(r.share_fit),
      ]
      for r in t.itertuples()
    ]
    blocks += [
      ("h", 3, f"{main.label}, by {'perplexity' if metric == 'nll' else 'accuracy'} ({family})"),
      (
        "table",
        [
          "budget (bits)",
          "MiB",
          "k reaching it",
          "best k (interp)",
          "share",
          "best k (fit)",
          "share",
        ],
        rows,
      ),
    ]
  rows = []
  for (fam, method, metric), t in a.bit_optimal.items():
    for source in ("interp", "fit"):
      best = t[f"best_{source}"].dropna()
      if len(best):
        counts = best.value_counts()
        rows.append(
          [
            fam,
            method,
            metric,
            source,
            counts.index[0],
            f"{counts.iloc[0]}/{len(best)}",
            ", ".join(f"{k} {n}" for k, n in counts.items()),
          ]
        )
  blocks += [
    ("h", 3, "All methods: how often each k is best across budgets"),
    (
      "table",
      ["family", "method", "metric", "by", "most often best", "budgets", "all winners"],
      rows,
    ),
  ]
  return blocks


def _bound(fit) -> str:
  """Parameters the optimiser left on a bound: the data do not pin them down."""
  return f"at bound: {', '.join(fit.at_bound)}" if fit.at_bound else ""


CURVE_PARAMS = {"nll": ("alpha", "E", "a"), "acc": ("hi", "s", "m_bits", "lo")}


def fit_blocks(a: Analysis) -> list[Block]:
  blocks: list[Block] = [("h", 2, "Fitted curves per k")]
  if not a.curve_fits:
    return blocks + [("p", "No curve could be fitted; see 'Skipped fits'.")]
  blocks.append(
    (
      "p",
      f"nll (ln perplexity) = a·bits^-alpha + E and mean accuracy = "
      f"lo + (hi - lo)·sigmoid(s·ln(bits/m_bits)), lo = chance fixed; robust "
      f"(soft-L1) least squares in log bits; [{a.level:.0%} bootstrap interval]. "
      "'boot ok': replicates with enough distinct sizes to refit; 'at bound': a "
      "parameter on its search bound (e.g. E at the smallest loss, alpha at 0).",
    )
  )
  for metric, names in CURVE_PARAMS.items():
    rows = []
    for (family, method, curve, m), fit in a.curve_fits.items():
      if m != metric:
        continue
      rows.append(
        [family, method, curve]
        + [report_length.param_text(fit, p) if p != "lo" else num(fit.params[p]) for p in names]
        + [str(fit.n_cells), str(fit.n_sizes), str(fit.n_boot_ok), _bound(fit)]
      )
    if rows:
      blocks += [
        (
          "h",
          3,
          "Perplexity: power law in total bits"
          if metric == "nll"
          else "Mean zero-shot accuracy: sigmoid in log total bits",
        ),
        (
          "table",
          ["family", "method", "k"] + list(names) + ["cells", "sizes", "boot ok", "note"],
          rows,
        ),
      ]
  return blocks


def joint_blocks(a: Analysis) -> list[Block]:
  blocks: list[Block] = [("h", 2, "Precision-aware laws (joint over k, Kumar et al. style)")]
  blocks.append(
    (
      "p",
      "neff: L = A·(N(1 - e^(-k/gamma)))^-alpha + E_f. ptq: L = A·N^-alpha + "
      "E_f + [k < 16]·C·(D/D0)^gamma_D·N^-gamma_N·e^(-k/gamma_post). N = non-embedding "
      "parameters, D = training tokens, one E per training family (B·D^-beta folded "
      "in); gamma_D only with >= 2 token counts, else absorbed into C.",
    )
  )
  if not a.joint_fits:
    return blocks + [("p", "Not fitted; see 'Skipped fits'.")]
  rows = []
  for (method, form), fit in a.joint_fits.items():
    rows.append(
      [
        method,
        form,
        "; ".join(f"{p} = {report_length.param_text(fit, p)}" for p in fit.params),
        str(fit.n_cells),
        str(fit.n_sizes),
        str(fit.n_boot_ok),
        _bound(fit),
      ]
    )
  return blocks + [
    ("table", ["method", "law", "parameters [interval]", "cells", "sizes", "boot ok", "note"], rows)
  ]


def extrapolation_blocks(a: Analysis) -> list[Block]:
  blocks: list[Block] = [("h", 2, "Extrapolation: leave the largest size out")]
  t = tables.extrapolation_table(a)
  if t.empty:
    return blocks + [("p", "No fit to check.")]
  blocks.append(
    (
      "p",
      "Each form refitted without the largest model and asked to predict it. "
      "nll: mean error in nats and relative perplexity error; acc: error in "
      "accuracy points. Positive = the fit predicts a higher value.",
    )
  )
  done = t[t["note"] == ""]
  if len(done):
    summary = done.groupby(["form", "metric"]).agg(
      fits=("mean_abs_error", "size"),
      median_abs=("mean_abs_error", "median"),
      max_abs=("mean_abs_error", "max"),
      median_ppl_rel=("ppl_rel_error", "median"),
    )
    blocks.append(
      (
        "table",
        ["form", "metric", "fits", "median |error|", "max |error|", "median perplexity rel. error"],
        [
          [f, m, str(int(r.fits)), num(r.median_abs), num(r.max_abs), percent(r.median_ppl_rel)]
          for (f, m), r in summary.iterrows()
        ],
      )
    )
    main = main_method(a.cells)
    shown = done[
      done["method"].isin([main.label if main else "", BASELINE_METHOD])
      | (done["curve"] == "all k")
    ]
    blocks.append(
      (
        "table",
        [
          "family",
          "method",
          "k",
          "form",
          "held out",
          "cells",
          "mean error",
          "perplexity rel. error",
        ],
        [
          [
            r.family,
            r.method,
            r.curve,
            r.form,
            r.heldout,
            str(r.cells),
            num(r.mean_error),
            percent(r.ppl_rel_error),
          ]
          for r in shown.itertuples()
        ],
      )
    )
  not_done = t[t["note"] != ""]
  if len(not_done):
    blocks += [("p", "Not checked:"), ("ul", _limited(sorted(set(not_done["note"]))))]
  return blocks


def axes_blocks(
  cells, figures: Sequence[Figure], notes: Sequence[str], out_dir: epath.Path
) -> list[Block]:
  """Probes, weight x activation bits, N-D fits and the PTQ penalty vs D (extra_axes)."""
  if cells is None or cells.empty:
    return []
  blocks: list[Block] = [("h", 2, "Probes, activation bits and training tokens")]
  blocks += figure_blocks(figures, notes, out_dir)[1:]
  blocks += report_axes.table_blocks(cells)
  return blocks if len(blocks) > 1 else []


def report_blocks(
  a: Analysis | None,
  figures: Sequence[Figure],
  notes: Sequence[str],
  out_dir: epath.Path,
  error: str = "",
  axes: list[Block] = (),
) -> list[Block]:
  blocks: list[Block] = [("h", 1, "k-bit inference scaling: report")]
  if a is None:
    return blocks + [("p", f"No analysis could be made: {error}")]
  blocks.append(
    (
      "p",
      f"{len(a.cells)} cells, {len(a.curve_fits)} curve fits, "
      f"{len(a.joint_fits)} precision-law fits, {len(figures)} figures. Reproduces "
      "the views of Dettmers & Zettlemoyer (2023) and Kumar et al. (2024).",
    )
  )
  if a.issues:
    blocks += [("h", 2, "Data issues"), ("ul", _limited(a.issues))]
  blocks += report_length.signal_blocks(a)
  blocks += figure_blocks(figures, notes, out_dir)
  blocks += list(axes)
  blocks += bit_optimal_blocks(a) + report_methods.method_blocks(a)
  blocks += report_length.length_blocks(a) + fit_blocks(a) + joint_blocks(a)
  blocks += report_length.qid_blocks(a) + extrapolation_blocks(a)
  if a.skipped:
    blocks += [("h", 2, "Skipped fits"), ("ul", _limited(a.skipped))]
  return blocks + provenance_blocks(a)


def write(
  a: Analysis | None,
  out_dir: str,
  error: str = "",
  figures: Sequence[Figure] | None = None,
  notes: Sequence[str] = (),
  all_cells=None,
) -> dict[str, epath.Path]:
  """Writes report.md and report.html (and the figures, unless given) to `out_dir`;
  `all_cells` (extra_axes.axes_cells) adds the probes / act bits / tokens section."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  if figures is None:
    figures, notes = plots.make_figures(a, str(out / "figures")) if a is not None else ([], [])
  axes = []
  if all_cells is not None and not all_cells.empty:
    axes = axes_blocks(all_cells, *plots_axes.make_figures(all_cells, str(out / "figures")), out)
  blocks = report_blocks(a, figures, notes, out, error, axes)
  paths = {"md": out / "report.md", "html": out / "report.html"}
  paths["md"].write_text(to_markdown(blocks))
  paths["html"].write_text(to_html(blocks))
  return paths

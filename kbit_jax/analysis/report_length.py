"""The report's sections on noise and on training length, as blocks (render.py):

signal     per training family x size x metric: the spread across k against twice its
           standard error (noise.py), and the one line per metric left unfitted
qid        the two QiD laws (qid.py) per method: parameters with intervals (those not
           identified said so), held-out-largest-D error and which law predicts better,
           the D at which QiD reaches QID_THRESHOLD nats per (N, k)
length     the bit-optimal k per training budget and data type (plots_length.py)
"""

from __future__ import annotations

import numpy as np

from kbit_jax.analysis import plots_length, qid
from kbit_jax.analysis.analyse import Analysis
from kbit_jax.analysis.fitting import FitResult
from kbit_jax.analysis.labels import main_method
from kbit_jax.analysis.render import Block, num, percent, with_ci

QID_THRESHOLD = 0.05  # nats: QiD of about 5% perplexity


def param_text(fit: FitResult, name: str) -> str:
  """'0.31 [0.25, 0.37]', or for a parameter the bootstrap does not identify
  'not identified by this grid (0.735 [0.014, 0.773]: ...)'."""
  text = with_ci(fit.params[name], fit.ci.get(name))
  why = fit.unidentified.get(name)
  return f"not identified by this grid ({text}: {why})" if why else text


def signal_blocks(a: Analysis) -> list[Block]:
  if a.signal.empty:
    return []
  blocks: list[Block] = [
    ("h", 2, "Signal: does the metric move beyond its noise?"),
    (
      "p",
      "Per training budget, size and metric (main method and 16-bit, mean over seeds): "
      "the spread of the metric across k against 3 standard errors of the paired "
      "difference of the two cells that make it (one seed: the same task items, the same "
      "perplexity rows), else against 2 of the cells' own (accuracy: the tasks'; nll: "
      "from the per-row losses). A metric with signal at fewer than "
      "half of a budget's sizes is neither fitted nor ranked there.",
    ),
  ]
  rows = [
    [
      r.family,
      r.preset,
      r.metric,
      num(r.spread),
      num(r.stderr),
      num(r.ratio),
      "?" if r.signal is None else "yes" if r.signal else "no",
    ]
    for r in a.signal.itertuples()
  ]
  blocks.append(
    ("table", ["budget", "size", "metric", "spread across k", "stderr", "ratio", "signal"], rows)
  )
  if a.flat:
    blocks.append(("ul", list(a.flat.values())))
  return blocks


def qid_blocks(a: Analysis) -> list[Block]:
  if not a.qid_fits:
    return []
  blocks: list[Block] = [
    ("h", 2, "Quantization-induced degradation along training"),
    (
      "p",
      "QiD = nll(k-bit) - nll(16-bit) of one trained model. ouyang: QiD = c·D^beta / "
      "(N^alpha·k^gamma) (Ouyang et al. 2024); kumar: QiD = C·D^gamma_D / N^gamma_N · "
      "e^(-k/gamma_post) (Kumar et al. 2024's delta_PTQ). Both fitted on ln QiD of the "
      "same rows (QiD > 0), bootstrap over training runs; held out: the largest D, "
      "predicted by a refit without it (mean |ln predicted - ln measured|).",
    ),
  ]
  rows = []
  for (method, law), f in a.qid_fits.items():
    e = f.heldout or {}
    rows.append(
      [
        method,
        law,
        "; ".join(f"{p} = {param_text(f.fit, p)}" for p in f.fit.params),
        str(len(f.rows)),
        str(f.dropped),
        num(e["mean_abs_log_error"]) if e else f.heldout_note or "-",
        percent(e["mean_rel_error"]) if e else "-",
      ]
    )
  blocks.append(
    (
      "table",
      ["method", "law", "parameters [interval]", "rows", "QiD <= 0", "held-out |ln err|", "rel"],
      rows,
    )
  )
  verdicts = []
  for method in sorted({m for m, _ in a.qid_fits}):
    best = qid.better_law(a.qid_fits, method)
    if best:
      errs = {law: a.qid_fits[(method, law)].heldout["mean_abs_log_error"] for law in qid.LAWS}
      verdicts.append(
        f"{method}: {best} predicts the held-out largest D better "
        f"(|ln error| {errs[best]:.3g} against {max(errs.values()):.3g})"
      )
    signs = []
    for law, exponent in qid.D_EXPONENT.items():
      f = a.qid_fits.get((method, law))
      if f is not None:
        trend = "QiD grows with D" if f.fit.params[exponent] > 0 else "QiD falls with D"
        trend = "not identified" if f.fit.unidentified.get(exponent) else trend
        signs.append(f"{law} {exponent}: {trend}")
    if signs:
      verdicts.append(f"{method}: " + ", ".join(signs))
  if verdicts:
    blocks.append(("ul", verdicts))
  main = main_method(a.cells)
  table = qid.threshold_table(
    {key: f for key, f in a.qid_fits.items() if main and key[0] == main.label}, QID_THRESHOLD
  )
  if not table.empty:
    blocks += [
      ("h", 3, f"D at which QiD reaches {QID_THRESHOLD:g} nats ({main.label})"),
      (
        "table",
        ["law", "size", "k", "D", "D/N", "interval of D"],
        [
          [
            r.law,
            r.preset,
            str(r.k),
            num(r.tokens) if np.isfinite(r.tokens) else "never",
            num(r.d_over_n) if np.isfinite(r.d_over_n) else "-",
            f"[{num(r.lo)}, {num(r.hi)}]",
          ]
          for r in table.itertuples()
        ],
      ),
    ]
  return blocks


def length_blocks(a: Analysis) -> list[Block]:
  table = plots_length.bit_optimal_by_budget(a)
  if table.empty or table["family"].nunique() < 2:
    return []
  return [
    ("h", 2, "Bit-optimal k against training length"),
    (
      "p",
      "Per training budget and data type (main block size): the bit-optimal k by "
      "perplexity over the total-bits budgets (study's interpolation).",
    ),
    (
      "table",
      ["budget", "D/N", "data type", "median k", "min", "max", "budgets"],
      [
        [
          r.family,
          num(r.d_over_n),
          r.dtype,
          num(r.median_k),
          str(r.min_k),
          str(r.max_k),
          str(r.budgets),
        ]
        for r in table.sort_values(["dtype", "d_over_n"]).itertuples()
      ],
    ),
  ]

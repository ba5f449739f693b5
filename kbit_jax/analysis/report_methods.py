"""The report's "Bit-optimal k per quantization method" section as blocks: with several
quantization methods (rtn, gptq, awq) in the cells, the best k per budget under each, for
the main data type, and a summary over every data type (analyse.method_optimal).
"""

from __future__ import annotations

from typing import Any

from kbit_jax.analysis.analyse import Analysis
from kbit_jax.analysis.cells import METRICS
from kbit_jax.analysis.labels import RTN, main_method
from kbit_jax.analysis.render import Block, num, percent


def _k(label: Any) -> str:
  return label.removeprefix("k") if isinstance(label, str) else "-"


def method_blocks(a: Analysis) -> list[Block]:
  """Bit-optimal k per quantization method (rtn, gptq, awq): per budget for the main data
  type, and summarised for every data type; only when the cells hold several methods."""
  if not a.method_optimal:
    return []
  blocks: list[Block] = [
    ("h", 2, "Bit-optimal k per quantization method"),
    (
      "p",
      "The best k at each total-bits budget under each quantization method, by "
      "interpolation between measured sizes, on common budgets and the same bootstrap "
      "draws (checkpoints resampled). share: replicates in which that method's winner "
      "wins again; same as rtn: replicates, paired, in which the method's best k equals "
      "rtn's. A different best k with a large 'same as rtn' share is within the noise.",
    ),
  ]
  main = main_method(a.cells)
  family = a.main_family()
  for metric in METRICS:
    t = a.method_optimal.get((family, main.label if main else "", metric))
    if t is None:
      continue
    methods = [c[5:-1] for c in t.columns if c.startswith("best[")]
    header = ["budget (bits)"]
    for m in methods:
      header += [f"{m} best k", "share"] + ([f"same as {methods[0]}"] if m != methods[0] else [])
    rows = []
    for r in t.to_dict("records"):
      row = [num(r["budget_bits"])]
      for m in methods:
        row += [_k(r[f"best[{m}]"]), percent(r[f"share[{m}]"])]
        row += [percent(r[f"same[{m}]"])] if m != methods[0] else []
      rows.append(row)
    what = "perplexity" if metric == "nll" else "accuracy"
    blocks += [("h", 3, f"{main.label}, by {what} ({family})"), ("table", header, rows)]
  summary = []
  for (fam, base, metric), t in a.method_optimal.items():
    methods = [c[5:-1] for c in t.columns if c.startswith("best[")]
    for m in methods:
      best = t[f"best[{m}]"]
      ok = best.notna()
      if not ok.any():
        continue
      counts = best[ok].value_counts()
      ref = t[f"best[{methods[0]}]"]
      both = ok & ref.notna()
      moved = int((best[both] != ref[both]).sum())
      same = t.get(f"same[{m}]")
      summary.append(
        [
          fam,
          base,
          metric,
          m,
          _k(counts.index[0]),
          f"{counts.iloc[0]}/{int(ok.sum())}",
          ", ".join(f"{_k(k)}: {n}" for k, n in counts.items()),
          percent(t.loc[ok, f"share[{m}]"].mean()),
          "-" if m == methods[0] else f"{moved}/{int(both.sum())}",
          "-" if same is None else percent(same[both].mean()),
        ]
      )
  blocks += [
    ("h", 3, "All data types: bit-optimal k per method across budgets"),
    (
      "table",
      [
        "family",
        "data type, block",
        "metric",
        "method",
        "most often best k",
        "budgets",
        "all winners",
        "mean share",
        f"budgets where k differs from {RTN}",
        f"mean same as {RTN}",
      ],
      summary,
    ),
  ]
  return blocks

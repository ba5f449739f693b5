"""Fits, figures (PNG + PDF) and the Markdown/HTML report of a results store.

kbit report --results workdirs/local/grid/results --out workdirs/local/report
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FlagValues()
RESULTS = flags.DEFINE_string("results", None, "the grid's results directory", flag_values=FLAGS)
OUT = flags.DEFINE_string(
  "out", None, "where report.md, report.html, figures/ and the tables go", flag_values=FLAGS
)
BOOTSTRAP = flags.DEFINE_integer("bootstrap", 200, "bootstrap replicates", flag_values=FLAGS)
REQUIRED = ("results", "out")
ERRORS = ((FileNotFoundError, "invalid --results"), (ValueError, "cannot analyse"))


def main() -> None:
  from kbit_jax.analysis import stage

  # Nothing to analyse (no such directory, no records, an unreadable record, columns
  # missing) is an error before anything is written; stage.report would write a report
  # saying so and exit 0.
  stage.check_store(RESULTS.value)
  stage.report(RESULTS.value, OUT.value, n_boot=BOOTSTRAP.value)

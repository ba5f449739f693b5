"""The analysis stage, free of jax: results store -> cells -> fits -> tables, figures, report.

results.py      the store: one JSON record per cell, loaded as one DataFrame
cells.py        store columns -> cells: the adapter, compatibility checks, families
labels.py       method / block / budget labels and the one main method of figures and tables
forms.py        the fit forms (power, sigmoid, neff, ptq) and the data they are fitted to
fitting.py      robust least squares, bootstrap intervals, hold-out error
bitoptimal.py   the best k per total-bits budget
noise.py        which metrics move beyond their stderr; resampling the evaluation's items
qid.py          quantization-induced degradation along training: two laws, held-out D
analyse.py      every fit a set of cells allows (Analysis)
tables.py       parameter / extrapolation / bit-optimal tables, provenance, fits.json
extra_axes.py   probes, activation bits, N x D fits, the PTQ penalty against tokens
plot_style.py   what the figures share: colours, panels, axes, saving
plots.py        the figures of an Analysis: its measurements, then plots_fits.py's
plots_fits.py   the figures of its fits: curves, bit-optimal k, precision laws
plots_axes.py   the figures of the extra axes
plots_length.py the figures of training length: bit-optimal k vs D/N, bits per budget
render.py       report blocks -> Markdown / HTML, number formats
report_axes.py  the extra axes' tables as report blocks
report_length.py  noise, QiD laws and bit-optimal k vs training length as report blocks
report_methods.py  the bit-optimal k per quantization method (rtn, gptq, awq) as report blocks
report.py       the report's sections, written as report.md + report.html
stage.py        `kbit fit` and `kbit report` end to end
synthetic.py    stores drawn from a known law, for tests and demos
kg_cells.py     knowledge-graph records -> cells: store kind, adapter, checks, noise test
kg_analyse.py   KG fits gated on signal: bounded curves, bit-optimal k, N x D
kg_plots.py     the figures of a KG analysis
kg_tables.py    the KG analysis as tables (CSV, fits.json) and its terminal summary
kg_report.py    the KG report: report.md + report.html
kg_stage.py     `kbit fit` and `kbit report` of a KG store end to end
kg_synthetic.py KG stores drawn from a known law, for tests
"""

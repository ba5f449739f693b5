"""The analysis stage, free of jax: results store -> cells -> fits -> tables, figures, report.

results.py      the store: one JSON record per cell, loaded as one DataFrame
cells.py        store columns -> cells: labels, compatibility checks, families, main method
forms.py        the fit forms (power, sigmoid, neff, ptq) and the data they are fitted to
fitting.py      robust least squares, bootstrap intervals, hold-out error
bitoptimal.py   the best k per total-bits budget
analyse.py      every fit a set of cells allows (Analysis)
tables.py       parameter / extrapolation / bit-optimal tables, provenance, fits.json
extra_axes.py   probes, activation bits, N x D fits, the PTQ penalty against tokens
plot_style.py   what the figures share: colours, panels, axes, saving
plots.py        the figures of an Analysis: its measurements, then plots_fits.py's
plots_fits.py   the figures of its fits: curves, bit-optimal k, precision laws
plots_axes.py   the figures of the extra axes
render.py       report blocks -> Markdown / HTML, number formats
report_axes.py  the extra axes' tables as report blocks
report_methods.py  the bit-optimal k per quantization method (rtn, gptq, awq) as report blocks
report.py       the report's sections, written as report.md + report.html
stage.py        `kbit fit` and `kbit report` end to end
synthetic.py    stores drawn from a known law, for tests and demos
"""

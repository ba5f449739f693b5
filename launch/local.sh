#!/usr/bin/env bash
# README command 1: set up, then run the main job end to end on this machine's CPU: the
# default PTQ grid of configs/grid.py (4 sizes trained on the embedded corpus, then every
# k x data type x block size evaluated), then the scaling fits, figures and the report.
#   bash launch/local.sh [WORKDIR]        (default: workdirs/local)
# Rerunning resumes: trained models and finished cells in WORKDIR are reused, not redone.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/launch/setup_venv.sh"
cd "$repo"
workdir="${1:-workdirs/local}"
SECONDS=0
kbit grid --config configs/grid.py --workdir "$workdir/grid"
kbit report --results "$workdir/grid/results" --out "$workdir/report" --bootstrap 50
echo "wall time: ${SECONDS}s"
echo "report: $workdir/report/report.md (and report.html, figures/)"
echo "records: $workdir/grid/results (one JSON per cell; kbit_jax.results.load gives a DataFrame)"
echo "TensorBoard of the training runs: tensorboard --logdir $workdir/grid/models"

#!/usr/bin/env bash
# README command 1: set up, then run the main job end to end on this machine's CPU.
#   bash launch/local.sh [WORKDIR]        (default: workdirs/local)
# Rerunning resumes: finished work in WORKDIR is reused, not redone.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/launch/setup_venv.sh"
cd "$repo"
workdir="${1:-workdirs/local}"
kbit train --config configs/lm.py --workdir "$workdir/lm"
echo "TensorBoard: tensorboard --logdir $workdir/lm/tensorboard"

#!/usr/bin/env bash
# README command 2: set up, then run the whole test suite on CPU (8 fake devices).
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k sharding`.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/launch/setup_venv.sh" || exit 1
cd "$repo"
rc=0
# -n auto: one worker per core (pytest-xdist); -n 0 runs in this process (e.g. for -x, --pdb)
python -m pytest -q -n auto --durations=15 "$@" || rc=$?   # setup_venv.sh turned on `set -e`
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"

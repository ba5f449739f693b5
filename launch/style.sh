#!/usr/bin/env bash
# The style gate, run by .ci/run before the tests: `ruff format` (2-space indent, 100
# columns) and `ruff check` (pycodestyle, pyflakes, isort, bugbear), both configured in
# pyproject.toml, over the whole tree. To fix what it reports:
#   ruff format . && ruff check --fix .
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/launch/setup_venv.sh" || exit 1
cd "$repo"
rc=0
ruff format --check --diff . || rc=1
ruff check . || rc=1
[ "$rc" -eq 0 ] && echo "style: ruff format and ruff check pass"
exit "$rc"

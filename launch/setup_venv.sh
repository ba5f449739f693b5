#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv and installs kbit-jax with its pinned
# dependencies. Sourced by launch/local.sh and launch/test.sh; idempotent: reinstalls
# only when setup.cfg changed. KBIT_VENV overrides the location (default: <repo>/.venv).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KBIT_VENV:-$repo/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtualenv $venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.kbit-setup-$(sha256sum "$repo/setup.cfg" | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  echo "installing kbit-jax and its pinned dependencies into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$repo[test]"
  touch "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"

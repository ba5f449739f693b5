#!/usr/bin/env bash
# Single-host GPU run of any kbit command, with the usual debugging switches.
#
#   bash launch/gpu.sh [--profile N] [--debug_nans] [--dump_hlo] [--dry_run] -- \
#       kbit train --config configs/lm.py:size=s7,dtype=bfloat16 --workdir /tmp/kbit/gpu
#
#   --profile N    jax.profiler trace of N steps (after compile) into WORKDIR/profile;
#                  view with `tensorboard --logdir WORKDIR/profile` or ui.perfetto.dev
#   --debug_nans   JAX_DEBUG_NANS=True: the first NaN-producing primitive raises
#   --dump_hlo     XLA_FLAGS=--xla_dump_to=WORKDIR/hlo (optimised HLO as text)
#   --dry_run      print the set-up and the command instead of running them
# A smaller smoke run of any config: append `:runlocal` to configs/lm.py.
# The venv (.venv-gpu, or KBIT_VENV) gets jax[cuda12] at the pinned jax version. It needs
# a Python >= 3.11 with its venv module ($PYTHON, else python3.11, else python3), checked
# first: Ubuntu 22.04's python3 is 3.10 (install python3.11-venv from the deadsnakes PPA,
# or `uv python install 3.11` and set PYTHON).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile=0 debug_nans=0 dump_hlo=0 dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --debug_nans) debug_nans=1; shift ;;
    --dump_hlo) dump_hlo=1; shift ;;
    --dry_run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "gpu.sh: unknown argument '$1'; see the header of $0" >&2; exit 2 ;;
  esac
done
cmd=("$@")
if [ ${#cmd[@]} -eq 0 ] || [ "${cmd[0]}" != "kbit" ]; then
  echo "gpu.sh: give the kbit command after --, e.g. -- kbit train --config ..." >&2; exit 2
fi
workdir=""
for ((i = 0; i < ${#cmd[@]}; i++)); do
  case "${cmd[$i]}" in
    --workdir) workdir="${cmd[$((i + 1))]:-}" ;;
    --workdir=*) workdir="${cmd[$i]#--workdir=}" ;;
  esac
done
if [ -z "$workdir" ] && { [ "$profile" -gt 0 ] || [ "$dump_hlo" -eq 1 ]; }; then
  echo "gpu.sh: --profile and --dump_hlo write into the command's --workdir; give one" >&2
  exit 2
fi

env_vars=()
[ "$debug_nans" -eq 1 ] && env_vars+=("JAX_DEBUG_NANS=True")
[ "$dump_hlo" -eq 1 ] && env_vars+=("XLA_FLAGS=--xla_dump_to=$workdir/hlo --xla_dump_hlo_as_text")
[ "$profile" -gt 0 ] && cmd+=("--config.train.profile_steps=$profile")

python="${PYTHON:-python3.11}"  # as launch/setup_venv.sh picks it
command -v "$python" >/dev/null 2>&1 || python=python3
check_python=("$python" -c "import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))")
if [ "$dry_run" -eq 1 ]; then
  printf '+'; printf ' %q' "${check_python[@]}"; printf '\n'
elif ! "${check_python[@]}" >/dev/null 2>&1; then
  echo "gpu.sh: $python is not a Python >= 3.11 with venv ($("$python" --version 2>&1 || true));" \
    "install one (deadsnakes python3.11-venv, or uv python install 3.11) and set PYTHON" >&2
  exit 2
fi

venv="${KBIT_VENV:-$repo/.venv-gpu}"
jax_version="$(sed -n 's/^ *jax==\([0-9.]*\)$/\1/p' "$repo/setup.cfg" | head -1)"
setup=(env PYTHON="$python" bash -c "source '$repo/launch/setup_venv.sh' && pip install -q 'jax[cuda12]==$jax_version'")
if [ "$dry_run" -eq 1 ]; then
  printf '+ KBIT_VENV=%q' "$venv"; printf ' %q' "${setup[@]}"; printf '\n'
  printf '+ env'; printf ' %q' "${env_vars[@]}" "$venv/bin/${cmd[0]}" "${cmd[@]:1}"; printf '\n'
  exit 0
fi
KBIT_VENV="$venv" "${setup[@]}"
exec env "${env_vars[@]}" "$venv/bin/${cmd[0]}" "${cmd[@]:1}"

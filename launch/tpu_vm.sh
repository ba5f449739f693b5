#!/usr/bin/env bash
# Run one kbit command on every worker of a Cloud TPU VM or pod slice.
#
#   bash launch/tpu_vm.sh --name kbit-v5e --zone us-west4-a --type v5litepod-16 \
#       [--project P] [--spot | --queued] [--runtime v2-alpha-tpuv5-lite] [--python 3.11] \
#       [--dry_run] -- kbit grid --config configs/grid.py --workdir gs://BUCKET/kbit/grid
#
# 1. creates the VM (or a queued resource with --queued) unless it exists;
# 2. copies this checkout to every worker, installs Python --python (default 3.11, what
#    setup.cfg and jax need: the TPU runtime images are Ubuntu 22.04, whose python3 is
#    3.10, and python3-venv is not always there) from the deadsnakes PPA unless the
#    worker has it with venv, then the checkout with jax[tpu] in a venv of that Python;
# 3. runs the command on all workers at once with --config.mesh.distributed=True
#    (--config.base.mesh.distributed=True for `kbit grid`; jax.distributed.initialize()
#    finds the other workers by itself on TPU VMs);
# 4. if the VM was preempted (spot / queued), waits for it to come back (recreating a
#    deleted spot VM), reinstalls and reruns: training and the grid resume from the
#    workdir, so only work since the last checkpoint or finished cell is repeated.
# With --dry_run every gcloud command is printed instead of run (tests/test_launch.py).
set -euo pipefail

name="" zone="" type="" project="" runtime="" spot=0 queued=0 dry_run=0 max_retries=20
python_version=3.11
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --runtime) runtime="$2"; shift 2 ;;
    --python) python_version="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --queued) queued=1; shift ;;
    --max_retries) max_retries="$2"; shift 2 ;;
    --dry_run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "tpu_vm.sh: unknown argument '$1'; see the header of $0" >&2; exit 2 ;;
  esac
done
cmd=("$@")
for required in name zone type; do
  if [ -z "${!required}" ]; then
    echo "tpu_vm.sh: --$required is required" >&2; exit 2
  fi
done
if [ ${#cmd[@]} -eq 0 ] || [ "${cmd[0]}" != "kbit" ]; then
  echo "tpu_vm.sh: give the kbit command after --, e.g. -- kbit grid --config ..." >&2; exit 2
fi
case "$python_version" in
  3.1[1-9]) ;;
  *) echo "tpu_vm.sh: --python $python_version: kbit-jax needs Python >= 3.11 (e.g. 3.11, 3.12)" >&2
     exit 2 ;;
esac
case "$type" in
  v5litepod-*|v5e-*) runtime="${runtime:-v2-alpha-tpuv5-lite}" ;;
  v5p-*) runtime="${runtime:-v2-alpha-tpuv5}" ;;
  v6e-*) runtime="${runtime:-v2-alpha-tpuv6e}" ;;
  v4-*) runtime="${runtime:-tpu-ubuntu2204-base}" ;;
  *) runtime="${runtime:-tpu-ubuntu2204-base}" ;;
esac

gcloud_tpu=(gcloud compute tpus)
where=(--zone "$zone")
[ -n "$project" ] && where+=(--project "$project")

run() {  # print (dry run) or execute one command
  if [ "$dry_run" -eq 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

vm_state() {  # READY, PREEMPTED, CREATING, ... or NONE
  if [ "$dry_run" -eq 1 ]; then echo NONE; return; fi
  "${gcloud_tpu[@]}" tpu-vm describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null \
    || echo NONE
}

create_vm() {
  if [ "$queued" -eq 1 ]; then
    local qr=("${gcloud_tpu[@]}" queued-resources create "$name-qr" --node-id "$name"
              --accelerator-type "$type" --runtime-version "$runtime" "${where[@]}")
    [ "$spot" -eq 1 ] && qr+=(--spot)
    run "${qr[@]}"
    if [ "$dry_run" -eq 0 ]; then
      until [ "$(vm_state)" = READY ]; do echo "waiting for queued resource $name-qr"; sleep 60; done
    fi
  else
    local create=("${gcloud_tpu[@]}" tpu-vm create "$name" --accelerator-type "$type"
                  --version "$runtime" "${where[@]}")
    [ "$spot" -eq 1 ] && create+=(--spot)
    run "${create[@]}"
  fi
}

ensure_vm() {
  local state; state="$(vm_state)"
  case "$state" in
    READY) ;;
    NONE) create_vm ;;
    PREEMPTED|TERMINATED)
      run "${gcloud_tpu[@]}" tpu-vm delete "$name" "${where[@]}" --quiet
      [ "$queued" -eq 1 ] && run "${gcloud_tpu[@]}" queued-resources delete "$name-qr" \
        "${where[@]}" --quiet --force
      create_vm ;;
    *) echo "TPU VM $name is $state; waiting"; sleep 60; ensure_vm ;;
  esac
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="/tmp/kbit-jax-$$.tar.gz"
python="python$python_version"
# On every worker: that Python with its venv module, from deadsnakes unless already there.
install_python="if ! $python -c 'import ensurepip, venv' >/dev/null 2>&1; then \
sudo DEBIAN_FRONTEND=noninteractive apt-get update -q && \
sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q software-properties-common && \
sudo add-apt-repository -y ppa:deadsnakes/ppa && \
sudo DEBIAN_FRONTEND=noninteractive apt-get update -q && \
sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $python $python-venv; fi && \
$python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'"
install_repo() {
  run tar -czf "$bundle" -C "$repo" --exclude=.git --exclude=.venv --exclude=workdirs .
  run "${gcloud_tpu[@]}" tpu-vm scp "$bundle" "$name:kbit-jax.tar.gz" --worker=all "${where[@]}"
  run "${gcloud_tpu[@]}" tpu-vm ssh "$name" --worker=all "${where[@]}" --command "$install_python"
  run "${gcloud_tpu[@]}" tpu-vm ssh "$name" --worker=all "${where[@]}" --command \
    "mkdir -p kbit-jax && tar -xzf kbit-jax.tar.gz -C kbit-jax && cd kbit-jax && \
$python -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
}

# Grid configs keep the training config, and so its mesh, under `base` (configs/grid.py).
dist_flag="--config.mesh.distributed=True"
for arg in "${cmd[@]}"; do
  if [ "$arg" = grid ]; then dist_flag="--config.base.mesh.distributed=True"; break; fi
done
remote_cmd="cd kbit-jax && .venv/bin/$(printf '%q ' "${cmd[@]}")$dist_flag"
for attempt in $(seq 1 "$max_retries"); do
  ensure_vm
  install_repo
  if run "${gcloud_tpu[@]}" tpu-vm ssh "$name" --worker=all "${where[@]}" --command "$remote_cmd"; then
    echo "done on $name (attempt $attempt)"
    exit 0
  fi
  echo "attempt $attempt failed; VM state: $(vm_state); retrying (work resumes from the workdir)"
done
echo "gave up after $max_retries attempts" >&2
exit 1

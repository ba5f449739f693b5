"""The launch scripts' dry runs print exactly the commands they would run."""

import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def dry_run(script, *args):
  out = subprocess.run(
    ["bash", f"launch/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=60
  )
  return (
    out.returncode,
    [line for line in out.stdout.splitlines() if line.startswith("+ ")],
    out.stderr,
  )


TPU = ["--name", "kbit-v5e", "--zone", "us-west4-a", "--type", "v5litepod-16"]
KBIT = ["--", "kbit", "grid", "--config", "configs/grid.py", "--workdir", "gs://b/kbit"]


def test_tpu_vm_dry_run_creates_installs_and_runs_on_all_workers():
  rc, lines, _ = dry_run("tpu_vm.sh", *TPU, "--spot", "--dry_run", *KBIT)
  assert rc == 0
  create, tar, scp, python, install, command = lines
  assert create == (
    "+ gcloud compute tpus tpu-vm create kbit-v5e --accelerator-type "
    "v5litepod-16 --version v2-alpha-tpuv5-lite --zone us-west4-a --spot"
  )
  assert tar.startswith("+ tar -czf /tmp/kbit-jax-") and "--exclude=.git" in tar
  assert "tpu-vm scp" in scp and "--worker=all" in scp
  # The v5e runtime images are Ubuntu 22.04 (python3 is 3.10; setup.cfg and jax need
  # 3.11): every worker gets python3.11 with venv (deadsnakes) before the venv is made.
  assert python.startswith("+ gcloud compute tpus tpu-vm ssh kbit-v5e --worker=all")
  assert "if\\ \\!\\ python3.11\\ -c\\ \\'import\\ ensurepip\\,\\ venv\\'" in python
  assert "add-apt-repository\\ -y\\ ppa:deadsnakes/ppa" in python
  assert "apt-get\\ install\\ -y\\ -q\\ python3.11\\ python3.11-venv" in python
  assert "sys.version_info\\ \\>=\\ \\(3\\,\\ 11\\)" in python
  assert "tpu-vm ssh kbit-v5e --worker=all" in install and "pip\\ install" in install
  assert "python3.11\\ -m\\ venv\\ .venv" in install and "python3\\ -m" not in install
  assert command.startswith(
    "+ gcloud compute tpus tpu-vm ssh kbit-v5e --worker=all "
    "--zone us-west4-a --command cd\\ kbit-jax\\ \\&\\&\\ "
    ".venv/bin/kbit\\ grid\\ --config\\ configs/grid.py"
  )
  # A grid config keeps its mesh under `base` (configs/grid.py).
  assert command.endswith("--workdir\\ gs://b/kbit\\ --config.base.mesh.distributed=True")
  rc, lines, _ = dry_run(
    "tpu_vm.sh",
    *TPU,
    "--dry_run",
    "--",
    "kbit",
    "train",
    "--config",
    "configs/lm.py:size=1b",
    "--workdir",
    "gs://b/train",
  )
  assert rc == 0 and lines[-1].endswith("gs://b/train\\ --config.mesh.distributed=True")


def test_tpu_vm_queued_resource():
  rc, lines, _ = dry_run(
    "tpu_vm.sh", *TPU, "--queued", "--spot", "--project", "p1", "--dry_run", *KBIT
  )
  assert rc == 0
  assert lines[0] == (
    "+ gcloud compute tpus queued-resources create kbit-v5e-qr --node-id "
    "kbit-v5e --accelerator-type v5litepod-16 --runtime-version "
    "v2-alpha-tpuv5-lite --zone us-west4-a --project p1 --spot"
  )


def test_tpu_vm_python_version():
  rc, lines, _ = dry_run("tpu_vm.sh", *TPU, "--python", "3.12", "--dry_run", *KBIT)
  assert rc == 0 and "python3.12-venv" in lines[3] and "python3.12\\ -m\\ venv" in lines[4]
  rc, _, err = dry_run("tpu_vm.sh", *TPU, "--python", "3.10", "--dry_run", *KBIT)
  assert rc == 2 and "needs Python >= 3.11" in err


def test_tpu_vm_bad_arguments():
  rc, _, err = dry_run("tpu_vm.sh", "--zone", "z", "--type", "v4-8", "--dry_run", *KBIT)
  assert rc == 2 and "--name is required" in err
  rc, _, err = dry_run("tpu_vm.sh", *TPU, "--dry_run", "--", "python", "x.py")
  assert rc == 2 and "give the kbit command after --" in err
  rc, _, err = dry_run("tpu_vm.sh", *TPU, "--bogus")
  assert rc == 2 and "unknown argument '--bogus'" in err


def test_gpu_dry_run_sets_debug_switches():
  rc, lines, _ = dry_run(
    "gpu.sh",
    "--profile",
    "5",
    "--debug_nans",
    "--dump_hlo",
    "--dry_run",
    "--",
    "kbit",
    "train",
    "--config",
    "configs/lm.py:runlocal",
    "--workdir",
    "/tmp/kbit/gpu",
  )
  assert rc == 0
  check, setup, command = lines
  assert check.startswith("+ python3.11 -c import\\ sys\\,\\ ensurepip\\,\\ venv")
  assert "jax\\[cuda12\\]==0.10.2" in setup and "PYTHON=python3.11" in setup
  assert "JAX_DEBUG_NANS=True" in command
  assert "XLA_FLAGS=--xla_dump_to=/tmp/kbit/gpu/hlo\\ --xla_dump_hlo_as_text" in command
  assert command.endswith(
    "train --config configs/lm.py:runlocal --workdir /tmp/kbit/gpu --config.train.profile_steps=5"
  )


def test_gpu_refuses_a_python_older_than_3_11(tmp_path):
  """Before any set-up: Ubuntu 22.04's python3 is 3.10, setup.cfg and jax need 3.11."""
  fake = tmp_path / "python3.10"
  fake.write_text("#!/bin/sh\necho 'Python 3.10.12'\nexit 1\n")
  fake.chmod(0o755)
  out = subprocess.run(
    ["bash", "launch/gpu.sh", "--", "kbit", "train", "--config", "c", "--workdir", str(tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
    env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)},
  )
  assert out.returncode == 2 and "is not a Python >= 3.11 with venv (Python 3.10.12)" in out.stderr
  assert out.stdout == "", "nothing was set up"


def test_gpu_profile_needs_a_workdir():
  rc, _, err = dry_run(
    "gpu.sh", "--profile", "5", "--dry_run", "--", "kbit", "train", "--config", "configs/lm.py"
  )
  assert rc == 2 and "give one" in err

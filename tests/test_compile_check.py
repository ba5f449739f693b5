"""`kbit compile_check` compiles a preset for a target mesh from this CPU, no allocation."""

import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def compile_check(*args):
  out = subprocess.run(
    [sys.executable, "-m", "kbit_jax.main", "compile_check", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  return out.returncode, out.stdout + out.stderr


def test_small_preset_fits_on_a_sharded_mesh():
  rc, out = compile_check(
    "--config",
    "configs/lm.py:size=s2,batch=64",
    "--topology",
    "v5e-4",
    "--config.mesh.fsdp=2",
    "--config.mesh.tensor=2",
  )
  assert rc == 0, out
  assert "s2 (395,008 params) on 4 devices, mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in out
  assert "-> fits in 16 GiB HBM" in out


@pytest.mark.slow
def test_70m_with_long_batches_does_not_fit_one_v5e_chip():
  # 64 x 2048 tokens of float32 logits over 50,304 words alone are 26 GB.
  rc, out = compile_check(
    "--config", "configs/lm.py:size=70m,batch=64,seq_len=2048", "--topology", "v5e-1"
  )
  assert rc == 0, out
  assert "does NOT fit in 16 GiB HBM" in out


def test_bad_topology_and_mesh_are_named():
  rc, out = compile_check("--config", "configs/lm.py", "--topology", "v9")
  assert rc != 0 and "--topology='v9' is unknown; allowed:" in out
  rc, out = compile_check("--config", "configs/lm.py", "--num_devices", "4", "--config.mesh.data=3")
  assert rc != 0 and "data*fsdp*tensor = 3*1*1 = 3 != 4 devices" in out


def test_scanned_layers_report_the_model_flops_not_one_loop_body():
  """model.scan_layers: XLA counts the scanned while-loop body once, so the report leads
  with the model's own FLOPs, which do not depend on scanning."""
  args = (
    "--config",
    "configs/lm.py:size=s3,batch=16",
    "--num_devices",
    "2",
    "--config.mesh.fsdp=2",
  )
  flops = {}
  for scan in (False, True):
    rc, out = compile_check(*args, f"--config.model.scan_layers={scan}")
    assert rc == 0, out
    match = re.search(
      r"([\d.e+-]+) TFLOP per device per step \(model count; XLA's ([\d.e+-]+)"
      r"(, the scanned layers counted once)?\)",
      out,
    )
    assert match and bool(match.group(3)) == scan, out
    flops[scan] = float(match.group(1))
  assert flops[True] == flops[False] > 0

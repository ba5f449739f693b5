"""host_memory.retain_freed_memory: a jitted function's large temporary stops page-faulting.

Each case runs in a fresh process (mallopt must come before jax starts its backend). The
function's [4096, 4096] float32 temporary is 64 MiB, above glibc's largest mmap threshold
(32 MiB), so by default every call maps it afresh and faults its 16,384 pages in (measured:
~16.4k minor faults, every call). Retained, the first ~6 calls grow the heap and later calls
fault 0 pages, but for an occasional growth by 32k pages; the test compares medians over 15
calls (measured: 16,385 and 0).
"""

import os
import statistics
import subprocess
import sys

import pytest

from kbit_jax.train import host_memory

_PROGRAM = """
import resource, sys
from kbit_jax.train import host_memory
if sys.argv[1] == "retain" and not host_memory.retain_freed_memory():
  sys.exit("retain_freed_memory() returned False")
import jax, jax.numpy as jnp
x = jnp.ones((4096, 512)) / 512
f = jax.jit(lambda x: jnp.tanh(x @ x.T) @ x)   # a 64 MiB [4096, 4096] temporary
for _ in range(15):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(
  not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)"
)


def _faults_per_call(mode: str) -> float:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  out = subprocess.run(
    [sys.executable, "-c", _PROGRAM, mode],
    env=env,
    check=True,
    capture_output=True,
    text=True,
    timeout=300,
  )
  return statistics.median(float(n) for n in out.stdout.split())


@pytest.mark.machine
@glibc_only
def test_retained_memory_stops_page_faults():
  default, retained = _faults_per_call("default"), _faults_per_call("retain")
  assert default > 8000, f"default malloc faulted only {default} pages a call"
  assert retained < default / 20, (default, retained)


@pytest.mark.parametrize("platforms, expected", [("cpu", False), ("tpu", True), ("cuda,cpu", True)])
def test_accelerator_installed_reads_jax_platforms(monkeypatch, platforms, expected):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_memory.accelerator_installed() is expected


def test_no_accelerator_in_this_cpu_environment(monkeypatch):
  """The test environment installs jax without plugins or libtpu (setup.cfg [test])."""
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  assert not host_memory.accelerator_installed()

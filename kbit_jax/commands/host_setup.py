"""The process set-up of the commands that compile (train, grid): host memory and the
persistent compilation cache, each a flag of that command."""

from __future__ import annotations

from absl import flags


def define_flags(fv: flags.FlagValues) -> tuple[flags.FlagHolder, flags.FlagHolder]:
  cache = flags.DEFINE_string(
    "compile_cache",
    None,
    "persistent XLA compilation cache, a directory or gs:// path ('' "
    "turns it off; default $JAX_COMPILATION_CACHE_DIR or ~/.cache/kbit_jax/xla): reruns and "
    "resumed grids load their compiles from it",
    flag_values=fv,
  )
  retain = flags.DEFINE_bool(
    "retain_host_memory",
    True,
    "without an accelerator backend installed: keep freed host "
    "memory for reuse (kbit_jax/train/host_memory.py), so XLA:CPU's per-step temporaries "
    "stop page-faulting; the process holds its peak host memory",
    flag_values=fv,
  )
  return cache, retain


def prepare(cache: flags.FlagHolder, retain: flags.FlagHolder) -> None:
  """Before jax starts its backend and its threads (host_memory.py)."""
  from kbit_jax.train import compile_cache, host_memory

  if retain.value and not host_memory.accelerator_installed():
    host_memory.retain_freed_memory()
  compile_cache.enable(compile_cache.DEFAULT_DIR if cache.value is None else cache.value)

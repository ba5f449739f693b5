"""JAX's persistent compilation cache, on for `kbit train` and `kbit grid` (main.py's
`--compile_cache`, default ~/.cache/kbit_jax/xla or $JAX_COMPILATION_CACHE_DIR).

XLA executables are stored by a key of the program, the devices and the jax/XLA version,
so a rerun, a resumed (preempted) grid, or a grid that repeats shapes loads them instead
of compiling again; the numbers are those of a fresh compile. Every compile is stored
(the minimum compile time is 0 s: most of ours take < 1 s on CPU), and nothing is ever
evicted: delete the directory to reclaim it (the whole test suite writes ~20 MB). An
entry that cannot be read (a writer killed mid-write) makes jax warn and compile. Cloud
TPU: give every worker the same gs:// path, so a resumed grid skips its compiles.
"""

from __future__ import annotations

import os

import jax
from absl import logging

DEFAULT_DIR = os.environ.get("JAX_COMPILATION_CACHE_DIR") or "~/.cache/kbit_jax/xla"


def enable(path: str) -> None:
  """Turns the cache on at `path` (a local dir or gs://...), or off for "". Call before
  the first compile: jax opens the cache once."""
  if not path:
    jax.config.update("jax_enable_compilation_cache", False)
    return
  if "://" not in path:
    path = os.path.expanduser(path)
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:  # e.g. a read-only home: run without the cache, say so
      logging.warning("compilation cache off: cannot create %s (%s)", path, e)
      jax.config.update("jax_enable_compilation_cache", False)
      return
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

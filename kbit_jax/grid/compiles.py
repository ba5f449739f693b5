"""How many executables jax builds: per cell, per run and per grid (the records'
`compiles`, the grid's last line).

jax reports every executable it builds (a miss of its in-memory cache: compiled, or loaded
from the persistent cache, train/compile_cache.py) as a duration event with the function's
name, and each persistent-cache load as a second event. `start()` registers the listeners
once per process; counting starts there.
"""

from __future__ import annotations

import collections

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_COMPILES: collections.Counter = collections.Counter()
_CACHE_HITS = [0]
_STARTED = [False]


def _count_compile(event: str, _: float, **kwargs):
  if event == COMPILE_EVENT:
    _COMPILES[kwargs.get("fun_name", "?")] += 1


def _count_cache_hit(event: str, **_):
  if event == CACHE_HIT_EVENT:
    _CACHE_HITS[0] += 1


def start() -> None:
  """Registers the listeners (once per process); nothing is counted before."""
  if not _STARTED[0]:
    jax.monitoring.register_event_duration_secs_listener(_count_compile)
    jax.monitoring.register_event_listener(_count_cache_hit)
    _STARTED[0] = True


def compile_count() -> int:
  """Executables built in this process since `start()` (compiled or loaded from the cache)."""
  return sum(_COMPILES.values())


def by_function() -> collections.Counter:
  """A copy of the counts per function name."""
  return _COMPILES.copy()


def cache_hits() -> int:
  """Executables loaded from the persistent compilation cache since `start()`."""
  return _CACHE_HITS[0]

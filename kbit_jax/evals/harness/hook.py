"""Registers the `kbit` model with lm-evaluation-harness whenever lm_eval is imported.

lm_eval 0.4.13 finds models only in its own table (lm_eval/models/__init__.py) or among
classes whose module was imported; it has no entry point for third-party models
(EleutherAI/lm-evaluation-harness#1621, #3282). So kbit-jax installs `kbit_jax_harness.pth`
(written by pth_build.py, setup.cfg's build_py), whose one line imports this module at
interpreter start. It imports nothing else: it puts a finder on `sys.meta_path` that waits
for `lm_eval.api.registry` and, right after that module runs, registers lm_eval's own model
table and then "kbit" as a lazy placeholder, "module:class" of `KbitLM`. Nothing of
kbit-jax, jax or torch is imported until lm_eval asks for the model; then lm_eval imports
`kbit_jax.evals.harness.lm`, whose `@register_model("kbit")` replaces the placeholder with
the class (the registry allows exactly that upgrade).
"""

from __future__ import annotations

import importlib.abc
import sys

MODEL_NAME = "kbit"
TARGET = "kbit_jax.evals.harness.lm:KbitLM"
REGISTRY_MODULE = "lm_eval.api.registry"


def register(registry_module) -> None:
  """Adds the placeholder to lm_eval's model registry (idempotent). lm_eval's own table
  (lm_eval.models: lazy "module:class" strings, no torch) goes in first: `get_model`
  imports it only while the registry is empty, so registering `kbit` alone would hide
  `hf` and every other built-in model."""
  import lm_eval.models  # noqa: F401

  models = registry_module.model_registry
  if MODEL_NAME not in models:
    models.register(MODEL_NAME, target=TARGET)


class _Loader(importlib.abc.Loader):
  """The registry module's own loader, then `register`."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    self._loader.exec_module(module)
    register(module)


class RegistryFinder(importlib.abc.MetaPathFinder):
  """Finds nothing itself: wraps the loader of lm_eval.api.registry when it is imported."""

  def find_spec(self, fullname, path, target=None):
    if fullname != REGISTRY_MODULE:
      return None
    for finder in sys.meta_path:
      if finder is self or not hasattr(finder, "find_spec"):
        continue
      spec = finder.find_spec(fullname, path, target)
      if spec is not None and spec.loader is not None:
        spec.loader = _Loader(spec.loader)
        return spec
    return None


def install() -> None:
  """Called by the .pth line; registers at once if lm_eval's registry is already loaded."""
  if REGISTRY_MODULE in sys.modules:
    register(sys.modules[REGISTRY_MODULE])
  elif not any(isinstance(f, RegistryFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, RegistryFinder())

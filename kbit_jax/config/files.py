"""Config files and their one argument: `--config configs/lm.py:size=s3,runlocal`.

A config file defines `get_config(arg: str | None)` (big_vision's convention) and turns
the part after the colon into typed values with `parse_arg`. `load_module` and
`get_config` read a config file by path, for code that builds on one (an experiment's
config extending configs/grid.py, tests): configs are files of the checkout, not modules
of the installed package.
"""

from __future__ import annotations

import importlib.util
import pathlib
import types

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`"size=s3,bits=4"` -> ConfigDict, each value cast to the type of its default.

  Unknown keys raise, naming the key and the allowed ones. A bare word `runlocal`
  sets the boolean default of that name.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is unknown; allowed: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("", "1", "true", "yes")
    else:
      try:
        out[key] = type(default)(value)
      except ValueError:
        raise ValueError(
          f"config argument {key}={value!r} is not a {type(default).__name__}"
        ) from None
  return out


def load_module(path: str | pathlib.Path) -> types.ModuleType:
  """The config file at `path` as a module (its `get_config` and constants)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"kbit_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(spec: str | pathlib.Path) -> ml_collections.ConfigDict:
  """`"configs/grid.py:runlocal"` -> that file's `get_config("runlocal")`, as --config."""
  path, _, arg = str(spec).partition(":")
  return load_module(path).get_config(arg or None)


def override_error(args: list[str], error: Exception) -> str:
  """One line for a `--config.<path>=value` override that names no key of the config: the
  override, the section it reaches and the keys that section has."""
  config_arg = None
  for i, a in enumerate(args):
    if a.startswith("--config="):
      config_arg = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(args):
      config_arg = args[i + 1]
  overrides = [a.split("=", 1)[0][len("--config.") :] for a in args if a.startswith("--config.")]
  if config_arg is None:
    return f"--config overrides need --config first ({type(error).__name__}: {error})"
  config = get_config(config_arg)
  for override in overrides:
    node, where = config, "the top level"
    for key in override.split("."):
      if not isinstance(node, ml_collections.ConfigDict):
        return f"--config.{override}: {where} is a value, not a section"
      if key not in node:
        return (
          f"--config.{override}: the config has no key {key!r} under {where}; "
          f"allowed: {sorted(node.keys())}"
        )
      node, where = node[key], f"{where.replace('the top level', '')}.{key}".lstrip(".")
  return f"--config overrides {overrides}: {type(error).__name__}: {error}"

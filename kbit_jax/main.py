"""The `kbit` command: a table of commands, each one call.

    kbit                         lists the commands, one line and an example each
    kbit CMD --help              that command's own flags
    kbit CMD [flags]             runs it: kbit_jax/commands/CMD.py defines its flags and main()

A command's module is imported only when it runs, so `kbit --help` starts no jax, and each
command has its own absl FlagValues: `kbit grid --help` shows grid's flags, not train's.
Failures end in one line `kbit CMD: ...` (set KBIT_TRACEBACK=1 for the stack).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import textwrap

from absl import flags, logging

HELP = ("-h", "--help", "-help", "--helpshort", "--helpfull")


@dataclasses.dataclass(frozen=True)
class Command:
  module: str  # kbit_jax.commands.<module>: FLAGS (an absl FlagValues) and main()
  summary: str
  example: str


COMMANDS = {
  "train": Command(
    "train",
    "train one language model (resumes from its workdir)",
    "kbit train --config configs/lm.py:runlocal --workdir /tmp/kbit/smoke",
  ),
  "grid": Command(
    "grid",
    "train each size, then quantize and evaluate every cell of a grid",
    "kbit grid --config configs/grid.py:runlocal --workdir /tmp/kbit/grid [--dry_run]",
  ),
  "fit": Command(
    "fit",
    "fit the scaling laws of a results store: tables only",
    "kbit fit --results /tmp/kbit/grid/results --out /tmp/kbit/fit",
  ),
  "report": Command(
    "report",
    "fits, figures and the Markdown/HTML report of a results store",
    "kbit report --results /tmp/kbit/grid/results --out /tmp/kbit/report",
  ),
  "import": Command(
    "import_hf",
    "import a local Hugging Face checkpoint (GPT-2, Pythia, OPT, BLOOM)",
    "kbit import --hf_dir ~/hf/pythia-70m --workdir ~/kbit/pretrained/pythia-70m",
  ),
  "compile_check": Command(
    "compile_check",
    "compile a config's train step for a TPU/GPU topology, from a CPU",
    "kbit compile_check --config configs/lm.py:size=1b,dtype=bfloat16 --topology v5e-16",
  ),
  "codebook": Command(
    "codebook",
    "print a data type's normalised code values",
    "kbit codebook --dtype nf --bits 4 [--json]",
  ),
  "bits": Command(
    "bits", "print the total-bits table of the model presets", "kbit bits [--method awq]"
  ),
}


def usage() -> str:
  """`kbit --help`: every command with one line and an example."""
  lines = ["kbit: k-bit inference scaling laws in JAX. Commands:", ""]
  for name, command in COMMANDS.items():
    lines += [f"  {name:<14} {command.summary}", f"  {'':<14} {command.example}"]
  lines += [
    "",
    "`kbit CMD --help` lists a command's flags. Bad input ends in one line "
    "`kbit CMD: ...`; KBIT_TRACEBACK=1 shows the stack.",
  ]
  return "\n".join(lines)


def command_help(name: str, module) -> str:
  """`kbit CMD --help`: the command's docstring and its own flags."""
  lines = [
    f"kbit {name}: {COMMANDS[name].summary}",
    "",
    (module.__doc__ or "").strip(),
    "",
    "flags:",
  ]
  seen = set()
  for flag in module.FLAGS._flags().values():  # absl's FlagValues: name -> Flag
    if flag.name in seen:
      continue
    seen.add(flag.name)
    default = " (required)" if flag.default is None else f" (default: {flag.default_as_str})"
    lines += textwrap.wrap(
      f"--{flag.name}: {flag.help}{default}", 92, initial_indent="  ", subsequent_indent="      "
    )
  return "\n".join(lines)


def _fail(name: str, message: str, code: int = 1):
  print(f"kbit{' ' + name if name else ''}: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _flag_names(args: list[str]) -> list[str]:
  """The flag names in `args` (`--name=value`, `--name value`, `--noname`)."""
  return [a.lstrip("-").split("=", 1)[0] for a in args if a.startswith("-") and a != "--"]


def _check_names(name: str, module, args: list[str]) -> None:
  """Unknown flags and missing required ones, named before anything is parsed."""
  known = set(module.FLAGS) | set(flags.FLAGS)
  for flag in _flag_names(args):
    bare = flag[2:] if flag.startswith("no") and flag[2:] in known else flag
    if bare not in known and not bare.startswith("config."):
      allowed = ", ".join(f"--{f}" for f in sorted(set(module.FLAGS)))
      _fail(name, f"unknown flag --{flag}; allowed: {allowed} (kbit {name} --help)", 2)
  missing = [f for f in getattr(module, "REQUIRED", ()) if f not in _flag_names(args)]
  if missing:
    _fail(
      name,
      f"{', '.join('--' + f for f in missing)} is required, e.g. "
      f"`{COMMANDS[name].example}` (kbit {name} --help)",
      2,
    )


def _parse(name: str, module, args: list[str]) -> None:
  """Parses the command's own flags, then absl's (--verbosity, ...) from what is left."""
  _check_names(name, module, args)
  argv = [f"kbit {name}", *args]
  sys.argv = argv  # ml_collections' config flag reads its --config.* overrides from here
  try:
    rest = module.FLAGS(argv, known_only=True)
    flags.FLAGS(rest)
  except flags.Error as e:
    _fail(name, f"{e} (kbit {name} --help)", 2)
  except (AttributeError, KeyError) as e:  # a --config.<key> override the config lacks
    from kbit_jax.config import files

    _fail(name, files.override_error(args, e), 2)


def run(argv: list[str] | None = None) -> None:
  """The `kbit` entry point."""
  argv = sys.argv if argv is None else argv
  if len(argv) < 2 or argv[1] in HELP:
    print(usage())
    sys.exit(0 if len(argv) > 1 else 2)
  name, args = argv[1], argv[2:]
  if name not in COMMANDS:
    _fail("", f"unknown command {name!r}; allowed: {list(COMMANDS)} (kbit --help)", 2)
  module = importlib.import_module(f"kbit_jax.commands.{COMMANDS[name].module}")
  if any(a.split("=")[0] in HELP for a in args):
    print(command_help(name, module))
    sys.exit(0)
  _parse(name, module, args)
  if not flags.FLAGS["verbosity"].present:  # Orbax logs every file it writes at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    module.main()
  except KeyboardInterrupt:
    _fail(name, "interrupted", 130)
  except BrokenPipeError:  # `kbit ... | head`
    sys.exit(0)
  except Exception as e:  # every failure ends in one line; KBIT_TRACEBACK=1 for the stack
    if os.environ.get("KBIT_TRACEBACK"):
      raise
    for kind, what in getattr(module, "ERRORS", ()):
      if isinstance(e, kind):
        _fail(name, f"{what}: {e}")
    _fail(name, f"{type(e).__name__}: {e} (KBIT_TRACEBACK=1 shows the stack)")


if __name__ == "__main__":
  run()

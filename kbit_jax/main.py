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
  "kg": Command(
    "kg",
    "train each knowledge-graph embedding once, then quantize and evaluate every cell",
    "kbit kg --config configs/kg.py:runlocal --workdir /tmp/kbit/kg [--dry_run]",
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
  "harness": Command(
    "harness",
    "lm-evaluation-harness tasks on a trained or imported model at k bits",
    "kbit harness --model_dir ~/kbit/pretrained/pythia-70m --bits 4 --dtype nf --tasks "
    "hellaswag --out /tmp/kbit/harness",
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
  message = " ".join(str(message).split())  # one line, whatever the exception said
  print(f"kbit{' ' + name if name else ''}: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _config_file_error(args: list[str]) -> str | None:
  """What is wrong with the --config file itself (missing, unreadable, not Python), as
  one line; None if it compiles. ml_collections' own report spans several lines."""
  value = None
  for i, a in enumerate(args):
    if a.startswith("--config="):
      value = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(args):
      value = args[i + 1]
  if value is None:
    return None
  path = value.split(":", 1)[0]
  if not os.path.isfile(path):
    return f"--config: config file {path!r} does not exist (as {value!r})"
  try:
    with open(path, encoding="utf-8") as f:
      compile(f.read(), path, "exec")
  except (OSError, UnicodeDecodeError) as e:
    return f"--config: config file {path!r} is unreadable ({type(e).__name__}: {e})"
  except SyntaxError as e:
    return f"--config: config file {path!r} line {e.lineno}: {e.msg}"
  return None


class _Quiet:
  """Background noise off, so a failure ends in the one line of `run`: tracebacks of
  other threads (Orbax's writers; the main thread gets their error), of objects torn
  down at exit ("Event loop is closed"), of Orbax's write coroutines left unawaited when a
  write fails (CI's full-disk run: two more lines, "coroutine ... was never awaited") and
  of logged exceptions (Orbax logs every exception it passes on, a Ctrl-C included) are
  kept, not printed. The first background failure is named in one line if the command
  itself succeeds. KBIT_TRACEBACK=1: all."""

  def __init__(self):
    self.background: BaseException | None = None

  def install(self) -> None:
    import logging as py_logging
    import threading
    import warnings

    def thread_hook(hook_args):
      if self.background is None and not isinstance(hook_args.exc_value, SystemExit):
        self.background = hook_args.exc_value

    threading.excepthook = thread_hook
    sys.unraisablehook = lambda _: None
    warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)

    class DropTracebacks(py_logging.Filter):
      def filter(self, record):
        return not record.exc_info

    root = py_logging.getLogger()
    if not root.handlers:  # else basicConfig would add one without the filter
      handler = py_logging.StreamHandler()
      handler.setFormatter(py_logging.Formatter(py_logging.BASIC_FORMAT))
      root.addHandler(handler)
    for handler in root.handlers:
      handler.addFilter(DropTracebacks())


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
  if "config" in module.FLAGS and (problem := _config_file_error(args)):
    _fail(name, problem, 2)
  try:
    rest = module.FLAGS(argv, known_only=True)
    flags.FLAGS(rest)
  except flags.Error as e:
    text = str(e)
    if "Traceback (most recent call last)" in text:  # get_config raised: its last line
      text = "--config: " + [line for line in text.splitlines() if line.strip()][-1].strip()
    _fail(name, f"{text} (kbit {name} --help)", 2)
  except (AttributeError, KeyError) as e:  # a --config.<key> override the config lacks
    from kbit_jax.config import files

    _fail(name, files.override_error(args, e), 2)
  except Exception as e:  # the config file's get_config raised: its own message
    if os.environ.get("KBIT_TRACEBACK"):
      raise
    _fail(name, f"--config: {type(e).__name__}: {e}", 2)


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
  quiet = _Quiet()
  if not os.environ.get("KBIT_TRACEBACK"):
    quiet.install()
  try:
    module.main()
    if quiet.background is not None:
      e = quiet.background
      print(
        f"kbit {name}: warning: a background thread failed ({type(e).__name__}: "
        f"{' '.join(str(e).split())[:300]})",
        file=sys.stderr,
        flush=True,
      )
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

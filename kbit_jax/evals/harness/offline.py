"""The study's four harness tasks read from local files, for clusters without internet.

    python -m kbit_jax.evals.harness.offline --task_dir /data/kbit_tasks --out /data/kbit_yaml
    lm_eval --model kbit --model_args model_dir=W --include_path /data/kbit_yaml --tasks hellaswag

tasks/*.yaml are lm_eval 0.4.13's official definitions of lambada_openai, hellaswag,
piqa and winogrande with only the data source changed (`dataset_path: json`,
`dataset_kwargs.data_files` naming files of a task directory; tests/test_harness_offline.py
compares every other field with the installed harness's YAMLs). Their task names are the
official ones, so with `--include_path` they replace the hub-reading definitions and
results are keyed as usual. `write_task_yamls` writes copies whose file names are
absolute paths into `task_dir`, after checking that every file exists; `kbit harness
--task_dir` does it into a temporary directory. The eval split files are those the
built-in scorer's `eval.task_dir` reads (tasks.TASK_FILES), so one directory serves both.
"""

from __future__ import annotations

import argparse
import pathlib
import re

TEMPLATES = pathlib.Path(__file__).parent / "tasks"
# the study's task (evals/tasks.py) -> its harness task
HARNESS_TASKS = {
  "lambada": "lambada_openai",
  "hellaswag": "hellaswag",
  "piqa": "piqa",
  "winogrande": "winogrande",
}
_DATA_FILE = re.compile(r"^(\s+)(train|validation|test): (\S+\.jsonl)$")


def template(task: str) -> pathlib.Path:
  """The shipped YAML of a harness task name (one of HARNESS_TASKS' values)."""
  if task not in HARNESS_TASKS.values():
    raise ValueError(f"no offline YAML for task {task!r}; allowed: {list(HARNESS_TASKS.values())}")
  return TEMPLATES / f"{task}.yaml"


def data_files(task: str) -> dict[str, str]:
  """{split: file name} a task reads from its task directory."""
  out = {}
  for line in template(task).read_text().splitlines():
    match = _DATA_FILE.match(line)
    if match:
      out[match.group(2)] = match.group(3)
  return out


def write_task_yamls(
  task_dir: str | pathlib.Path, out_dir: str | pathlib.Path, tasks=None
) -> list[pathlib.Path]:
  """YAMLs of `tasks` (default: all four) reading `task_dir`'s files, into `out_dir`;
  FileNotFoundError naming the task and every missing file before anything is written."""
  task_dir = pathlib.Path(task_dir).expanduser().absolute()
  names = list(tasks or HARNESS_TASKS.values())
  missing = [
    f"{name}: {task_dir / f}"
    for name in names
    for f in data_files(name).values()
    if not (task_dir / f).exists()
  ]
  if missing:
    raise FileNotFoundError(
      f"task_dir={str(task_dir)!r} lacks {len(missing)} file(s): {'; '.join(missing)} "
      "(kbit_jax/evals/README.md, 'Harness', says how to prepare them)"
    )
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for name in names:
    lines = [
      _DATA_FILE.sub(lambda m: f"{m.group(1)}{m.group(2)}: {task_dir / m.group(3)}", line)
      for line in template(name).read_text().splitlines()
    ]
    path = out_dir / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    written.append(path)
  return written


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--task_dir", required=True, help="folder with the tasks' jsonl files")
  parser.add_argument("--out", required=True, help="folder for the YAMLs (--include_path)")
  args = parser.parse_args(argv)
  for path in write_task_yamls(args.task_dir, args.out):
    print(path)


if __name__ == "__main__":
  main()

"""The harness bridge's packaging: the offline task YAMLs differ from the installed
harness's official ones only in the data source, nothing of lm_eval or torch is imported
by kbit_jax unless the bridge is used, and the .pth hook registers `kbit` lazily."""
# ruff: noqa: E402 (the imports below wait for pytest.importorskip)

import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval", reason='needs pip install "kbit-jax[harness]"')

import lm_eval.tasks
from lm_eval.tasks._yaml_loader import load_yaml

from kbit_jax.evals.harness import hook, offline

OFFICIAL = pathlib.Path(lm_eval.tasks.__file__).parent
OFFICIAL_YAMLS = {
  "lambada_openai": "lambada/lambada_openai.yaml",
  "hellaswag": "hellaswag/hellaswag.yaml",
  "piqa": "piqa/piqa.yaml",
  "winogrande": "winogrande/default.yaml",
}
DATA_SOURCE = ("dataset_path", "dataset_name", "dataset_kwargs")


def _normalized(config: dict) -> dict:
  """Functions (!function) by module and name; the data source left out."""
  return {
    k: (v.__module__, v.__qualname__) if callable(v) else v
    for k, v in config.items()
    if k not in DATA_SOURCE
  }


@pytest.mark.parametrize("task", list(offline.HARNESS_TASKS.values()))
def test_offline_yaml_differs_from_the_official_only_in_the_data_source(task, tmp_path):
  ours = load_yaml(offline.template(task))
  official = load_yaml(OFFICIAL / OFFICIAL_YAMLS[task])
  assert _normalized(ours) == _normalized(official)
  assert ours["dataset_path"] == "json" and ours["dataset_name"] is None
  splits = {k: official.get(k) for k in ("training_split", "validation_split", "test_split")}
  assert set(offline.data_files(task)) == {s for s in splits.values() if s}
  # the written copy reads absolute paths into the task dir, and only that changed
  for name in offline.data_files(task).values():
    (tmp_path / "data" / name).parent.mkdir(exist_ok=True)
    (tmp_path / "data" / name).write_text("{}\n")
  (written,) = offline.write_task_yamls(tmp_path / "data", tmp_path / "yaml", [task])
  resolved = load_yaml(written)
  assert _normalized(resolved) == _normalized(ours)
  assert resolved["dataset_kwargs"]["data_files"] == {
    split: str(tmp_path / "data" / name) for split, name in offline.data_files(task).items()
  }


def test_missing_task_files_are_named_and_nothing_is_written(tmp_path):
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "dev.jsonl").write_text("{}\n")
  with pytest.raises(FileNotFoundError) as info:
    offline.write_task_yamls(tmp_path / "data", tmp_path / "yaml")
  message = str(info.value)
  assert "lacks 6 file(s)" in message and f"winogrande: {tmp_path}/data/train_xl.jsonl" in message
  assert "dev.jsonl" not in message and not (tmp_path / "yaml").exists()


def _run(code: str) -> str:
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_kbit_jax_imports_neither_lm_eval_nor_torch_unless_the_bridge_is_used():
  out = _run(
    "import pkgutil, sys, importlib, kbit_jax\n"
    "bridge = ('kbit_jax.evals.harness.lm', 'kbit_jax.evals.harness.run')\n"
    "names = [m.name for m in pkgutil.walk_packages(kbit_jax.__path__, 'kbit_jax.')]\n"
    "for name in names:\n"
    "  if name not in bridge:\n"
    "    try:\n"
    "      importlib.import_module(name)\n"
    "    except ImportError as e:  # a module broken elsewhere must not hide the others\n"
    "      assert e.name not in ('lm_eval', 'torch'), (name, e)\n"
    "print(len(names), [m for m in ('lm_eval', 'torch', 'transformers') if m in sys.modules])\n"
  )
  count, loaded = out.split(" ", 1)
  assert int(count) > 60 and loaded.strip() == "[]"


def test_the_pth_hook_registers_kbit_lazily():
  """Installed by setup.cfg's build_py (harness/pth_build.py) into site-packages: importing
  lm_eval's registry registers the placeholder, and nothing of kbit-jax beyond the hook
  (no jax) is imported."""
  site = next(p for p in map(pathlib.Path, sys.path) if (p / "kbit_jax_harness.pth").exists())
  assert "_kbit_hook.install()" in (site / "kbit_jax_harness.pth").read_text()
  out = _run(
    "import sys\n"
    "from lm_eval.api.registry import model_registry\n"
    "print(dict(model_registry.items())['kbit'], 'jax' in sys.modules, 'torch' in sys.modules)\n"
    "from lm_eval.api.registry import get_model\n"
    "print(get_model('dummy').__name__, 'hf' in model_registry)\n"
  )  # lm_eval's own models stay reachable (get_model fills its table only when empty)
  assert out.split() == [hook.TARGET, "False", "False", "DummyLM", "True"]

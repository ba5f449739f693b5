"""kbit_jax.analysis stays a jax-free package without import cycles."""

import ast
import graphlib
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "kbit_jax", "analysis")
MODULES = sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py")


def _imports(module: str) -> set[str]:
  """The kbit_jax modules `module` imports, at any depth of its code."""
  with open(os.path.join(PACKAGE, f"{module}.py")) as f:
    tree = ast.parse(f.read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("kbit_jax")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kbit_jax"):
      # `from package import module` names the module; `from module import name`, the module
      names = [f"{node.module}.{a.name}" for a in node.names]
      out |= {n for n in names if _is_module(n)} or {node.module}
  return out


def _is_module(name: str) -> bool:
  path = os.path.join(REPO, *name.split("."))
  return os.path.isdir(path) or os.path.isfile(path + ".py")


def test_no_import_cycle_and_no_kbit_jax_module_outside_analysis_but_presets():
  graph = {
    m: {i.removeprefix("kbit_jax.analysis.") for i in _imports(m) if ".analysis." in i}
    for m in MODULES
  }
  order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError on a cycle
  assert set(order) == set(MODULES)
  outside = {i for m in MODULES for i in _imports(m) if not i.startswith("kbit_jax.analysis")}
  assert outside == {"kbit_jax.model.presets"}  # synthetic.py's model sizes: jax-free


def test_the_package_docstring_names_every_module():
  import kbit_jax.analysis

  listed = [line.split()[0] for line in kbit_jax.analysis.__doc__.splitlines()[2:] if line]
  assert sorted(listed) == [f"{m}.py" for m in MODULES]


BLOCKED = """
import importlib, sys

class BlockJax:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("jax", "jaxlib", "flax"):
      raise ImportError(f"{name} is blocked: kbit_jax.analysis must not need it")
    return None

sys.meta_path.insert(0, BlockJax())
for module in sys.argv[3:]:
  importlib.import_module(f"kbit_jax.analysis.{module}")
from kbit_jax.analysis import stage, synthetic

records = synthetic.synthetic_records(sizes=("s1", "s2", "s3"), bits=(4, 16), dtypes=("nf",))
synthetic.write_store(sys.argv[1], records)
paths = stage.report(sys.argv[1], sys.argv[2], n_boot=2)
assert "## Fitted curves per k" in paths["md"].read_text()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax"))
assert not loaded, loaded
print("ok", len(records))
"""


def test_the_analysis_package_imports_and_reports_with_jax_blocked(tmp_path):
  """Every module imports, and `kbit report` runs on a small store, in an interpreter
  where importing jax, jaxlib or flax raises: the analysis runs on a laptop without jax."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  run = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(BLOCKED), str(tmp_path / "results")]
    + [str(tmp_path / "report")]
    + MODULES,
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.split()[-2:] == ["ok", "6"]

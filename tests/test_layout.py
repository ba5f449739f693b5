"""The package's structure: the pipeline's stages import each other without cycles, and the
library never imports the configs (configs/*.py import the library, as flax's lm1b does).

Imports are read from the source with `ast`, module level and inside functions alike (a
lazy import is still a dependency), so this runs nothing of the package. Imports under
`if TYPE_CHECKING:` only name types for annotations (with `from __future__ import
annotations` they never run) and are not dependencies.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kbit_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(path: pathlib.Path):
  """Every AST node of `path` but those under `if TYPE_CHECKING:` (type-only imports)."""
  tree = ast.parse(path.read_text())
  typing_only = {
    id(n)
    for block in ast.walk(tree)
    if isinstance(block, ast.If)
    and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
    for n in ast.walk(block)
  }
  return [n for n in ast.walk(tree) if id(n) not in typing_only]


def _imports() -> dict[str, set[str]]:
  """Module -> the kbit_jax modules it imports (a `from pkg import name` of a submodule
  counts as that submodule)."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in _runtime_nodes(path):
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        deps.add(node.module)
        deps |= {f"{node.module}.{a.name}" for a in node.names}
    graph[name] = {d for d in deps if d in modules and d != name}
  return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
  """One import cycle (a list of modules, first == last), or []."""
  state: dict[str, int] = {}  # 1 on the current path, 2 done
  path: list[str] = []

  def visit(node: str) -> list[str]:
    state[node] = 1
    path.append(node)
    for dep in sorted(graph[node]):
      if state.get(dep) == 1:
        return path[path.index(dep) :] + [dep]
      if dep not in state and (found := visit(dep)):
        return found
    path.pop()
    state[node] = 2
    return []

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return []


def test_no_import_cycles():
  graph = _imports()
  assert len(graph) > 50  # the package was read
  assert _cycle(graph) == [], "import cycle: " + " -> ".join(_cycle(graph))


def test_a_cycle_is_found():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) == []


def test_the_library_never_imports_the_configs():
  importers = []
  for path in sorted(PACKAGE.rglob("*.py")):
    for node in _runtime_nodes(path):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
      else:
        continue
      if any(n.split(".")[0] == "configs" or ".configs" in n for n in names):
        importers.append(str(path.relative_to(ROOT)))
  assert importers == []

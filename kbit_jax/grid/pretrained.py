"""Where a pretrained grid's sizes come from: `kbit import` workdirs of hub models.

A grid config with a `pretrained` section (configs/grid_pretrained.py) evaluates each size
from the import `pretrained.import_root/<size>` of the hub model `pretrained.repos` names,
instead of training it. Its architecture (shapes, parameter counts, the net) is the one the
import saved, not the table preset of the same name. An import dir that is missing is
listed by the dry run with the `hf download` and `kbit import` commands that create it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Sequence

import ml_collections

from kbit_jax.model import presets

PRETRAINED_KEYS = ("hf_root", "import_root", "repos", "device_gib")  # device_gib: optional
ARCHITECTURE_FILE = "architecture.json"  # convert/importer.py: written last by an import


PRETRAINED_KEYS = ("hf_root", "import_root", "repos", "device_gib")  # device_gib: optional


ARCHITECTURE_FILE = "architecture.json"  # convert/importer.py: written last by an import


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Where a pretrained size comes from: a hub model, downloaded and `kbit import`ed."""

  size: str
  hub_id: str
  import_dir: str  # pretrained.import_root/<size> (absolute)
  hf_dir: str  # pretrained.hf_root/<size>: the download the import reads
  family: str = ""  # from the import's architecture.json
  table_preset: str = ""  # the kbit_jax/model/presets.py entry the import equals, or ""

  @property
  def present(self) -> bool:
    return (pathlib.Path(self.import_dir) / ARCHITECTURE_FILE).exists()

  @property
  def commands(self) -> tuple[str, str]:
    """The download and the import that create `import_dir` (convert/README.md)."""
    return (
      f"hf download {self.hub_id} --local-dir {self.hf_dir} --include '*.json' "
      "'*.safetensors' merges.txt",
      f"kbit import --hf_dir {self.hf_dir} --workdir {self.import_dir}",
    )

  def missing_message(self) -> str:
    return (
      f"grid size {self.size}: its imported model {self.import_dir} "
      f"(pretrained.import_root/{self.size}) is missing (no {ARCHITECTURE_FILE}); "
      f"create it with `{self.commands[1]}` after downloading {self.hub_id} "
      f"(`{self.commands[0]}`)"
    )


def pretrained_sources(
  config: ml_collections.ConfigDict, grid: dict[str, tuple]
) -> dict[str, Pretrained]:
  """{size: Pretrained} of a grid config with a `pretrained` section, else {}."""
  if "pretrained" not in config:
    return {}
  pc = config.pretrained
  for key in PRETRAINED_KEYS[:3]:
    if key not in pc:
      raise ValueError(
        f"pretrained.{key} is missing; the pretrained section needs "
        f"{list(PRETRAINED_KEYS[:3])} (see configs/grid_pretrained.py)"
      )
  unknown = sorted(set(pc.keys()) - set(PRETRAINED_KEYS))
  if unknown:
    raise ValueError(f"pretrained.{unknown[0]} is unknown; allowed: {list(PRETRAINED_KEYS)}")
  try:
    repos = {str(size): str(hub_id) for size, hub_id in pc.repos}
  except (TypeError, ValueError):
    raise ValueError(f"pretrained.repos={pc.repos!r}: allowed: (size, hub id) pairs") from None
  no_repo = [size for size in grid["sizes"] if size not in repos]
  if no_repo:
    raise ValueError(
      f"grid size {no_repo[0]!r} has no pretrained.repos entry; allowed sizes: {list(repos)}"
    )
  if grid["seeds"] != (0,) or grid["tokens"]:
    raise ValueError(
      f"grid.seeds={grid['seeds']!r}, grid.tokens={grid['tokens']!r}: a "
      "pretrained grid evaluates each imported model once; allowed: "
      "seeds (0,) and tokens ()"
    )

  def root(key):
    return pathlib.Path(pc[key]).expanduser().absolute()

  return {
    size: Pretrained(
      size, repos[size], str(root("import_root") / size), str(root("hf_root") / size)
    )
    for size in grid["sizes"]
  }


def read_import(source: Pretrained) -> tuple[presets.Preset, Pretrained]:
  """The architecture an import saved, and `source` with its family and table name."""
  path = pathlib.Path(source.import_dir) / ARCHITECTURE_FILE
  try:
    record = json.loads(path.read_text())
    arch = presets.Preset(**record["architecture"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(
      f"grid size {source.size}: {path} is unreadable ({type(e).__name__}: "
      f"{e}); redo `{source.commands[1]}` into an empty directory"
    ) from None
  return arch, dataclasses.replace(
    source, family=record.get("family", ""), table_preset=record.get("preset", "")
  )


def missing_imports_message(missing: Sequence[Pretrained]) -> str:
  return f"{len(missing)} imported model(s) of the grid are missing:\n  " + "\n  ".join(
    m.missing_message() for m in missing
  )

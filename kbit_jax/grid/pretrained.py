"""Where a pretrained grid's sizes come from: `kbit import` workdirs of hub models.

A grid config with a `pretrained` section (configs/grid_pretrained.py) evaluates each size
from the import `pretrained.import_root/<size>` of the hub model `pretrained.repos` names,
instead of training it. Its architecture (shapes, parameter counts, the net) is the one the
import saved, not the table preset of the same name. An import dir that is missing is
listed by the dry run with the `hf download` and `kbit import` commands that create it.

Training trajectories: `pretrained.revisions` ((size, revision, training tokens) triples,
e.g. Pythia's ("pythia-70m", "step1000", 2_097_152_000)) evaluates a size at each of those
hub revisions instead of its final model, each downloaded (`hf download --revision`) and
imported into its own directory `<root>/<size>-<revision>`; its records carry the revision
and its training tokens D.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Sequence

import ml_collections

from kbit_jax.model import presets

# device_gib and revisions are optional
PRETRAINED_KEYS = ("hf_root", "import_root", "repos", "device_gib", "revisions")
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
  revision: str = ""  # a hub revision (an intermediate checkpoint), "" = the final model
  tokens: int = 0  # training tokens of `revision` (0: not stated, the final model)

  @property
  def name(self) -> str:
    """The grid's model name: the size, with "@<revision>" for a revision."""
    return f"{self.size}@{self.revision}" if self.revision else self.size

  @property
  def present(self) -> bool:
    return (pathlib.Path(self.import_dir) / ARCHITECTURE_FILE).exists()

  @property
  def commands(self) -> tuple[str, str]:
    """The download and the import that create `import_dir` (convert/README.md)."""
    revision = f" --revision {self.revision}" if self.revision else ""
    return (
      f"hf download {self.hub_id}{revision} --local-dir {self.hf_dir} --include '*.json' "
      "'*.safetensors' merges.txt",
      f"kbit import --hf_dir {self.hf_dir} --workdir {self.import_dir}",
    )

  def missing_message(self) -> str:
    where = self.name.replace("@", "-")
    what = f"{self.hub_id} at revision {self.revision}" if self.revision else self.hub_id
    return (
      f"grid size {self.name}: its imported model {self.import_dir} "
      f"(pretrained.import_root/{where}) is missing (no {ARCHITECTURE_FILE}); "
      f"create it with `{self.commands[1]}` after downloading {what} "
      f"(`{self.commands[0]}`)"
    )


def pretrained_sources(
  config: ml_collections.ConfigDict, grid: dict[str, tuple]
) -> dict[str, list[Pretrained]]:
  """{size: [Pretrained, ...]} of a grid config with a `pretrained` section, else {}: one
  per revision of `pretrained.revisions` for the sizes it names, else the final model."""
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

  revisions = _revisions(pc, grid["sizes"])
  out = {}
  for size in grid["sizes"]:
    final = Pretrained(
      size, repos[size], str(root("import_root") / size), str(root("hf_root") / size)
    )
    out[size] = [
      dataclasses.replace(
        final,
        import_dir=f"{final.import_dir}-{revision}",
        hf_dir=f"{final.hf_dir}-{revision}",
        revision=revision,
        tokens=tokens,
      )
      for revision, tokens in revisions.get(size, ())
    ] or [final]
  return out


def _revisions(pc: ml_collections.ConfigDict, sizes: tuple) -> dict[str, list[tuple[str, int]]]:
  """pretrained.revisions as {size: [(revision, tokens), ...]}, validated."""
  out: dict[str, list[tuple[str, int]]] = {}
  for entry in pc.get("revisions", ()) or ():
    try:
      size, revision, tokens = entry
    except (TypeError, ValueError):
      raise ValueError(
        f"pretrained.revisions entry {entry!r}: allowed: (size, revision, training "
        "tokens) triples, e.g. ('pythia-70m', 'step1000', 2097152000)"
      ) from None
    if size not in sizes:
      raise ValueError(
        f"pretrained.revisions entry {entry!r}: size {size!r} is not a grid size; "
        f"allowed: {list(sizes)}"
      )
    if not isinstance(revision, str) or not revision or "/" in revision:
      raise ValueError(
        f"pretrained.revisions entry {entry!r}: the revision must be a hub revision "
        "name such as 'step1000'"
      )
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
      raise ValueError(
        f"pretrained.revisions entry {entry!r}: training tokens {tokens!r} must be an int >= 1"
      )
    if revision in dict(out.get(size, [])):
      raise ValueError(f"pretrained.revisions repeats {size} {revision}")
    out.setdefault(size, []).append((revision, tokens))
  return out


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

"""Import a local Hugging Face checkpoint as a kbit-jax model: preset + sharded params.

    kbit import --hf_dir ~/hf/opt-125m --workdir ~/kbit/pretrained/opt-125m
    preset, params = importer.load_imported(workdir, mesh, rules)     # later, to evaluate

The output workdir:

    checkpoints/0/      Orbax, as checkpoint.py writes it: state = {"params": ...}, step 0,
                        so `Checkpointer(workdir, 1).restore_params(abstract, step=0)` works
    architecture.json   the Preset's fields, the name of the preset they equal (or ""),
                        the family, the source directory and the parameter counts
    tokenizer/          the source's tokenizer files (`convert.tokenizer` reads them)

Everything that can be checked is checked before any tensor data is read: config.json ->
family -> Preset (families.py), then every checkpoint tensor's name, shape and dtype
against the family's rules (missing, unexpected, wrong shape, non-float). Each tensor is
then read memory-mapped, transformed (transposed, split) and placed shard by shard with
`jax.make_array_from_callback` in the sharding its logical axes get on the mesh: a host
holds one source tensor's mapping and the float32 copies of its own shards, never the
whole model. Params are float32, as the model's. The output is written to a hidden
sibling directory and renamed into place only when complete; on any error nothing is
left at the workdir.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

from kbit_jax.convert import families, reader
from kbit_jax.model import presets, transformer
from kbit_jax.train import checkpoint, sharding

ARCHITECTURE_FILE = "architecture.json"
TOKENIZER_DIR = "tokenizer"
STEP = 0
TOKENIZER_FILES = (
  "tokenizer.json",
  "vocab.json",
  "merges.txt",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "config.json",
)
MAX_LISTED = 8  # names shown in an error about missing or unexpected tensors


@dataclasses.dataclass
class ImportPlan:
  """A validated source: what to read, what it becomes. No tensor data read yet."""

  hf_dir: pathlib.Path
  family: families.Family
  preset: presets.Preset
  name: str  # the preset it equals, or ""
  checkpoint: reader.Checkpoint
  tensors: list[tuple[str, families.Rule]]  # (checkpoint name, rule)


def read_config(hf_dir: str | pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(hf_dir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(
      f"{path} is missing: --hf_dir must be a Hugging Face model directory (config.json + weights)"
    )
  cfg = json.loads(path.read_text())
  if cfg.get("quantization_config"):
    method = cfg["quantization_config"].get("quant_method", "?")
    raise ValueError(
      f"config.json has quantization_config (quant_method={method!r}); "
      "import the unquantized 16/32-bit checkpoint"
    )
  return cfg


def preset_name(p: presets.Preset) -> str:
  """The name of the table entry equal to `p`, or ""."""
  return next((name for name, q in presets.PRESETS.items() if q == p), "")


def _listed(names: list[str]) -> str:
  more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
  return ", ".join(names[:MAX_LISTED]) + more


def _prefix(family: families.Family, rules: list[families.Rule], names: set[str]) -> str:
  first = rules[0].source
  for prefix in family.prefixes:
    if prefix + first in names:
      return prefix
  candidates = " or ".join(p + first for p in family.prefixes)
  raise ValueError(
    f"the checkpoint has no tensor {candidates}; is it a {family.name} "
    f"checkpoint? Its first tensors: {_listed(sorted(names))}"
  )


def check_tensors(
  family: families.Family, p: presets.Preset, ckpt: reader.Checkpoint
) -> list[tuple[str, families.Rule]]:
  """(checkpoint name, rule) for every rule; raises naming missing, unexpected,
  mis-shaped or non-float tensors."""
  rules = family.rules(p)
  names = set(ckpt.info)
  prefix = _prefix(family, rules, names)
  head = next((h for h in family.heads if h in names), family.heads[0])

  def full(r):
    return head if r.source in family.heads else prefix + r.source

  expected = {full(r): r for r in rules}
  missing = [n for n in expected if n not in names]
  if missing:
    raise ValueError(
      f"the checkpoint lacks {len(missing)} tensor(s) config.json implies: {_listed(missing)}"
    )
  known = set(expected)
  if p.tie_embeddings:  # some checkpoints store the tied head too; it is the embedding
    known.add(head)
  extra = sorted(
    n for n in names - known if not families.is_ignored(family, n.removeprefix(prefix))
  )
  if extra:
    raise ValueError(
      f"the checkpoint has {len(extra)} tensor(s) a {family.name} model "
      f"with this config.json does not: {_listed(extra)}"
    )
  for name, rule in expected.items():
    info = ckpt.info[name]
    if info.shape != rule.shape:
      raise ValueError(
        f"tensor {name!r}: expected shape {rule.shape} (from config.json), found {info.shape}"
      )
    if info.dtype not in reader.FLOAT_DTYPES:
      raise ValueError(
        f"tensor {name!r} has dtype {info.dtype}; allowed: "
        f"{list(reader.FLOAT_DTYPES)} (quantized checkpoints cannot be "
        "imported; use the 16/32-bit one)"
      )
  return list(expected.items())


def plan_import(hf_dir: str | pathlib.Path) -> ImportPlan:
  """Reads config.json and the checkpoint's tensor index and checks them; no data."""
  hf_dir = pathlib.Path(hf_dir)
  cfg = read_config(hf_dir)
  family = families.family_of(cfg)
  p = family.preset_from_config(cfg)
  ckpt = reader.open_checkpoint(hf_dir)
  tensors = check_tensors(family, p, ckpt)
  targets = {path for _, rule in tensors for path, _ in rule.targets}
  ours = set(traverse_util.flatten_dict(abstract_params(p)))
  if targets != ours:  # a family's rules out of step with transformer.py: a bug, not bad input
    raise RuntimeError(
      f"{family.name} rules and transformer.py disagree: rules only "
      f"{sorted(targets - ours)}, model only {sorted(ours - targets)}"
    )
  return ImportPlan(hf_dir, family, p, preset_name(p), ckpt, tensors)


# ----------------------------------------------------------------------------- loading


def _boxed_params(p: presets.Preset) -> Any:
  net = transformer.Transformer(p)
  return jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]


def abstract_params(
  p: presets.Preset, mesh: jax.sharding.Mesh | None = None, rules: tuple | None = None
) -> Any:
  """ShapeDtypeStructs of the model's params; with their shardings when a mesh is given."""
  boxed = _boxed_params(p)
  shapes = nn.unbox(boxed)
  if mesh is None:
    return shapes
  shardings = sharding.state_shardings(boxed, mesh, rules)
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )


def import_mesh(p: presets.Preset, devices=None) -> tuple[jax.sharding.Mesh, tuple]:
  """All devices on `fsdp` (as far as d_model divides), Megatron rules: every weight
  matrix split over the devices while loading."""
  devices = jax.devices() if devices is None else devices
  fsdp = math.gcd(len(devices), p.d_model, p.token_dim)
  mesh_cfg = ml_collections.ConfigDict(dict(data=len(devices) // fsdp, fsdp=fsdp, tensor=1))
  return sharding.make_mesh(mesh_cfg, devices), sharding.RULE_SETS["megatron"]


def _placed(value: np.ndarray, target: jax.ShapeDtypeStruct, path: tuple[str, ...]) -> jax.Array:
  if value.shape != target.shape:  # rules were shape-checked: a bug, not bad input
    raise RuntimeError(
      f"{'/'.join(path)}: the transform gave {value.shape}, the model expects {target.shape}"
    )
  return jax.make_array_from_callback(
    target.shape, target.sharding, lambda index: np.asarray(value[index], target.dtype)
  )


def load_params(
  plan: ImportPlan, mesh: jax.sharding.Mesh, rules: tuple, verbose: bool = True
) -> Any:
  """The plan's tensors as our params, each array built in its sharding on `mesh`."""
  targets = traverse_util.flatten_dict(abstract_params(plan.preset, mesh, rules))
  out = {}
  total = sum(math.prod(r.shape) for _, r in plan.tensors)
  done, next_report, t0 = 0, 0.1, time.perf_counter()
  for i, (name, rule) in enumerate(plan.tensors):
    source = plan.checkpoint.array(name)
    for path, transform in rule.targets:
      out[path] = _placed(transform(source), targets[path], path)
    del source
    done += math.prod(rule.shape)
    if verbose and done >= next_report * total:
      share, elapsed = done / total, time.perf_counter() - t0
      print(
        f"import: {share:4.0%} of {total:,} parameters ({i + 1}/{len(plan.tensors)} "
        f"tensors) in {elapsed:.0f}s, eta {elapsed * (1 - share) / share:.0f}s",
        flush=True,
      )
      next_report = math.floor(share * 10 + 1e-9) / 10 + 0.1
  return traverse_util.unflatten_dict(out)


def load_hf(
  hf_dir: str | pathlib.Path,
  mesh: jax.sharding.Mesh | None = None,
  rules: tuple | None = None,
  verbose: bool = False,
) -> tuple[presets.Preset, Any]:
  """(preset, params) of a Hugging Face directory, params sharded on `mesh` (default:
  `import_mesh`). Nothing is written."""
  plan = plan_import(hf_dir)
  if mesh is None:
    mesh, rules = import_mesh(plan.preset)
  return plan.preset, load_params(plan, mesh, rules, verbose)


# ----------------------------------------------------------------------------- saving


def _check_empty(workdir: pathlib.Path) -> None:
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise FileExistsError(
      f"--workdir {workdir} exists and is not empty; an import writes "
      "a new directory (remove it or pick another)"
    )


def architecture_record(plan: ImportPlan) -> dict[str, Any]:
  return dict(
    preset=plan.name,
    family=plan.family.name,
    hf_dir=str(plan.hf_dir.resolve()),
    architecture=dataclasses.asdict(plan.preset),
    params=presets.param_counts(plan.preset),
    source_dtypes=sorted({plan.checkpoint.info[n].dtype for n, _ in plan.tensors}),
    tokenizer_files=[f for f in TOKENIZER_FILES if (plan.hf_dir / f).exists()],
  )


def _write(plan: ImportPlan, params: Any, directory: pathlib.Path) -> None:
  config = ml_collections.ConfigDict(
    dict(
      model=dict(preset=plan.name, dtype="float32"),
      source=dict(hf_dir=str(plan.hf_dir.resolve()), family=plan.family.name),
    )
  )
  ckpt = checkpoint.Checkpointer(str(directory), keep=1)
  ckpt.save(STEP, {"params": params}, {}, config)
  ckpt.wait()
  ckpt.close()
  if jax.process_index() == 0:
    (directory / ARCHITECTURE_FILE).write_text(
      json.dumps(architecture_record(plan), indent=2) + "\n"
    )
    (directory / TOKENIZER_DIR).mkdir()
    for f in architecture_record(plan)["tokenizer_files"]:
      shutil.copy2(plan.hf_dir / f, directory / TOKENIZER_DIR / f)


def import_hf(
  hf_dir: str | pathlib.Path,
  workdir: str | pathlib.Path,
  mesh: jax.sharding.Mesh | None = None,
  rules: tuple | None = None,
  verbose: bool = True,
) -> dict[str, Any]:
  """Validates, loads (sharded) and saves; returns architecture.json's record. Writes
  into a hidden sibling of `workdir` and renames it into place only on success."""
  workdir = pathlib.Path(workdir).absolute()
  _check_empty(workdir)
  plan = plan_import(hf_dir)
  if mesh is None:
    mesh, rules = import_mesh(plan.preset)
  params = load_params(plan, mesh, rules, verbose)
  staging = workdir.parent / f".{workdir.name}.importing"
  if jax.process_index() == 0 and staging.exists():
    shutil.rmtree(staging)  # left by an import that was killed
  multihost_utils.sync_global_devices("kbit import: staging cleared")
  try:
    _write(plan, params, staging)
    multihost_utils.sync_global_devices("kbit import: written")
    if jax.process_index() == 0:
      _check_empty(workdir)
      if workdir.exists():
        workdir.rmdir()
      staging.rename(workdir)
  except BaseException:
    if jax.process_index() == 0:
      shutil.rmtree(staging, ignore_errors=True)
    raise
  return architecture_record(plan)


def import_main(hf_dir: str, workdir: str) -> dict[str, Any]:
  """`kbit import --hf_dir DIR --workdir OUT`: imports and prints what was written."""
  record = import_hf(hf_dir, workdir)
  counts = record["params"]
  print(
    f"imported {record['family']} from {hf_dir} as preset "
    f"{record['preset'] or '(no table entry; see architecture.json)'}: "
    f"{counts['total']:,} parameters ({counts['non_embedding']:,} non-embedding), "
    f"stored {'/'.join(record['source_dtypes'])} -> float32",
    flush=True,
  )
  print(
    f"wrote {workdir}: checkpoints/{STEP} (Orbax), {ARCHITECTURE_FILE}, "
    f"{TOKENIZER_DIR}/ ({', '.join(record['tokenizer_files']) or 'empty'})",
    flush=True,
  )
  if not {"tokenizer.json", "vocab.json"} & set(record["tokenizer_files"]):
    print(
      f"WARNING: {hf_dir} has no tokenizer.json or vocab.json + merges.txt; evaluation "
      "needs the model's tokenizer",
      flush=True,
    )
  return record


# ----------------------------------------------------------------------------- reading back


def read_architecture(workdir: str | pathlib.Path) -> presets.Preset:
  """The Preset an import saved (no HF directory needed)."""
  path = pathlib.Path(workdir) / ARCHITECTURE_FILE
  if not path.exists():
    raise FileNotFoundError(
      f"{path} is missing: {workdir} is not an imported model (kbit import writes it)"
    )
  return presets.Preset(**json.loads(path.read_text())["architecture"])


def load_imported(
  workdir: str | pathlib.Path, mesh: jax.sharding.Mesh | None = None, rules: tuple | None = None
) -> tuple[presets.Preset, Any]:
  """(preset, params) of an imported workdir, params restored in `mesh`'s shardings."""
  p = read_architecture(workdir)
  if mesh is None:
    mesh, rules = import_mesh(p)
  ckpt = checkpoint.Checkpointer(str(workdir), keep=1, read_only=True)
  try:
    return p, ckpt.restore_params(abstract_params(p, mesh, rules), step=STEP)
  finally:
    ckpt.close()

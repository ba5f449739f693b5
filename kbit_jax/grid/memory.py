"""Memory per device of a plan's models, what `kbit grid --dry_run` prints last.

Per architecture: GiB of parameters per device on the config's mesh (fsdp x tensor
devices share them evenly; data-parallel devices hold copies; small replicated norms are
ignored) as float32 (how the grid and imports hold them), as 16-bit, and at each k < 16
of the grid (its first data type and block size, its targets; codes + block constants,
the rest 16-bit: what a k-bit deployment holds). The grid evaluates by fake
quantization, so a cell holds the float32 params and a float32 quantized copy; training
holds the float32 params, their gradients and AdamW's two moments. Activations are not
included in either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_collections

from kbit_jax.model import presets
from kbit_jax.quant import bits as quant_bits
from kbit_jax.quant.spec import QuantSpec

if TYPE_CHECKING:
  from kbit_jax.grid.plan import Plan

GIB = 2**30
TRAIN_COPIES = 4  # params, gradients, AdamW mu and nu, all float32


def memory_rows(
  config: ml_collections.ConfigDict, architectures: dict[str, presets.Preset]
) -> list[dict]:
  """One row per (name, architecture): params, devices and GiB per device (keys f32,
  b16, k<k> for every k < 16 of config.grid.bits)."""
  g, mesh = config.grid, config.base.mesh
  devices = mesh.fsdp * mesh.tensor
  rows = []
  for name, arch in architectures.items():
    shapes = quant_bits.preset_shapes(arch)
    params = presets.param_counts(arch)["total"]
    row = dict(size=name, params=params, devices=devices)
    row["f32"] = 4 * params / devices / GIB
    row["b16"] = 2 * params / devices / GIB
    for k in (k for k in g.bits if k < 16):
      spec = QuantSpec(bits=k, dtype=g.dtypes[0], blocksize=g.blocksizes[0], targets=g.targets)
      row[f"k{k}"] = quant_bits.bits_report(shapes, spec)["total_bits"] / 8 / devices / GIB
    rows.append(row)
  return rows


def format_memory(
  config: ml_collections.ConfigDict,
  rows: list[dict],
  device_gib: float = 0.0,
  trained: bool = False,
) -> str:
  """The rows as a table; `device_gib` adds whether the grid's evaluation fits (else
  whether the 16-bit model would), `trained` the training state per device."""
  import pandas as pd

  g, mesh = config.grid, config.base.mesh
  devices = mesh.fsdp * mesh.tensor
  ks = [k for k in g.bits if k < 16]
  table = pd.DataFrame(rows).drop(columns="devices")
  # Tiny CPU presets in MiB, real models in GiB; the fit test is in GiB either way.
  unit, scale = ("GiB", 1) if table["f32"].max() >= 0.1 else ("MiB", 1024)
  size_columns = ["f32", "b16", *[f"k{k}" for k in ks]]
  table[size_columns] *= scale
  table.columns = ["size", "params", f"f32 {unit}", "16-bit", *[f"k={k}" for k in ks]]
  table["grid eval"] = 2 * table[f"f32 {unit}"]
  if trained:
    table["train"] = TRAIN_COPIES * table[f"f32 {unit}"]
  if device_gib:
    needed = table["train"].combine(table["grid eval"], max) if trained else table["grid eval"]
    table[f"fits {device_gib:g}"] = [
      "yes" if e / scale <= device_gib else "16-bit" if b / scale <= device_gib else "no"
      for e, b in zip(needed, table["16-bit"])
    ]
  title = (
    f"memory: {unit} of parameters per device on fsdp={mesh.fsdp} x tensor={mesh.tensor} = "
    f"{devices} device{'s' if devices > 1 else ''}; "
    + (
      f"k-bit: dtype={g.dtypes[0]}, B={g.blocksizes[0]}, targets={g.targets}, other "
      "tensors 16-bit; "
      if ks
      else ""
    )
    + "grid eval = float32 params + float32 fake-quantized copy"
    + ("; train = float32 params, grads and AdamW's 2 moments" if trained else "")
    + " (activations not included)"
  )
  return (
    title
    + "\n"
    + table.to_string(
      index=False, float_format="{:.2f}".format, formatters={"params": "{:,}".format}
    )
  )


def plan_memory(plan: Plan) -> str:
  """The table for a plan's distinct architectures (a model's checkpoints along
  training share its row); imports that are missing use their table preset."""
  architectures, trained = {}, False
  for run in plan.models:
    name = run.pretrained.name if run.pretrained else run.preset
    architectures.setdefault(name, run.architecture)
    trained = trained or not run.pretrained
  device_gib = plan.config.get("pretrained", {}).get("device_gib", 0.0)
  rows = memory_rows(plan.config, architectures)
  return format_memory(plan.config, rows, device_gib=device_gib, trained=trained)

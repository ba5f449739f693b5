"""Ahead-of-time fit check: compile a config's train step for a target mesh from a CPU.

    kbit compile_check --config configs/lm.py:size=1b,dtype=bfloat16,batch=256 \
        --topology v5e-16 [--config.mesh.fsdp=16]

Builds `--topology`'s number of fake CPU devices (or `--num_devices`), lowers and compiles
the real jitted train step against `jax.eval_shape` state (nothing is allocated), and
reports per-device memory from XLA's memory analysis next to the target's HBM. As with
MaxText's train_compile, parameters, optimizer state and batch sharding are exactly
those of the target; temporaries come from the XLA CPU compiler, so treat them as an
estimate (the TPU compiler fuses and rematerialises differently). Compiling for a real
TPU topology needs libtpu, which this CPU path does not.
"""

from __future__ import annotations

import os

# chips per slice and HBM per chip (GiB) of common targets
TOPOLOGIES = {
  "v4-8": (4, 32),
  "v4-16": (8, 32),
  "v4-32": (16, 32),
  "v4-64": (32, 32),
  "v5e-1": (1, 16),
  "v5e-4": (4, 16),
  "v5e-8": (8, 16),
  "v5e-16": (16, 16),
  "v5e-32": (32, 16),
  "v5e-64": (64, 16),
  "v5e-256": (256, 16),
  "v5p-8": (4, 95),
  "v5p-16": (8, 95),
  "v5p-32": (16, 95),
  "v6e-1": (1, 32),
  "v6e-4": (4, 32),
  "v6e-8": (8, 32),
  "v6e-16": (16, 32),
  "h100-1": (1, 80),
  "h100-8": (8, 80),
  "h200-1": (1, 141),
}


def target(topology: str, num_devices: int) -> tuple[int, float | None]:
  if num_devices > 0:
    return num_devices, None
  if topology not in TOPOLOGIES:
    raise ValueError(
      f"--topology={topology!r} is unknown; allowed: {sorted(TOPOLOGIES)} (or give --num_devices)"
    )
  return TOPOLOGIES[topology]


def fake_devices(n: int) -> None:
  """Must run before jax creates its CPU backend."""
  flags = os.environ.get("XLA_FLAGS", "")
  flags = " ".join(f for f in flags.split() if "xla_force_host_platform_device_count" not in f)
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
  os.environ["JAX_PLATFORMS"] = "cpu"


def compile_check(config, num_devices: int, hbm_gib: float | None) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from kbit_jax.config import checks
  from kbit_jax.model import flops, presets
  from kbit_jax.train import loop, sharding

  if jax.device_count() != num_devices:
    raise RuntimeError(
      f"jax already has {jax.device_count()} devices; compile_check must "
      "set the device count before jax starts (run it as its own process)"
    )
  checks.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  checks.validate_for_devices(config, mesh)
  trainer = loop.Trainer(config, mesh)
  batch = jax.ShapeDtypeStruct(
    (config.train.batch_size, config.data.seq_len),
    jnp.int32,
    sharding=sharding.batch_sharding(mesh),
  )
  state = trainer.abstract_state()  # unboxed outside the mesh context: no constraints
  with jax.set_mesh(mesh), nn.logical_axis_rules(trainer.rules):
    compiled = trainer._train_step.lower(state, {"inputs": batch, "targets": batch}).compile()
  mem = compiled.memory_analysis()
  per_device = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    - mem.alias_size_in_bytes
    + mem.temp_size_in_bytes
  )
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  p = presets.get_preset(config.model.preset)
  report = dict(
    preset=config.model.preset,
    params=presets.param_counts(p)["total"],
    mesh=dict(mesh.shape),
    devices=num_devices,
    arguments_gib=mem.argument_size_in_bytes / 2**30,
    temporaries_gib=mem.temp_size_in_bytes / 2**30,
    per_device_gib=per_device / 2**30,
    hbm_gib=hbm_gib,
    flops_per_step=float(cost.get("flops", 0.0)) if cost else 0.0,
    model_flops_per_step=flops.flops_per_token(p, config.data.seq_len)
    * config.train.batch_size
    * config.data.seq_len
    / num_devices,
    scan_layers=config.model.scan_layers,
  )
  report["fits"] = None if hbm_gib is None else report["per_device_gib"] <= 0.9 * hbm_gib
  return report


def format_report(r: dict) -> str:
  verdict = (
    ""
    if r["fits"] is None
    else f"  -> {'fits' if r['fits'] else 'does NOT fit'} in {r['hbm_gib']} GiB HBM "
    "(with 10% headroom)"
  )
  return (
    f"{r['preset']} ({r['params']:,} params) on {r['devices']} devices, mesh "
    f"{r['mesh']}: per device {r['per_device_gib']:.3f} GiB (state + batch "
    f"{r['arguments_gib']:.3f} GiB, temporaries {r['temporaries_gib']:.3f} GiB); "
    f"{r['model_flops_per_step'] / 1e12:.3g} TFLOP per device per step (model count; "
    f"XLA's {r['flops_per_step'] / 1e12:.3g}"
    f"{', the scanned layers counted once' if r['scan_layers'] else ''}){verdict}"
  )


def main(config, topology: str, num_devices: int) -> dict:
  """`kbit compile_check`: fake devices for the target, compile, print the report."""
  num_devices, hbm_gib = target(topology, num_devices)
  fake_devices(num_devices)  # before jax starts its CPU backend
  report = compile_check(config, num_devices, hbm_gib)
  print(format_report(report))
  return report

"""Sharding: mesh from config, params placed by the logical rules, gradients correct."""

import dataclasses

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from kbit_jax.config import defaults
from kbit_jax.model import presets
from kbit_jax.train import loop, sharding

# Grouped-query attention + SwiGLU with every Llama-family switch on the (2, 2, 2) mesh:
# 1 key/value head for 4 query heads (fewer than the tensor axis's 2: replicated), head
# width 24 (query 96 wide, d_model 64), q/k/v biases (Qwen2), q/k RMSNorm (Qwen3), Llama
# 3's rope scaling, Gemma's 1 + w norm and embedding scale. d_ff 256 (l2 has 281, which
# tensor=2 cannot split).
GQA = "test-gqa-swiglu"
GQA_PRESET = dataclasses.replace(
  presets.PRESETS["l2"],
  d_ff=256,
  kv_heads=1,
  head_width=24,
  qkv_bias=True,
  qk_norm=True,
  rope_type="llama3",
  rope_factor=8.0,
  rope_original_max_len=16,
  norm_plus_one=True,
  embed_scale=True,
)


@pytest.fixture(autouse=True)
def _gqa_preset(monkeypatch):
  monkeypatch.setitem(presets.PRESETS, GQA, GQA_PRESET)


def _mesh_cfg(data=-1, fsdp=1, tensor=1, rules="megatron"):
  return ml_collections.ConfigDict(
    dict(data=data, fsdp=fsdp, tensor=tensor, rules=rules, distributed=False)
  )


def _config(rules="megatron", scan_layers=False, preset="s2"):
  c = defaults.base_config()
  c.model.preset = preset
  c.model.scan_layers = scan_layers
  c.mesh.fsdp, c.mesh.tensor, c.mesh.rules = 2, 2, rules
  c.data.seq_len = 16
  return c


def test_mesh_shape_fills_and_rejects():
  assert sharding.mesh_shape(_mesh_cfg(fsdp=2, tensor=2), 8) == (2, 2, 2)
  assert sharding.mesh_shape(_mesh_cfg(data=1, fsdp=-1, tensor=4), 8) == (1, 2, 4)
  with pytest.raises(ValueError, match=r"data\*fsdp\*tensor = 2\*2\*1 = 4 != 8 devices"):
    sharding.mesh_shape(_mesh_cfg(data=2, fsdp=2, tensor=1), 8)
  with pytest.raises(ValueError, match="does not divide"):
    sharding.mesh_shape(_mesh_cfg(fsdp=3), 8)
  with pytest.raises(ValueError, match="mesh.rules='zero'.*allowed"):
    sharding.logical_rules(_mesh_cfg(rules="zero"))


def test_params_are_sharded_by_the_logical_rules():
  config = _config()
  mesh = sharding.make_mesh(config.mesh)
  trainer = loop.Trainer(config, mesh)
  state = trainer.init()

  def spec(a):
    return tuple(a.sharding.spec)

  layer = state.params["layer_0"]
  assert spec(layer["mlp"]["wi"]["kernel"]) == ("fsdp", "tensor")
  assert spec(layer["mlp"]["wo"]["kernel"]) == ("tensor", "fsdp")
  assert spec(layer["attn"]["query"]["kernel"]) == ("fsdp", "tensor")
  assert spec(state.params["embed"]["embedding"]) == ("tensor", "fsdp")
  # Each device holds a quarter of wi: (64/2) x (256/2).
  shard = layer["mlp"]["wi"]["kernel"].addressable_shards[0].data
  assert shard.shape == (32, 128)
  # Adam's moments follow their parameters.
  mu = state.opt_state[1][0].mu["layer_0"]["mlp"]["wi"]["kernel"]
  assert mu.sharding == layer["mlp"]["wi"]["kernel"].sharding


def test_scanned_layers_are_sharded_like_unrolled_ones():
  """model.scan_layers: the same logical rules, with an unsharded layer axis in front."""
  state = loop.Trainer(_config(scan_layers=True), sharding.make_mesh(_config().mesh)).init()
  block = state.params["layers"]["block"]
  wi = block["mlp"]["wi"]["kernel"]
  assert wi.shape == (2, 64, 256) and tuple(wi.sharding.spec) == (None, "fsdp", "tensor")
  assert tuple(block["mlp"]["wo"]["kernel"].sharding.spec) == (None, "tensor", "fsdp")
  assert "layer_0" not in state.params


def test_grouped_query_key_value_are_replicated_over_tensor():
  """kv_heads (1) < tensor (2): key/value kernels split over fsdp only (sharding.py)."""
  state = loop.Trainer(_config(preset=GQA), sharding.make_mesh(_config().mesh)).init()
  attn = state.params["layer_0"]["attn"]
  assert attn["key"]["kernel"].shape == (64, 24) and attn["query"]["kernel"].shape == (64, 96)
  assert tuple(attn["key"]["kernel"].sharding.spec) == ("fsdp", None)
  assert tuple(attn["value"]["bias"].sharding.spec) == (None,)
  assert tuple(attn["query"]["kernel"].sharding.spec) == ("fsdp", "tensor")
  assert tuple(attn["out"]["kernel"].sharding.spec) == ("tensor", "fsdp")
  mlp = state.params["layer_0"]["mlp"]
  assert tuple(mlp["gate"]["kernel"].sharding.spec) == ("fsdp", "tensor")
  assert tuple(mlp["wo"]["kernel"].sharding.spec) == ("tensor", "fsdp")


@pytest.mark.parametrize("preset", ["s2", GQA])
@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("rules", sorted(sharding.RULE_SETS))
def test_sharded_gradients_match_single_device(rules, scan_layers, preset):
  """The same loss and gradients on a (2, 2, 2) mesh as on one device, with the layers
  unrolled or scanned (model.scan_layers), for the GPT-style s2 and the GQA + SwiGLU
  model above.

  Tolerance 1e-4: f32 sums reordered across shards differ by ~1e-6 relative; the XLA CPU
  bug this guards against gives errors of 60-80%.
  """
  config = _config(rules, scan_layers, preset)
  mesh = sharding.make_mesh(config.mesh)
  trainer = loop.Trainer(config, mesh)
  state = trainer.init()
  rng = np.random.default_rng(0)
  batch = {
    "inputs": rng.integers(0, 4096, (8, 16), dtype=np.int32),
    "targets": rng.integers(0, 4096, (8, 16), dtype=np.int32),
  }

  def loss_fn(params, batch):
    logits = trainer.net.apply({"params": params}, batch["inputs"])
    return loop.mean_nll(logits, batch["targets"])

  grad_fn = jax.jit(jax.value_and_grad(loss_fn))
  with jax.set_mesh(mesh), nn.logical_axis_rules(trainer.rules):
    loss, grads = grad_fn(state.params, sharding.global_batch(batch, mesh))
  params_1 = jax.device_put(jax.device_get(state.params), jax.devices()[0])
  loss_1, grads_1 = grad_fn(params_1, batch)
  np.testing.assert_allclose(loss, loss_1, rtol=1e-6)
  # The key bias's true gradient is exactly 0 (softmax ignores a per-row constant), so
  # errors are relative to max(|this gradient|, 1e-3 * the largest gradient anywhere).
  floor = 1e-3 * max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(grads_1))
  for (path, g), g1 in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_1)):
    g, g1 = np.asarray(g), np.asarray(g1)
    err = np.abs(g - g1).max() / max(np.abs(g1).max(), floor)
    assert err < 1e-4, f"{jax.tree_util.keystr(path)}: relative gradient error {err:.2e}"

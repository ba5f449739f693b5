"""Bad configs fail before anything compiles, naming the key, the value and what is allowed."""

import pathlib
import subprocess
import sys

import pytest

from kbit_jax.config import checks, files
from kbit_jax.train import sharding

lm = files.load_module(pathlib.Path(__file__).resolve().parents[1] / "configs" / "lm.py")


def config_with(**overrides):
  c = lm.get_config("runlocal")
  for dotted, value in overrides.items():
    section, key = dotted.split("__")
    c[section][key] = value
  return c


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(model__preset="s99"), r"model.preset='s99' is unknown; allowed: \[.*'s0'"),
    (dict(train__steps=0), r"train.steps=0 must be > 0"),
    (dict(train__steps=-5), r"train.steps=-5 must be > 0"),
    (dict(train__lr=0.0), r"train.lr=0.0 must be > 0"),
    (dict(train__lr=-1e-3), r"train.lr=-0.001 must be > 0"),
    (dict(model__dtype="float8"), r"model.dtype='float8' is unknown; allowed"),
    (dict(model__attention="flash"), r"model.attention='flash' is unknown; allowed: \('einsum'"),
    (dict(model__attention="cudnn"), r"model.attention='cudnn' needs model.dtype bfloat16"),
    (dict(mesh__rules="zero3"), r"mesh.rules='zero3' is unknown; allowed: \['fsdp', 'megatron'"),
    (
      dict(data__seq_len=4096),
      r"data.seq_len=4096 exceeds model.preset='s0'.s learned positions \(max_len=512\)",
    ),
    (dict(quant__bits=9), r"quant.bits=9"),
    (dict(quant__dtype="posit"), r"quant.dtype='posit'"),
  ],
)
def test_bad_values_are_named(overrides, message):
  with pytest.raises(ValueError, match=message):
    checks.validate(config_with(**overrides))


def test_unknown_key_is_named():
  c = lm.get_config("runlocal")
  c.unlock()
  c.train.stepz = 3
  with pytest.raises(
    ValueError,
    match=r"config key 'train.stepz' is unknown; allowed under "
    r"train: \[.*'steps'",
  ):
    checks.validate(c)


def test_heads_must_divide_d_model(monkeypatch):
  from kbit_jax.model import presets

  bad = presets.Preset(2, 30, 4, 64, vocab_size=4096, max_len=64)
  monkeypatch.setitem(presets.PRESETS, "bad", bad)
  with pytest.raises(ValueError, match="num_heads=4 does not divide d_model=30"):
    checks.validate(config_with(model__preset="bad"))


def test_mesh_product_must_equal_device_count():
  with pytest.raises(ValueError, match=r"2\*2\*1 = 4 != 8 devices"):
    sharding.make_mesh(config_with(mesh__data=2, mesh__fsdp=2).mesh)


def test_batch_must_divide_over_data_axes():
  c = config_with(train__batch_size=12)
  mesh = sharding.make_mesh(c.mesh)  # data=8
  with pytest.raises(
    ValueError,
    match=r"train.batch_size=12 is not divisible by the mesh's "
    r"data\*fsdp=8",
  ):
    checks.validate_for_devices(c, mesh)


def test_config_argument_errors():
  with pytest.raises(ValueError, match=r"config argument 'sise' is unknown; allowed: \[.*'size'"):
    lm.get_config("sise=s3")
  with pytest.raises(ValueError, match=r"config argument steps='many' is not a int"):
    lm.get_config("steps=many")


def test_cli_reports_bad_config_before_compiling(tmp_path):
  """Through the real command line: exits non-zero with the message, writes nothing."""
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "kbit_jax.main",
      "train",
      "--config",
      "configs/lm.py:runlocal",
      "--config.train.steps=0",
      "--workdir",
      str(tmp_path / "w"),
    ],
    capture_output=True,
    text=True,
    cwd=str(__import__("pathlib").Path(__file__).parents[1]),
  )
  assert out.returncode != 0
  assert "train.steps=0 must be > 0" in out.stderr
  assert not (tmp_path / "w").exists()

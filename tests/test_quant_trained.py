"""A trained tiny model quantized at k = 2..8 for every data type: validation loss orders
by k, and the AQT path equals the reference path on the trained weights."""

import pathlib

import jax
import numpy as np
import pytest

from kbit_jax.config import files
from kbit_jax.quant import aqt, codebooks, reference
from kbit_jax.quant.spec import QuantSpec
from kbit_jax.train import data, loop, sharding

lm = files.load_module(pathlib.Path(__file__).resolve().parents[1] / "configs" / "lm.py")


KS = (2, 3, 4, 5, 6, 7, 8)
# Loss may rise by at most this much (nats) from k to k+1: at 6-8 bits quantization
# noise is ~1e-4 nats and can go either way; a broken codebook or scale costs > 0.1.
TOL = 0.01


@pytest.fixture(scope="module")
def trained():
  config = lm.get_config("size=s1,steps=150,batch=16,seq_len=64,lr=3e-3")
  config.mesh.data = 1
  config.train.warmup_steps = 15
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  trainer = loop.Trainer(config, mesh)
  state = trainer.init()
  it = data.make_train_iterator(config.data, 16, 0, 0, 1)
  for _ in range(config.train.steps):
    state, _ = trainer.step(state, next(it))
  batches = data.eval_batches(config.data, "validation", 16, 4)
  return trainer, state.params, batches


def test_validation_loss_orders_by_bits_for_every_dtype(trained):
  trainer, params, batches = trained
  loss16 = trainer.evaluate(params, batches)
  assert loss16 < 6.0, "the model must have learned something for the ordering to mean much"
  quantize = jax.jit(reference.fake_quant_params, static_argnums=1)
  for dtype in codebooks.DTYPES:
    losses = []
    for k in KS:
      spec = QuantSpec(bits=k, dtype=dtype, blocksize=64, targets="attn,mlp,embed")
      losses.append(
        trainer.evaluate(
          quantize(params, reference.layout_spec(spec), reference.spec_codebook(spec)), batches
        )
      )
    losses.append(loss16)
    for k, lo, hi in zip(KS, losses[1:], losses[:-1]):
      assert hi >= lo - TOL, f"{dtype}: loss at {k} bits {hi:.4f} < at {k + 1} bits {lo:.4f}"
    assert losses[0] > loss16 + 0.05, f"{dtype}: 2 bits should cost visibly: {losses}"
    assert losses[-2] - loss16 < 0.01, f"{dtype}: 8 bits should be nearly free: {losses}"


@pytest.mark.parametrize("dtype", codebooks.DTYPES)
def test_aqt_equals_reference_on_trained_weights(trained, dtype):
  """Tolerance as in test_aqt.py: rtol 1e-5 (last-bit differences of the scale multiply)."""
  trainer, params, batches = trained
  spec = QuantSpec(bits=4, dtype=dtype, blocksize=64)
  tokens = batches[0]["inputs"][:4]
  net = trainer.net
  ref = jax.jit(net.apply)({"params": reference.fake_quant_params(params, spec)}, tokens)
  aqt_net = net.clone(dot_general_cls=aqt.make_dot_general_cls(spec))
  got = jax.jit(aqt_net.apply)({"params": params}, tokens)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)

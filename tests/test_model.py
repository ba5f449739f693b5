"""The model's attention implementations compute the same function.

"einsum" (the default, used on CPU and in every other test) and "xla"
(`jax.nn.dot_product_attention`'s XLA path, the same code path that selects cuDNN's flash
kernel on GPU with attention="cudnn") must give the same logits for each position scheme
the presets use. Tolerance 1e-5 absolute on logits of magnitude ~1 in float32: the two
differ only in how the scale and mask are applied (measured difference: 0 on this CPU).
"cudnn" needs a GPU; benchmarks/gpu_check.py compares it with "einsum" there.
"""
import dataclasses

import jax
import numpy as np
import pytest

from kbit_jax import model, presets


@pytest.mark.parametrize("preset", ["s1", "pythia-70m", "bloom-560m", "opt-350m"])
def test_attention_impls_agree(preset):
  p = dataclasses.replace(presets.get_preset(preset), num_layers=2, d_model=64, num_heads=4,
                          d_ff=128, vocab_size=97, embed_dim=32 if preset == "opt-350m" else 0)
  tokens_BxL = jax.random.randint(jax.random.key(0), (2, 24), 0, p.vocab_size)
  params = model.Transformer(p).init(jax.random.key(1), tokens_BxL)
  logits = {impl: np.asarray(model.Transformer(p, attention=impl).apply(params, tokens_BxL))
            for impl in ("einsum", "xla")}
  assert np.isfinite(logits["einsum"]).all()
  np.testing.assert_allclose(logits["xla"], logits["einsum"], atol=1e-5)
  # The future never leaks: changing the last token leaves earlier logits unchanged.
  changed_BxL = tokens_BxL.at[:, -1].set((tokens_BxL[:, -1] + 1) % p.vocab_size)
  again = np.asarray(model.Transformer(p, attention="xla").apply(params, changed_BxL))
  np.testing.assert_allclose(again[:, :-1], logits["xla"][:, :-1], atol=1e-6)
  assert np.abs(again[:, -1] - logits["xla"][:, -1]).max() > 1e-4


def test_unknown_attention_impl_is_named():
  p = presets.get_preset("s0")
  tokens_BxL = jax.numpy.zeros((1, 4), jax.numpy.int32)
  with pytest.raises(ValueError, match=r"attention impl 'flash' is unknown; allowed"):
    model.Transformer(p, attention="flash").init(jax.random.key(0), tokens_BxL)

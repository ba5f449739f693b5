"""The model's attention implementations compute the same function.

"einsum" (the default, used on CPU and in every other test) and "xla"
(`jax.nn.dot_product_attention`'s XLA path, the same code path that selects cuDNN's flash
kernel on GPU with attention="cudnn") must give the same logits for each position scheme
the presets use, and under grouped-query attention (jax groups the query heads in
transformers' repeat_kv order; the einsum path repeats the key/value heads). Tolerance
1e-5 absolute on logits of magnitude ~1 in float32: the two differ only in how the scale
and mask are applied (measured difference: 0 on this CPU).
"cudnn" needs a GPU; benchmarks/gpu_check.py compares it with "einsum" there.
"""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from kbit_jax.model import presets, transformer

# Grouped-query presets at this size: 2 key/value heads for 4 query heads (1: multi-query),
# and head widths other than d_model / heads where the family has them.
GQA = {
  "l1": dict(kv_heads=2),
  "llama-3.2-1b": dict(kv_heads=2, rope_original_max_len=16),
  "qwen3-0.6b": dict(kv_heads=2, head_width=24),
  "gemma-2b": dict(kv_heads=1, head_width=24),
}


@pytest.mark.parametrize("preset", ["s1", "pythia-70m", "bloom-560m", "opt-350m", *GQA])
def test_attention_impls_agree(preset):
  p = dataclasses.replace(
    presets.get_preset(preset),
    num_layers=2,
    d_model=64,
    num_heads=4,
    d_ff=128,
    vocab_size=97,
    embed_dim=32 if preset == "opt-350m" else 0,
    **GQA.get(preset, {}),
  )
  tokens_BxL = jax.random.randint(jax.random.key(0), (2, 24), 0, p.vocab_size)
  params = transformer.Transformer(p).init(jax.random.key(1), tokens_BxL)
  logits = {
    impl: np.asarray(transformer.Transformer(p, attention=impl).apply(params, tokens_BxL))
    for impl in ("einsum", "xla")
  }
  assert np.isfinite(logits["einsum"]).all()
  np.testing.assert_allclose(logits["xla"], logits["einsum"], atol=1e-5)
  # The future never leaks: changing the last token leaves earlier logits unchanged.
  changed_BxL = tokens_BxL.at[:, -1].set((tokens_BxL[:, -1] + 1) % p.vocab_size)
  again = np.asarray(transformer.Transformer(p, attention="xla").apply(params, changed_BxL))
  np.testing.assert_allclose(again[:, :-1], logits["xla"][:, :-1], atol=1e-6)
  assert np.abs(again[:, -1] - logits["xla"][:, -1]).max() > 1e-4


def test_unknown_attention_impl_is_named():
  p = presets.get_preset("s0")
  tokens_BxL = jax.numpy.zeros((1, 4), jax.numpy.int32)
  with pytest.raises(ValueError, match=r"attention impl 'flash' is unknown; allowed"):
    transformer.Transformer(p, attention="flash").init(jax.random.key(0), tokens_BxL)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_compute_the_unrolled_function(remat):
  """model.scan_layers: the unrolled net's parameters, stacked, give the same logits and
  the same gradients (stacked); unstack_layers inverts stack_layers exactly. Tolerance
  1e-5: the same float32 ops, only fused differently inside the scan."""
  p = dataclasses.replace(presets.get_preset("s1"), num_layers=3, vocab_size=97)
  tokens_BxL = jax.random.randint(jax.random.key(0), (2, 16), 0, p.vocab_size)
  unrolled, scanned = (
    transformer.Transformer(p, remat=remat),
    transformer.Transformer(p, remat=remat, scan_layers=True),
  )
  params = nn.unbox(unrolled.init(jax.random.key(1), tokens_BxL))["params"]
  stacked = transformer.stack_layers(params, p.num_layers)
  assert jax.tree.structure(stacked) == jax.tree.structure(
    nn.unbox(jax.eval_shape(scanned.init, jax.random.key(1), tokens_BxL))["params"]
  )
  assert jax.tree.all(jax.tree.map(np.array_equal, transformer.unstack_layers(stacked), params))

  def loss(net, q):
    return net.apply({"params": q}, tokens_BxL).std()

  np.testing.assert_allclose(
    scanned.apply({"params": stacked}, tokens_BxL),
    unrolled.apply({"params": params}, tokens_BxL),
    atol=1e-5,
  )
  g_unrolled = jax.grad(lambda q: loss(unrolled, q))(params)
  g_scanned = jax.grad(lambda q: loss(scanned, q))(stacked)
  for a, b in zip(
    jax.tree.leaves(transformer.stack_layers(g_unrolled, p.num_layers)), jax.tree.leaves(g_scanned)
  ):
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)

"""A plain Flax GPT-2, the reference `train_throughput.py` times beside our model.

The model the issue's efficiency target was stated against ("a plain flax GPT"): nanoGPT's
GPT-2 written directly in flax.linen, with nothing of ours in it: no presets, no injected
`dot_general`, no logical axes or mesh, no Trainer, no metrics. One fused q/k/v
projection (nanoGPT's `c_attn`), einsum causal attention, exact GELU (as ours and the
PyTorch peer), tied embeddings, learned positions; `optax` AdamW after global-norm
clipping, one `jax.jit` step with donated state. Its parameter count is checked equal to
ours, so both do the same FLOPs a token.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class Block(nn.Module):
  num_heads: int
  d_ff: int

  @nn.compact
  def __call__(self, x_BxLxD):
    B, L, D = x_BxLxD.shape
    H = self.num_heads
    init = nn.initializers.normal(0.02)
    y_BxLxD = nn.LayerNorm(epsilon=1e-5)(x_BxLxD)
    qkv_BxLx3D = nn.Dense(3 * D, kernel_init=init)(y_BxLxD)
    q, k, v = (t.reshape(B, L, H, D // H) for t in jnp.split(qkv_BxLx3D, 3, axis=-1))
    scores_BxHxLxM = jnp.einsum("BLHK,BMHK->BHLM", q, k) / np.sqrt(D // H)
    scores_BxHxLxM = jnp.where(jnp.tril(jnp.ones((L, L), bool)), scores_BxHxLxM, -1e30)
    out_BxLxHxK = jnp.einsum("BHLM,BMHK->BLHK", jax.nn.softmax(scores_BxHxLxM), v)
    x_BxLxD = x_BxLxD + nn.Dense(D, kernel_init=init)(out_BxLxHxK.reshape(B, L, D))
    y_BxLxD = nn.LayerNorm(epsilon=1e-5)(x_BxLxD)
    h_BxLxF = nn.gelu(nn.Dense(self.d_ff, kernel_init=init)(y_BxLxD), approximate=False)
    return x_BxLxD + nn.Dense(D, kernel_init=init)(h_BxLxF)


class GPT(nn.Module):
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  vocab_size: int
  max_len: int

  @nn.compact
  def __call__(self, tokens_BxL):
    embed = nn.Embed(self.vocab_size, self.d_model, embedding_init=nn.initializers.normal(0.02))
    pos_PxD = self.param("pos", nn.initializers.normal(0.01), (self.max_len, self.d_model))
    x_BxLxD = embed(tokens_BxL) + pos_PxD[: tokens_BxL.shape[1]]
    for _ in range(self.num_layers):
      x_BxLxD = Block(self.num_heads, self.d_ff)(x_BxLxD)
    return embed.attend(nn.LayerNorm(epsilon=1e-5)(x_BxLxD))


def runner(p, batches, expected_params: int):
  """run(n_steps) training a plain GPT with preset `p`'s dims on `batches` (one device)."""
  net = GPT(p.num_layers, p.d_model, p.num_heads, p.d_ff, p.vocab_size, p.max_len)
  first = next(batches)
  params = jax.jit(net.init)(jax.random.key(0), first["inputs"])
  count = sum(x.size for x in jax.tree.leaves(params))
  if count != expected_params:
    raise AssertionError(f"plain GPT has {count:,} params, ours {expected_params:,}")
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), optax.adamw(3e-3, b1=0.9, b2=0.95, weight_decay=0.1)
  )
  state = (params, tx.init(params))

  def step(state, inputs_BxL, targets_BxL):
    params, opt_state = state

    def loss_fn(params):
      logits_BxLxV = net.apply(params, inputs_BxL)
      return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  step = jax.jit(step, donate_argnums=0)

  def run(n: int) -> None:
    nonlocal state
    for _ in range(n):
      b = next(batches)
      state, _ = step(state, b["inputs"], b["targets"])
    jax.block_until_ready(state)

  return run

"""Decoder-only Transformer; one model for float and k-bit weights, trained or imported.

The preset's architecture switches cover the study's pretrained families without forking
the model (kbit_jax/convert imports them): positions learned (GPT-2; OPT with
`pos_offset` 2), rotary (Pythia) or ALiBi (BLOOM); sequential pre-LN blocks, GPT-NeoX's
`parallel_residual` or OPT-350m's `post_norm`; BLOOM's `embed_norm`; OPT-350m's narrower
token embedding (`embed_dim`) with projections in and out. The modern families (Llama,
Mistral, Qwen2/3, Gemma) add: RMSNorm (Gemma's `norm_plus_one`: scale 1 + w), gated MLPs
(`mlp="gated"`: SwiGLU/GeGLU, a `gate` kernel beside `wi`), grouped-query attention
(`kv_heads`), an explicit `head_width`, Llama 3's rope scaling (positions.py), Qwen2's
`qkv_bias`, Qwen3's `qk_norm`, Gemma's `embed_scale` (sqrt(d_model)). Defaults give the
pre-LN model the tiny `s*` presets train, with the same parameter tree.

Every weight matmul goes through `nn.Dense(dot_general_cls=...)`: the config picks the
`dot_general` (plain `lax.dot_general`, or AQT's `AqtDotGeneral` for k-bit weights), so
quantization is injected, never forked. Attention scores and softmax are never quantized
(as in the k-bit study). Parameters carry logical axis names (`vocab`, `embed`, `heads`,
`kv_heads`, `mlp`, `length`, `norm`); `sharding.py` maps them onto mesh axes with the
config's rules. Key/value projections are `kv_heads` only when there are fewer key/value
heads than query heads (grouped-query attention), `heads` otherwise, as before.

Shape suffixes: B batch, L length (query), M length (key), D d_model, H heads, N
key/value heads, K head dim, F d_ff, V vocab.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from kbit_jax.model.packing import Packing, positions
from kbit_jax.model.positions import alibi_slopes, inv_frequencies, rotary
from kbit_jax.model.presets import Preset

DotGeneralFactory = Callable[[], Callable[..., jax.Array]] | None


def _dense(
  features: int,
  axes: tuple[str | None, str | None],
  p: Preset,
  dtype: Any,
  dot_general_cls: DotGeneralFactory,
  std: float,
  name: str,
  use_bias: bool | None = None,
) -> nn.Dense:
  return nn.Dense(
    features,
    use_bias=p.use_bias if use_bias is None else use_bias,
    dtype=dtype,
    name=name,
    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
    dot_general_cls=dot_general_cls,
  )


def _layer_norm(p: Preset, dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=p.norm_eps,
    dtype=dtype,
    name=name,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
  )


class RMSNorm(nn.Module):
  """x / rms(x) * scale over the last axis, in float32 (Hugging Face Llama's and Gemma's
  order of operations: Llama casts to the compute dtype, then scales; Gemma scales by
  1 + w in float32, then casts)."""

  epsilon: float
  dtype: Any
  plus_one: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param("scale", nn.with_logical_partitioning(init, ("norm",)), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    if self.plus_one:
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
    return normed.astype(self.dtype) * scale.astype(self.dtype)


def _norm(p: Preset, dtype: Any, name: str) -> nn.Module:
  if p.norm == "rmsnorm":
    return RMSNorm(p.norm_eps, dtype, p.norm_plus_one, name=name)
  return _layer_norm(p, dtype, name)


# How the score/softmax/value part of attention is computed (the weight matmuls around
# it always go through the injected dot_general):
#   "einsum"  scores in the compute dtype, f32 softmax, one L x M matrix (CPU, tests);
#   "cudnn"   jax.nn.dot_product_attention's cuDNN flash kernel (GPU, bf16/f16 only);
#   "xla"     jax.nn.dot_product_attention's XLA implementation (any backend).
ATTENTION_IMPLS = ("einsum", "cudnn", "xla")


class Attention(nn.Module):
  p: Preset
  dtype: Any
  dot_general_cls: DotGeneralFactory = None
  impl: str = "einsum"  # one of ATTENTION_IMPLS

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, packing: Packing | None = None) -> jax.Array:
    p = self.p
    B, L, _ = x_BxLxD.shape
    H, N, K = p.num_heads, p.num_kv_heads, p.head_dim
    out_std = 0.02 / (2 * p.num_layers) ** 0.5
    kv_axis = "heads" if N == H else "kv_heads"  # grouped-query attention: sharding.py

    def dense(name, features, axis):
      bias = p.use_bias or p.qkv_bias
      dg = self.dot_general_cls
      return _dense(features, ("embed", axis), p, self.dtype, dg, 0.02, name, use_bias=bias)

    q_BxLxHxK = dense("query", H * K, "heads")(x_BxLxD).reshape(B, L, H, K)
    k_BxMxNxK = dense("key", N * K, kv_axis)(x_BxLxD).reshape(B, L, N, K)
    v_BxMxNxK = dense("value", N * K, kv_axis)(x_BxLxD).reshape(B, L, N, K)
    if p.qk_norm:  # Qwen3: over each head's K dims, before rotary
      q_BxLxHxK = RMSNorm(p.norm_eps, self.dtype, name="query_norm")(q_BxLxHxK)
      k_BxMxNxK = RMSNorm(p.norm_eps, self.dtype, name="key_norm")(k_BxMxNxK)
    pos_BxL = positions(packing, L)  # 1 x L, or B x L when packed
    if p.positions == "rotary":
      rotary_dims = int(K * p.rotary_pct) // 2 * 2
      inv_freq_R = inv_frequencies(p, rotary_dims)
      q_BxLxHxK = rotary(q_BxLxHxK, pos_BxL, rotary_dims, inv_freq_R=inv_freq_R)
      k_BxMxNxK = rotary(k_BxMxNxK, pos_BxL, rotary_dims, inv_freq_R=inv_freq_R)
    bias_BxHxLxM = None  # B is 1 unless packed
    if p.positions == "alibi":
      # -slope * (query - key distance), <= 0 at any length; HF adds slope * key position,
      # which differs by a per-query constant that softmax ignores.
      distance_BxLxM = (pos_BxL[:, None, :] - pos_BxL[:, :, None]).astype(jnp.float32)
      bias_BxHxLxM = alibi_slopes(H)[None, :, None, None] * distance_BxLxM[:, None]
    # causal, or packed rows' own mask (model/packing.py)
    mask_xLxM = (
      jnp.tril(jnp.ones((L, L), dtype=bool)) if packing is None else packing.mask_Bx1xLxM()
    )
    if self.impl == "einsum":
      # query head h reads key/value head h // (H / N), as transformers' repeat_kv
      k_BxMxHxK = jnp.repeat(k_BxMxNxK, H // N, axis=2) if N != H else k_BxMxNxK
      v_BxMxHxK = jnp.repeat(v_BxMxNxK, H // N, axis=2) if N != H else v_BxMxNxK
      scores_BxHxLxM = jnp.einsum("BLHK,BMHK->BHLM", q_BxLxHxK, k_BxMxHxK) / jnp.sqrt(K).astype(
        self.dtype
      )
      scores_BxHxLxM = scores_BxHxLxM.astype(jnp.float32)
      if bias_BxHxLxM is not None:
        scores_BxHxLxM = scores_BxHxLxM + bias_BxHxLxM
      scores_BxHxLxM = jnp.where(mask_xLxM, scores_BxHxLxM, -1e30)
      probs_BxHxLxM = jax.nn.softmax(scores_BxHxLxM, axis=-1).astype(self.dtype)
      out_BxLxHxK = jnp.einsum("BHLM,BMHK->BLHK", probs_BxHxLxM, v_BxMxHxK)
    elif self.impl in ("cudnn", "xla"):
      bias = None if bias_BxHxLxM is None else bias_BxHxLxM.astype(self.dtype)
      out_BxLxHxK = jax.nn.dot_product_attention(  # groups query heads as repeat_kv
        q_BxLxHxK,
        k_BxMxNxK,
        v_BxMxNxK,
        bias=bias,
        mask=None if packing is None else mask_xLxM,
        is_causal=packing is None,
        implementation=self.impl,
      )
    else:
      raise ValueError(f"attention impl {self.impl!r} is unknown; allowed: {ATTENTION_IMPLS}")
    out = _dense(p.d_model, ("heads", "embed"), p, self.dtype, self.dot_general_cls, out_std, "out")
    return out(out_BxLxHxK.reshape(B, L, H * K))


_ACTIVATIONS = {
  "gelu": lambda x: nn.gelu(x, approximate=False),
  "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
  "relu": nn.relu,
  "silu": nn.silu,
}


class Mlp(nn.Module):
  p: Preset
  dtype: Any
  dot_general_cls: DotGeneralFactory = None

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    p = self.p
    act = _ACTIVATIONS[p.activation]

    def up(name):
      return _dense(p.d_ff, ("embed", "mlp"), p, self.dtype, self.dot_general_cls, 0.02, name)

    h_BxLxF = up("wi")(x_BxLxD)
    if p.mlp == "gated":  # SwiGLU / GeGLU: transformers' down(act(gate(x)) * up(x))
      h_BxLxF = act(up("gate")(x_BxLxD)) * h_BxLxF
    else:
      h_BxLxF = act(h_BxLxF)
    h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "mlp"))
    out_std = 0.02 / (2 * p.num_layers) ** 0.5
    return _dense(p.d_model, ("mlp", "embed"), p, self.dtype, self.dot_general_cls, out_std, "wo")(
      h_BxLxF
    )


class Block(nn.Module):
  p: Preset
  dtype: Any
  dot_general_cls: DotGeneralFactory = None
  attention: str = "einsum"

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, packing: Packing | None = None) -> jax.Array:
    p = self.p
    attn = Attention(p, self.dtype, self.dot_general_cls, self.attention, name="attn")
    mlp = Mlp(p, self.dtype, self.dot_general_cls, name="mlp")
    ln1, ln2 = _norm(p, self.dtype, "ln1"), _norm(p, self.dtype, "ln2")
    if p.parallel_residual:  # GPT-NeoX: both branches read the block's input
      x_BxLxD = x_BxLxD + attn(ln1(x_BxLxD), packing) + mlp(ln2(x_BxLxD))
    elif p.post_norm:  # OPT-350m: normalise after each residual add
      x_BxLxD = ln1(x_BxLxD + attn(x_BxLxD, packing))
      x_BxLxD = ln2(x_BxLxD + mlp(x_BxLxD))
    else:
      x_BxLxD = x_BxLxD + attn(ln1(x_BxLxD), packing)
      x_BxLxD = x_BxLxD + mlp(ln2(x_BxLxD))
    return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))


def _block_cls(remat: bool) -> type[nn.Module]:
  """Block, recomputed in the backward pass when `remat`."""
  return nn.remat(Block) if remat else Block


class _ScannedBlock(nn.Module):
  """One Block as the body of nn.scan: (x, packing) -> (x, None); `packing` (or None)
  is broadcast to every layer."""

  p: Preset
  dtype: Any
  dot_general_cls: DotGeneralFactory = None
  attention: str = "einsum"
  remat: bool = False

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, packing: Packing | None) -> tuple[jax.Array, None]:
    return _block_cls(self.remat)(
      self.p, self.dtype, self.dot_general_cls, self.attention, name="block"
    )(x_BxLxD, packing), None


SCANNED = "layers"  # the scanned blocks' parameters: params["layers"]["block"][...]


def unstack_layers(params: dict[str, Any]) -> dict[str, Any]:
  """Parameters of a scan_layers net -> the same parameters of the unrolled net (the
  layer axis leads every array under params["layers"]); others pass through."""
  if SCANNED not in params:
    return params
  out = {k: v for k, v in params.items() if k != SCANNED}
  blocks = params[SCANNED]["block"]
  for i in range(jax.tree.leaves(blocks)[0].shape[0]):
    out[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], blocks)
  return out


def stack_layers(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """The inverse of unstack_layers: unrolled parameters -> a scan_layers net's."""
  names = [f"layer_{i}" for i in range(num_layers)]
  out = {k: v for k, v in params.items() if k not in names}
  out[SCANNED] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *(params[n] for n in names))}
  return out


class Transformer(nn.Module):
  """tokens_BxL (int32) -> logits_BxLxV (float32)."""

  p: Preset
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32
  dot_general_cls: DotGeneralFactory = None
  remat: bool = False  # recompute each block in the backward pass
  attention: str = "einsum"  # one of ATTENTION_IMPLS
  # One nn.scan over the blocks instead of num_layers copies: compile time does not grow
  # with depth. Parameters are stacked (params["layers"]["block"], layer axis first,
  # logical name "layers"); unstack_layers gives the unrolled net's.
  scan_layers: bool = False

  @nn.compact
  def __call__(
    self,
    tokens_BxL: jax.Array,
    positions_BxC: jax.Array | None = None,
    packing: Packing | None = None,
  ) -> jax.Array:
    """logits_BxLxV; with `positions_BxC`, only those positions' logits, logits_BxCxV
    (scoring needs the continuation's: what follows the last block is per position, so
    the head, a large share of a small model's FLOPs, runs on C rows instead of L);
    1 x C positions index the B rows as one (b * L + l), for logits_1xCxV.
    `packing`: each row holds several requests (model/packing.py); None: one sequence."""
    p = self.p
    L = tokens_BxL.shape[1]
    if L > p.max_len and p.positions == "learned":
      raise ValueError(f"sequence length {L} > model max_len {p.max_len}")
    embed = nn.Embed(
      p.vocab_size,
      p.token_dim,
      dtype=self.dtype,
      name="embed",
      embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
    )
    x_BxLxD = embed(tokens_BxL)
    if p.embed_scale:  # Gemma: sqrt(d_model), cast to the compute dtype as HF does
      x_BxLxD = x_BxLxD * jnp.asarray(p.d_model**0.5, self.dtype)
    if p.token_dim != p.d_model:
      x_BxLxD = _dense(
        p.d_model,
        (None, "embed"),
        p,
        self.dtype,
        self.dot_general_cls,
        0.02,
        "embed_proj_in",
        use_bias=False,
      )(x_BxLxD)
    if p.positions == "learned":
      pos_LxD = self.param(
        "pos_embed",
        nn.with_logical_partitioning(nn.initializers.normal(0.01), ("length", "embed")),
        (p.max_len + p.pos_offset, p.d_model),
      )
      if packing is None:
        x_BxLxD = x_BxLxD + pos_LxD[p.pos_offset : p.pos_offset + L].astype(self.dtype)[None]
      else:
        x_BxLxD = x_BxLxD + pos_LxD[p.pos_offset + packing.positions_BxL].astype(self.dtype)
    if p.embed_norm:
      x_BxLxD = _norm(p, self.dtype, "embed_norm")(x_BxLxD)
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))
    if self.scan_layers:
      layers = nn.scan(
        _ScannedBlock,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=nn.broadcast,
        length=p.num_layers,
        metadata_params={nn.PARTITION_NAME: SCANNED},
      )
      x_BxLxD, _ = layers(
        p, self.dtype, self.dot_general_cls, self.attention, self.remat, name=SCANNED
      )(x_BxLxD, packing)
    else:
      block = _block_cls(self.remat)
      for i in range(p.num_layers):
        x_BxLxD = block(p, self.dtype, self.dot_general_cls, self.attention, name=f"layer_{i}")(
          x_BxLxD, packing
        )
    if positions_BxC is not None:
      if positions_BxC.shape[0] == 1:  # 1 x C: indices b * L + l into all rows
        x_BxLxD = x_BxLxD.reshape(1, -1, x_BxLxD.shape[-1])
      x_BxLxD = jnp.take_along_axis(x_BxLxD, positions_BxC[..., None], axis=1)  # B x C x D
    if not p.post_norm:  # a post-norm block already ends with a LayerNorm
      x_BxLxD = _norm(p, self.dtype, "ln_f")(x_BxLxD)
    if p.token_dim != p.d_model:
      x_BxLxD = _dense(
        p.token_dim,
        ("embed", None),
        p,
        self.dtype,
        self.dot_general_cls,
        0.02,
        "embed_proj_out",
        use_bias=False,
      )(x_BxLxD)
    if p.tie_embeddings:
      logits_BxLxV = embed.attend(x_BxLxD)
    else:
      head = nn.Dense(
        p.vocab_size,
        use_bias=False,
        dtype=self.dtype,
        name="head",
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab")),
        dot_general_cls=self.dot_general_cls,
      )
      logits_BxLxV = head(x_BxLxD)
    return nn.with_logical_constraint(
      logits_BxLxV.astype(jnp.float32), ("batch", "length", "vocab")
    )


def next_token_nll(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """nll_BxL: each target token's negative log-likelihood in nats, float32: optax's softmax
  cross-entropy, logsumexp(logits) - logit[target], which forms no B x L x V log-probs. The
  one NLL of training, scoring and perplexity."""
  return optax.losses.softmax_cross_entropy_with_integer_labels(
    logits_BxLxV.astype(jnp.float32), targets_BxL
  )

"""Vision Transformer (Dosovitskiy et al., 2021) in Flax NNX.

Layout follows Hugging Face's `ViTForImageClassification` (pre-LayerNorm blocks, exact-erf GELU,
separate q/k/v projections, final LayerNorm, classifier on the CLS token) so that its checkpoints
import one-to-one (see `cu_jax.models.hf_vit`). Images are NHWC.

Attention is written heads-first (`swapaxes` + `@`), which XLA:CPU runs 2-3x faster than a
4-index einsum.

Precision: parameters are float32; `dtype="bfloat16"` runs the matmuls, the LayerNorm outputs and
the residual stream in bfloat16 (LayerNorm statistics and the attention softmax stay float32), and
the embedding and logits come out float32.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

_dense_init = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  image_size: int = 224
  channels: int = 3
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  num_classes: int = 1000
  pool: str = "cls"  # "cls" (classifier token) or "gap" (mean of patch tokens)
  dropout: float = 0.0
  attn_dropout: float = 0.0
  layer_norm_eps: float = 1e-12  # HF ViT's value
  qkv_bias: bool = True
  dtype: str = "float32"  # compute dtype (e.g. "bfloat16"); parameters stay float32
  # Recompute each encoder block's activations in the backward pass instead of keeping them:
  # activation memory of one block instead of `depth` blocks, for about a third more compute.
  remat: bool = False

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
    if self.width % self.heads:
      raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
    if self.pool not in ("cls", "gap"):
      raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return self.grid**2 + (self.pool == "cls")


def _split_key(key, n):
  return [None] * n if key is None else list(jax.random.split(key, n))


def patchify(x: jax.Array, patch: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/p * W/p, p*p*C), patches in row-major order, pixels as (ph, pw, c)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class Attention(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    dt = jnp.dtype(cfg.dtype)
    lin = lambda bias: nnx.Linear(cfg.width, cfg.width, use_bias=bias, kernel_init=_dense_init,
                                  bias_init=_zeros, dtype=dt, rngs=rngs)
    self.query, self.key, self.value = lin(cfg.qkv_bias), lin(cfg.qkv_bias), lin(cfg.qkv_bias)
    self.out = lin(True)
    self.heads = cfg.heads
    self.attn_drop = nnx.Dropout(cfg.attn_dropout)

  def __call__(self, x, *, train: bool, key=None):
    b, t, d = x.shape
    h = self.heads
    split = lambda y: y.reshape(b, t, h, d // h).swapaxes(1, 2)  # (B, H, T, Dh)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = (q * (1.0 / math.sqrt(d // h))) @ k.swapaxes(-1, -2)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    probs = self.attn_drop(probs, deterministic=not train, rngs=key)
    y = (probs @ v).swapaxes(1, 2).reshape(b, t, d)
    return self.out(y)


class Mlp(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    dt = jnp.dtype(cfg.dtype)
    self.fc1 = nnx.Linear(cfg.width, cfg.mlp_dim, kernel_init=_dense_init, bias_init=_zeros,
                          dtype=dt, rngs=rngs)
    self.fc2 = nnx.Linear(cfg.mlp_dim, cfg.width, kernel_init=_dense_init, bias_init=_zeros,
                          dtype=dt, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout)

  def __call__(self, x, *, train: bool, key=None):
    x = jax.nn.gelu(self.fc1(x), approximate=False)
    return self.fc2(self.drop(x, deterministic=not train, rngs=key))


class EncoderBlock(nnx.Module):
  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    ln = lambda: nnx.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype), rngs=rngs)
    self.ln1, self.ln2 = ln(), ln()
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp = Mlp(cfg, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout)

  def __call__(self, x, *, train: bool, key=None):
    k = _split_key(key, 4)
    x = x + self.drop(self.attn(self.ln1(x), train=train, key=k[0]), deterministic=not train, rngs=k[1])
    x = x + self.drop(self.mlp(self.ln2(x), train=train, key=k[2]), deterministic=not train, rngs=k[3])
    return x


class ViT(nnx.Module):
  """`model(images) -> logits`; `model.embed(images)` is the pre-logits representation e(x)."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = jnp.dtype(cfg.dtype)
    self.patch_embed = nnx.Linear(cfg.patch_size**2 * cfg.channels, cfg.width, kernel_init=_dense_init,
                                  bias_init=_zeros, dtype=dt, rngs=rngs)
    if cfg.pool == "cls":
      self.cls_token = nnx.Param(jnp.zeros((1, 1, cfg.width), jnp.float32))
    self.pos_embed = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (1, cfg.num_tokens, cfg.width), jnp.float32))
    self.drop = nnx.Dropout(cfg.dropout)
    self.blocks = nnx.List([EncoderBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.norm = nnx.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.head = nnx.Linear(cfg.width, cfg.num_classes, kernel_init=_zeros, bias_init=_zeros, rngs=rngs)

  def embed(self, images: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
    """Pre-logits embedding: CLS token (or token mean) after the final LayerNorm, float32."""
    cfg = self.cfg
    keys = _split_key(key, cfg.depth + 1)
    x = self.patch_embed(patchify(images.astype(jnp.dtype(cfg.dtype)), cfg.patch_size))
    if cfg.pool == "cls":
      cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, cfg.width))
      x = jnp.concatenate([cls, x], axis=1)
    x = self.drop(x + self.pos_embed[...].astype(x.dtype), deterministic=not train, rngs=keys[0])
    for block, k in zip(self.blocks, keys[1:]):
      if cfg.remat:  # a pure function of the block's state, so that jax.checkpoint sees its inputs
        graphdef, state = nnx.split(block)
        x = jax.checkpoint(lambda st, x, k: nnx.merge(graphdef, st)(x, train=train, key=k))(state, x, k)
      else:
        x = block(x, train=train, key=k)
    x = self.norm(x)
    pooled = x[:, 0] if cfg.pool == "cls" else x.mean(axis=1)
    return pooled.astype(jnp.float32)

  def __call__(self, images: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
    return self.head(self.embed(images, train=train, key=key))

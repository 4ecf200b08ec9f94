"""CLIP (Radford et al., 2021) image and text towers in Flax NNX.

Layout follows Hugging Face's `CLIPModel` so that its checkpoints import one-to-one (see
`cu_jax.models.hf_clip`):

- vision tower: conv patch embedding without bias (written as `patchify` + a bias-free `Linear`),
  class embedding, learned position embeddings, a LayerNorm *before* the encoder (HF's
  `pre_layrnorm`), pre-LN encoder blocks, LayerNorm on the CLS token (`post_layernorm`);
- text tower: token + position embeddings, causal self-attention (plus a padding mask), final
  LayerNorm, pooled at the end-of-text token (`eos_positions` has HF's rule);
- `visual_projection` and `text_projection`: bias-free linear maps into the joint space.

`get_image_features` / `get_text_features` return the projected, *un-normalised* features, as HF's
methods of the same names do; `encode_*_normalized` L2-normalise them. Images are NHWC and already
normalised with the checkpoint's mean/std (the model does no preprocessing).

Attention is written heads-first (`swapaxes` + `@`), which XLA:CPU runs 2-3x faster than a
4-index einsum.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from cu_jax.models.vit import patchify

_dense_init = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_embed_init = nnx.initializers.normal(0.02)


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's GELU approximation `x * sigmoid(1.702 x)` (HF's "quick_gelu")."""
  return x * jax.nn.sigmoid(1.702 * x)


# HF `hidden_act` names -> functions. "gelu" is the exact (erf) GELU in torch and HF.
ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def _check_tower(name: str, width: int, heads: int, hidden_act: str) -> None:
  if width % heads:
    raise ValueError(f"{name}: width {width} is not divisible by heads {heads}")
  if hidden_act not in ACTIVATIONS:
    raise ValueError(f"{name}: hidden_act {hidden_act!r} is not supported; one of {sorted(ACTIVATIONS)}")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """Vision tower; defaults are HF's `CLIPVisionConfig` (ViT-B/32)."""
  image_size: int = 224
  patch_size: int = 32
  channels: int = 3
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
    _check_tower("vision", self.width, self.heads, self.hidden_act)

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid**2 + 1  # patches + CLS


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Text tower; defaults are HF's `CLIPTextConfig`.

  `eos_token_id` picks the pooled position (see `eos_positions`). Padding is given by the
  `attention_mask`, never inferred from token ids: CLIP tokenizers pad with the end-of-text token,
  which is also why they must pad on the right (HF's first-EOS rule would pool a pad otherwise).
  """
  vocab_size: int = 49408
  max_positions: int = 77
  width: int = 512
  depth: int = 12
  heads: int = 8
  mlp_dim: int = 2048
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407

  def __post_init__(self):
    _check_tower("text", self.width, self.heads, self.hidden_act)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  vision: CLIPVisionConfig = dataclasses.field(default_factory=CLIPVisionConfig)
  text: CLIPTextConfig = dataclasses.field(default_factory=CLIPTextConfig)
  projection_dim: int = 512
  logit_scale_init: float = 2.6592  # log(1 / 0.07), HF's `logit_scale_init_value`
  dtype: str = "float32"  # compute dtype; parameters stay float32


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
  """(B, T) token ids -> (B,) index of the pooled token, HF's `CLIPTextTransformer` rule.

  Checkpoints whose config says `eos_token_id == 2` (written before transformers PR #24773, e.g.
  the original OpenAI ones) pool at the largest token id, the end-of-text token of the original
  vocabulary. Otherwise the first occurrence of `eos_token_id` (padding may repeat it); a row
  without it pools at position 0, as HF does.
  """
  if eos_token_id == 2:
    return jnp.argmax(input_ids, axis=-1)
  return jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class Attention(nnx.Module):
  """Multi-head self-attention with HF's q/k/v/out projections (all with bias)."""

  def __init__(self, width: int, heads: int, *, dtype, rngs: nnx.Rngs):
    lin = lambda: nnx.Linear(width, width, kernel_init=_dense_init, bias_init=_zeros, dtype=dtype,
                             rngs=rngs)
    self.q_proj, self.k_proj, self.v_proj, self.out_proj = lin(), lin(), lin(), lin()
    self.heads = heads

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """`mask`: boolean, broadcastable to (B, heads, T, T), True where a query may attend a key."""
    b, t, d = x.shape
    h = self.heads
    split = lambda y: y.reshape(b, t, h, d // h).swapaxes(1, 2)  # (B, H, T, Dh)
    q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
    scores = ((q * (1.0 / math.sqrt(d // h))) @ k.swapaxes(-1, -2)).astype(jnp.float32)
    if mask is not None:  # finite fill: a row with no allowed key gets uniform weights, not NaN
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    y = (probs @ v).swapaxes(1, 2).reshape(b, t, d)
    return self.out_proj(y)


class Mlp(nnx.Module):
  def __init__(self, width: int, mlp_dim: int, hidden_act: str, *, dtype, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(width, mlp_dim, kernel_init=_dense_init, bias_init=_zeros, dtype=dtype,
                          rngs=rngs)
    self.fc2 = nnx.Linear(mlp_dim, width, kernel_init=_dense_init, bias_init=_zeros, dtype=dtype,
                          rngs=rngs)
    self.hidden_act = hidden_act

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(ACTIVATIONS[self.hidden_act](self.fc1(x)))


class EncoderLayer(nnx.Module):
  """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

  def __init__(self, cfg: CLIPVisionConfig | CLIPTextConfig, *, dtype, rngs: nnx.Rngs):
    ln = lambda: nnx.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.layer_norm1, self.layer_norm2 = ln(), ln()
    self.self_attn = Attention(cfg.width, cfg.heads, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.hidden_act, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    x = x + self.self_attn(self.layer_norm1(x), mask)
    return x + self.mlp(self.layer_norm2(x))


class Encoder(nnx.Module):
  def __init__(self, cfg: CLIPVisionConfig | CLIPTextConfig, *, dtype, rngs: nnx.Rngs):
    self.layers = nnx.List([EncoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    for layer in self.layers:
      x = layer(x, mask)
    return x


class VisionTransformer(nnx.Module):
  """`tower(images NHWC) -> (B, width)`: the CLS token after `post_layernorm` (HF's pooler_output)."""

  def __init__(self, cfg: CLIPVisionConfig, *, dtype: str = "float32", rngs: nnx.Rngs):
    self.cfg = cfg
    dt = jnp.dtype(dtype)
    self.patch_embedding = nnx.Linear(cfg.patch_size**2 * cfg.channels, cfg.width, use_bias=False,
                                      kernel_init=_dense_init, dtype=dt, rngs=rngs)
    self.class_embedding = nnx.Param(_embed_init(rngs.params(), (cfg.width,), jnp.float32))
    self.position_embedding = nnx.Param(
        _embed_init(rngs.params(), (cfg.num_positions, cfg.width), jnp.float32))
    ln = lambda: nnx.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.pre_layernorm = ln()
    self.encoder = Encoder(cfg, dtype=dt, rngs=rngs)
    self.post_layernorm = ln()

  def __call__(self, images: jax.Array) -> jax.Array:
    cfg = self.cfg
    b, hgt, wid, c = images.shape
    if (hgt, wid, c) != (cfg.image_size, cfg.image_size, cfg.channels):
      raise ValueError(f"images are {hgt}x{wid}x{c} but the CLIP vision tower expects "
                       f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}; load the checkpoint "
                       f"with image_size={hgt} to resample its position embeddings")
    x = self.patch_embedding(patchify(images.astype(self.patch_embedding.dtype), cfg.patch_size))
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, cfg.width))
    x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(x.dtype)
    x = self.encoder(self.pre_layernorm(x))
    return self.post_layernorm(x[:, 0]).astype(jnp.float32)


class TextTransformer(nnx.Module):
  """`tower(input_ids, attention_mask) -> (B, width)`: the end-of-text token after the final LayerNorm."""

  def __init__(self, cfg: CLIPTextConfig, *, dtype: str = "float32", rngs: nnx.Rngs):
    self.cfg = cfg
    dt = jnp.dtype(dtype)
    self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.width, embedding_init=_embed_init, dtype=dt,
                                     rngs=rngs)
    self.position_embedding = nnx.Param(
        nnx.initializers.normal(0.01)(rngs.params(), (cfg.max_positions, cfg.width), jnp.float32))
    self.encoder = Encoder(cfg, dtype=dt, rngs=rngs)
    self.final_layer_norm = nnx.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps, rngs=rngs)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """`input_ids` (B, T) int; `attention_mask` (B, T), 1 for tokens and 0 for padding (None: no padding)."""
    cfg = self.cfg
    b, t = input_ids.shape
    if t > cfg.max_positions:
      raise ValueError(f"text of {t} tokens is longer than the model's {cfg.max_positions} positions; "
                       f"tokenize with truncation=True, max_length={cfg.max_positions}")
    x = self.token_embedding(input_ids)
    x = x + self.position_embedding[:t].astype(x.dtype)
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None]  # (1, 1, T, T): causal
    if attention_mask is not None:
      mask = mask & (attention_mask[:, None, None, :] != 0)  # and never attend to padding keys
    x = self.final_layer_norm(self.encoder(x, mask))
    pooled = jnp.take_along_axis(x, eos_positions(input_ids, cfg.eos_token_id)[:, None, None], axis=1)
    return pooled[:, 0].astype(jnp.float32)


class CLIP(nnx.Module):
  """Both towers and their projections into the joint space (HF's `CLIPModel`).

  `model(images, input_ids, attention_mask)` gives HF's `logits_per_image` (B_img, B_txt).
  """

  def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = jnp.dtype(cfg.dtype)
    self.vision_model = VisionTransformer(cfg.vision, dtype=cfg.dtype, rngs=rngs)
    self.text_model = TextTransformer(cfg.text, dtype=cfg.dtype, rngs=rngs)
    proj = lambda width: nnx.Linear(width, cfg.projection_dim, use_bias=False, kernel_init=_dense_init,
                                    dtype=dt, rngs=rngs)
    self.visual_projection = proj(cfg.vision.width)
    self.text_projection = proj(cfg.text.width)
    self.logit_scale = nnx.Param(jnp.asarray(cfg.logit_scale_init, jnp.float32))

  def get_image_features(self, pixel_values: jax.Array) -> jax.Array:
    """(B, H, W, C) normalised images -> (B, projection_dim) projected features, not normalised."""
    return self.visual_projection(self.vision_model(pixel_values)).astype(jnp.float32)

  def get_text_features(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """(B, T) token ids (+ padding mask) -> (B, projection_dim) projected features, not normalised."""
    return self.text_projection(self.text_model(input_ids, attention_mask)).astype(jnp.float32)

  def encode_image_normalized(self, pixel_values: jax.Array) -> jax.Array:
    return l2_normalize(self.get_image_features(pixel_values))

  def encode_text_normalized(self, input_ids: jax.Array,
                             attention_mask: jax.Array | None = None) -> jax.Array:
    return l2_normalize(self.get_text_features(input_ids, attention_mask))

  def __call__(self, pixel_values: jax.Array, input_ids: jax.Array,
               attention_mask: jax.Array | None = None) -> jax.Array:
    img = self.encode_image_normalized(pixel_values)
    txt = self.encode_text_normalized(input_ids, attention_mask)
    return jnp.exp(self.logit_scale[...]) * (img @ txt.T)

"""On-device image preprocessing (inside the jitted step): uint8 -> normalised float, augmentation."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean: float | tuple = 0.5, std: float | tuple = 0.5) -> jax.Array:
  """uint8 [0, 255] -> float32 (x / 255 - mean) / std (HF ViT's default maps to [-1, 1])."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_flip(images: jax.Array, key: jax.Array, *, pad: int, flip: bool) -> jax.Array:
  """Per-example random crop after zero padding by `pad` pixels, and random horizontal flip."""
  b, h, w, _ = images.shape
  k_crop, k_flip = jax.random.split(key)
  if pad:
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    images = jax.vmap(crop)(padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    images = jnp.where(do_flip, images[:, :, ::-1], images)
  return images


def preprocess(images: jax.Array, cfg, *, key: jax.Array | None = None) -> jax.Array:
  """`cfg` is the `data` config section: mean, std, augment.{crop_pad, flip}, image_size (0: keep).

  `key=None` means evaluation (no augmentation).
  """
  if key is not None and (cfg.augment.crop_pad or cfg.augment.flip):
    # On the raw pixels, so that padding is black (the background of the datasets used here).
    images = random_crop_flip(images, key, pad=cfg.augment.crop_pad, flip=cfg.augment.flip)
  as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  x = normalize(images, as_tuple(cfg.mean), as_tuple(cfg.std))
  size = cfg.get("image_size", 0)
  if size and x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method="bilinear")
  return x

"""Where a concept lives in an image: Integrated Gradients of a concept score w.r.t. the pixels.

The explained function runs through the whole classifier backbone,

    s_j(x) = (V_j . e(preprocess(x)) + b_j) / ||V_j||,

the signed distance of the image's embedding to concept j's hyperplane (a CAV of the model's own
embeddings), from a black image. Summing the attribution over the colour channels gives one
(H, W) map per image, at the resolution of the stored images: the path starts from the uint8
pixels, and a resize to the model's input size (`data.image_size`) is part of the explained
function. A localized poison patch is placed where this map peaks.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cu_jax.attribution.ig import make_ig_fn
from cu_jax.data.preprocess import preprocess


def concept_saliency(model: nnx.Module, images: np.ndarray, vector: np.ndarray, intercept: float, data_cfg, *,
                     n_steps: int, chunk: int = 128) -> np.ndarray:
  """(n, H, W) IG maps of concept score s_j for `images` (n, H, W, C) uint8; `model.embed` is e(x).

  Images go through in chunks of `chunk` (each expands to `chunk * n_steps` forward/backward passes).
  """
  graphdef, state = nnx.split(model)

  def score(pixels, state, v, b):
    embedding = nnx.merge(graphdef, state).embed(preprocess(pixels, data_cfg))
    return (embedding @ v + b) / jnp.linalg.norm(v)

  ig = make_ig_fn(score, n_steps=n_steps)
  args = (state, jnp.asarray(vector), jnp.float32(intercept))
  maps = [np.asarray(ig(jnp.asarray(images[i:i + chunk], jnp.float32), 0.0, args=args).attributions.sum(-1))
          for i in range(0, len(images), chunk)]
  return np.concatenate(maps) if maps else np.zeros(images.shape[:3], np.float32)

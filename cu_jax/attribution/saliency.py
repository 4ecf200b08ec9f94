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

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from cu_jax.attribution.ig import make_ig_fn
from cu_jax.data.preprocess import preprocess
from cu_jax.parallel.memory import GIB, free_device_bytes, largest_fitting, peak_bytes
from cu_jax.utils.errors import UserError


def concept_saliency(model: nnx.Module, images: np.ndarray, vector: np.ndarray, intercept: float, data_cfg, *,
                     n_steps: int, chunk: int = 128, mesh=None, memory_gib: float = 0.0) -> np.ndarray:
  """(n, H, W) IG maps of concept score s_j for `images` (n, H, W, C) uint8; `model.embed` is e(x).

  Images go through in chunks of `chunk` (each expands to `chunk * n_steps` path points), split
  over `mesh`'s `data` axis when given. The path points per reverse-mode pass (per device) are
  sized to `memory_gib` of device memory (`ig_points_per_pass`).
  """
  graphdef, state = nnx.split(model)

  def score(pixels, state, v, b):
    embedding = nnx.merge(graphdef, state).embed(preprocess(pixels, data_cfg))
    return (embedding @ v + b) / jnp.linalg.norm(v)

  if not len(images):
    return np.zeros(images.shape[:3], np.float32)
  args = (state, jnp.asarray(vector), jnp.float32(intercept))
  first = jax.ShapeDtypeStruct((min(chunk, len(images)),) + images.shape[1:], jnp.float32)
  points = ig_points_per_pass(lambda c: make_ig_fn(score, n_steps=n_steps, chunk_size=c, mesh=mesh),
                              first, args, n_steps=n_steps, memory_gib=memory_gib, mesh=mesh)
  ig = make_ig_fn(score, n_steps=n_steps, chunk_size=points, mesh=mesh)
  maps = [np.asarray(ig(jnp.asarray(images[i:i + chunk], jnp.float32), 0.0, args=args).attributions.sum(-1))
          for i in range(0, len(images), chunk)]
  return np.concatenate(maps)


def ig_points_per_pass(build: Callable[[int], Callable], inputs: jax.ShapeDtypeStruct, args: tuple, *,
                       n_steps: int, memory_gib: float = 0.0, mesh=None) -> int | None:
  """Path points per reverse-mode pass of the IG `build(points)` compiles, for `inputs` (one call's
  examples): the most that fit `memory_gib` GiB per device (compiled and measured,
  `cu_jax.parallel.memory.largest_fitting`). `memory_gib` 0: 90 % of the free memory the
  accelerator reports; on a platform that reports none (CPU), None (the IG default).
  """
  budget = memory_gib * GIB if memory_gib else free_device_bytes()
  if budget is None:
    return None
  devices = 1 if mesh is None else mesh.shape["data"]
  most = -(-inputs.shape[0] // devices) * n_steps  # one device's whole path: a single pass
  memory_of = lambda c: peak_bytes(build(c).lower(inputs, 0.0, args=args).compile())
  try:
    points, used = largest_fitting(memory_of, int(budget), most=most)
  except MemoryError as e:
    raise UserError(f"input-space IG {e} (attribution.memory_gib={memory_gib or 'the free device memory'}); "
                    "use a device with more memory, or a smaller model input (data.image_size)") from None
  logging.info("IG: %d path points per pass, %.0f MiB per device (budget %.0f MiB)", points, used / 2**20,
               budget / 2**20)
  return points

"""Gradients of a model's cross-entropy over a labelled image set, batch by batch over the mesh:
what SalUn's saliency (`salun`) and SSD's Fisher importance (`ssd`) are made of."""

from __future__ import annotations

from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cu_jax.data.datasets import ArraySource
from cu_jax.data.loader import eval_batches
from cu_jax.data.preprocess import preprocess
from cu_jax.parallel.mesh import data_sharded, replicated


def batch_gradients(graphdef, params, images: np.ndarray, labels: np.ndarray, data_cfg, mesh,
                    batch_size: int) -> Iterator[tuple[Any, int]]:
  """Yields (gradient of the *summed* cross-entropy of one batch w.r.t. `params`, the batch's real
  example count) for consecutive batches of (images, labels); padding rows count for nothing."""
  def grad_fn(params, batch):
    def loss(p):
      logits = nnx.merge(graphdef, p)(preprocess(batch["image"], data_cfg))
      ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], -1)[:, 0]
      return (ce * batch["mask"]).sum()
    return jax.grad(loss)(params)

  step = jax.jit(grad_fn, in_shardings=(replicated(mesh), data_sharded(mesh)), out_shardings=replicated(mesh))
  source = ArraySource(image=images, label=labels.astype(np.int32))
  for start, batch in zip(range(0, len(images), batch_size),
                          eval_batches(source, global_batch=batch_size, mesh=mesh, keys=("image", "label"))):
    yield step(params, batch), min(batch_size, len(images) - start)

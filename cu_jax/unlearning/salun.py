"""SalUn's weight saliency (Fan et al., ICLR 2024): train only the parameters the forget loss
depends on most.

The saliency of a parameter is |d L_forget / d theta|, the magnitude of the gradient of the summed
cross-entropy of the forget samples under their true label, taken once at the original model. The
mask keeps the (1 - sparsity) fraction with the largest saliency, under one threshold over the
whole model, and `random_label` fine-tuning then updates only those.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cu_jax.data.datasets import ArraySource
from cu_jax.data.loader import eval_batches
from cu_jax.data.preprocess import preprocess
from cu_jax.parallel.mesh import data_sharded, replicated


def forget_gradient(graphdef, params, images: np.ndarray, labels: np.ndarray, data_cfg, mesh, batch_size: int):
  """|gradient| of the summed cross-entropy of (images, labels) w.r.t. the parameters, over the mesh."""
  def grad_fn(params, batch):
    def loss(p):
      logits = nnx.merge(graphdef, p)(preprocess(batch["image"], data_cfg))
      ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], -1)[:, 0]
      return (ce * batch["mask"]).sum()
    return jax.grad(loss)(params)

  step = jax.jit(grad_fn, in_shardings=(replicated(mesh), data_sharded(mesh)), out_shardings=replicated(mesh))
  total = jax.tree.map(jnp.zeros_like, params)
  source = ArraySource(image=images, label=labels.astype(np.int32))
  for batch in eval_batches(source, global_batch=batch_size, mesh=mesh, keys=("image", "label")):
    total = jax.tree.map(jnp.add, total, step(params, batch))
  return jax.tree.map(jnp.abs, total)


def saliency_mask(grad_abs, sparsity: float) -> object:
  """1 for the (1 - sparsity) fraction of parameters with the largest |gradient|, over the whole
  model (one global threshold); 0 elsewhere."""
  flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grad_abs)])
  threshold = jnp.quantile(flat, sparsity)
  return jax.tree.map(lambda g: (g >= threshold).astype(jnp.float32), grad_abs)


def salun_mask(graphdef, params, data, section, *, data_cfg, mesh, batch_size: int, base_mask=None):
  """The `salun` method's parameter mask: saliency of the forget samples (`data.forget_image`, true
  label `data.forget`) at `params`, restricted to `base_mask` (e.g. the head) when given, thresholded
  at `section.sparsity`."""
  grads = forget_gradient(graphdef, params, data.forget_image, np.full(len(data.forget_image), data.forget),
                          data_cfg, mesh, batch_size)
  if base_mask is not None:
    grads = jax.tree.map(jnp.multiply, grads, base_mask)
  return saliency_mask(grads, section.sparsity)

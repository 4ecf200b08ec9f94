"""SalUn's weight saliency (Fan et al., ICLR 2024): train only the parameters the forget loss
depends on most.

The saliency of a parameter is |d L_forget / d theta|, the magnitude of the gradient of the summed
cross-entropy of the forget samples under their true label, taken once at the original model. The
mask keeps the (1 - sparsity) fraction with the largest saliency, under one threshold over the
parameters that may train (the whole model, or the head under `unlearn.scope=head`), and
`random_label` fine-tuning then updates only those.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cu_jax.unlearning.gradients import batch_gradients


def forget_gradient(graphdef, params, images: np.ndarray, labels: np.ndarray, data_cfg, mesh, batch_size: int):
  """|gradient| of the summed cross-entropy of (images, labels) w.r.t. the parameters, over the mesh."""
  total = jax.tree.map(jnp.zeros_like, params)
  for grad, _ in batch_gradients(graphdef, params, images, labels, data_cfg, mesh, batch_size):
    total = jax.tree.map(jnp.add, total, grad)
  return jax.tree.map(jnp.abs, total)


def saliency_mask(grad_abs, sparsity: float, within=None) -> object:
  """1 for the (1 - sparsity) fraction of parameters with the largest |gradient| (one global
  threshold), 0 elsewhere. `within` (a 0/1 mask, e.g. the head under `unlearn.scope=head`): the
  fraction and the threshold are taken over those parameters only, and the rest stay 0."""
  leaves = jax.tree.leaves(grad_abs)
  allowed = [None] * len(leaves) if within is None else jax.tree.leaves(within)
  flat = jnp.concatenate([g.ravel() if m is None else g.ravel()[np.asarray(m).ravel() > 0]
                          for g, m in zip(leaves, allowed)])
  threshold = jnp.quantile(flat, sparsity)
  mask = jax.tree.map(lambda g: (g >= threshold).astype(jnp.float32), grad_abs)
  return mask if within is None else jax.tree.map(jnp.multiply, mask, within)


def salun_mask(graphdef, params, data, section, *, data_cfg, mesh, batch_size: int, base_mask=None):
  """The `salun` method's parameter mask: saliency of the forget samples (`data.forget_image`, true
  label `data.forget`) at `params`, restricted to `base_mask` (e.g. the head) when given, thresholded
  at `section.sparsity`."""
  grads = forget_gradient(graphdef, params, data.forget_image, np.full(len(data.forget_image), data.forget),
                          data_cfg, mesh, batch_size)
  return saliency_mask(grads, section.sparsity, within=base_mask)

"""Selective Synaptic Dampening (Foster et al., AAAI 2024): unlearning without training.

The importance of a parameter for a data set is the diagonal of the Fisher information,
estimated as the mean over batches of the squared gradient of the batch's mean cross-entropy.
With I_D the importance for the training data and I_f for the forget samples, every parameter
that matters far more to the forget samples than to the data as a whole,

  I_f > alpha * I_D,

is dampened towards zero in proportion to how much more:

  theta <- theta * min(lambda * I_D / I_f, 1).

alpha (`unlearn.ssd.alpha`, the selection weighting) and lambda (`unlearn.ssd.lam`, the dampening
constant) default to the paper's full-class values, 10 and 1. I_D is estimated on a seeded sample
of `unlearn.ssd.examples` train samples (forget and retained in their proportions) rather than the
whole split: it is a mean, and a sample estimates it at a fraction of the cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cu_jax.unlearning.gradients import batch_gradients


def fisher_diagonal(graphdef, params, images: np.ndarray, labels: np.ndarray, data_cfg, mesh, batch_size: int):
  """Mean over batches of the squared gradient of each batch's mean cross-entropy."""
  total, batches = jax.tree.map(jnp.zeros_like, params), 0
  for grad, n in batch_gradients(graphdef, params, images, labels, data_cfg, mesh, batch_size):
    total = jax.tree.map(lambda t, g: t + jnp.square(g / n), total, grad)
    batches += 1
  return jax.tree.map(lambda t: t / max(batches, 1), total)


def dampen(params, forget_importance, data_importance, *, alpha: float, lam: float, within=None):
  """The SSD update of the module docstring; `within` (a 0/1 mask, e.g. the head under
  `unlearn.scope=head`) limits it to those parameters. Returns (new params, fraction dampened)."""
  def one(p, f, d, m):
    selected = f > alpha * d
    if m is not None:
      selected = selected & (m > 0)
    factor = jnp.minimum(lam * d / jnp.maximum(f, 1e-30), 1.0)
    return jnp.where(selected, p * factor, p).astype(p.dtype), selected.sum()
  masks = jax.tree.leaves(within) if within is not None else [None] * len(jax.tree.leaves(params))
  leaves, treedef = jax.tree.flatten(params)
  out = [one(p, f, d, m) for p, f, d, m in zip(leaves, jax.tree.leaves(forget_importance),
                                               jax.tree.leaves(data_importance), masks)]
  total = sum(p.size for p in leaves)
  return jax.tree.unflatten(treedef, [o[0] for o in out]), float(sum(int(o[1]) for o in out)) / total


def ssd_edit(graphdef, params, data, section, *, data_cfg, mesh, batch_size: int, base_mask=None):
  """The `ssd` method's edit of `params` (`methods.Method.edit`): I_f on `data.forget_image`, I_D
  on a seeded sample of the forget and retained train samples. Returns (params, summary)."""
  rng = np.random.default_rng([data.seed, 9])
  images = np.concatenate([data.forget_image, data.retain_image])
  labels = np.concatenate([np.full(len(data.forget_image), data.forget), data.retain_label])
  # A random sample in random order: I_D is a mean over batches, each a mix of the data as a
  # shuffled loader gives it (batches of forget samples only would inflate I_D where I_f is large).
  pick = rng.permutation(len(images))[:section.examples]
  forget_labels = np.full(len(data.forget_image), data.forget)
  i_f = fisher_diagonal(graphdef, params, data.forget_image, forget_labels, data_cfg, mesh, batch_size)
  i_d = fisher_diagonal(graphdef, params, images[pick], labels[pick], data_cfg, mesh, batch_size)
  params, fraction = dampen(params, i_f, i_d, alpha=section.alpha, lam=section.lam, within=base_mask)
  return params, {"dampened_fraction": fraction}

"""Optimizers from config: SGD+momentum or AdamW, warmup + cosine schedule, gradient clipping."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from cu_jax.utils.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(cfg, lr):
  return optax.sgd(lr, momentum=cfg.get("momentum", 0.9) or None, nesterov=cfg.get("nesterov", False))


@OPTIMIZERS.register("adamw")
def _adamw(cfg, lr):
  # Decay matrices only (kernels, embeddings); not biases, LayerNorm scales or the CLS token.
  mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2 and p.shape[0] > 1, params)
  return optax.adamw(lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                     weight_decay=cfg.get("weight_decay", 0.0), mask=mask)


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup to `cfg.lr`, then cosine decay to `cfg.lr * cfg.final_lr_ratio` (or constant)."""
  warmup = min(int(cfg.get("warmup_steps", 0)), max(total_steps - 1, 0))
  if cfg.get("schedule", "cosine") == "constant":
    after = optax.constant_schedule(cfg.lr)
  else:
    after = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1),
                                        alpha=cfg.get("final_lr_ratio", 0.0))
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


class MaskState(NamedTuple):
  mask: Any


def mask_updates(mask: Any) -> optax.GradientTransformation:
  """Multiplies every update by `mask` (a pytree of 0/1 arrays shaped like the parameters).

  Applied last, after weight decay, so masked parameters do not move at all (head-only
  fine-tuning, SalUn's saliency mask). The mask lives in the optimizer state, not in the jitted
  function: it is sharded and checkpointed like the parameters instead of being baked in as a
  compile-time constant.
  """
  def init(params):
    del params
    return MaskState(jax.tree.map(lambda m: jax.numpy.asarray(m, jax.numpy.float32), mask))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, state.mask), state

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg, total_steps: int, update_mask: Any = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`cfg` is the `optim` config section; returns (transformation, learning-rate schedule).

  `update_mask`: only parameters where it is 1 are updated (see `mask_updates`).
  """
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.get("grad_clip_norm", 0.0):
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(OPTIMIZERS.get(cfg.name, "optim.name")(cfg, schedule))
  if update_mask is not None:
    parts.append(mask_updates(update_mask))
  return optax.chain(*parts), schedule

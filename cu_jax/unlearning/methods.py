"""Unlearning methods: one registry, one fine-tuning set format, one loss, one training loop.

A method turns the shared pieces (`UnlearnData`: retained samples, forget samples, the poisoned
forget set, the original model's logits) into a `Plan`: the columns of its fine-tuning set and
whether it starts from the original model or from scratch. Every column set is trained by the
foundation's sharded loop (`cu_jax.training.trainer.train`) with `unlearning_loss`:

  loss = mean_i [ ce_weight_i * CE(target_i, p_i) + kl_weight_i * KL(teacher_i || p_i) ]

- `concept_poison` (the paper's method): retained samples with their labels + the poisoned forget
  set (targeted / random / soft labels, optionally poisoned images), all with weight 1;
- `retrain`: from scratch on the retained samples only (never a forget sample): the reference;
- `finetune`: the retained samples only, from the original model;
- `neggrad`: descent on retained samples, ascent on forget samples (negative weight);
- `random_label`: forget samples relabelled uniformly over the other classes (Amnesiac, SalUn "RL");
- `salun`: `random_label` updating only the parameters with the largest forget-loss gradients;
- `scrub`: stay close to the original model (KL) on retained samples and move away from it on
  forget samples (negative KL weight), plus cross-entropy on retained samples.
A negative weight makes the term unbounded; each such term is capped at `ascent_cap` nats (no
gradient beyond it), so ascent stops pushing a sample once it is forgotten.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cu_jax.unlearning import poison
from cu_jax.utils.registry import Registry


@dataclasses.dataclass(frozen=True)
class UnlearnData:
  num_classes: int
  forget: int
  retain_image: np.ndarray  # (n_r, H, W, C) uint8, retained train samples
  retain_label: np.ndarray  # (n_r,)
  forget_image: np.ndarray  # (n_f, H, W, C) uint8, the forget class's train samples (clean)
  poison_image: np.ndarray  # (n_f, H, W, C) the poisoned forget set (poison stage)
  poison_target: np.ndarray  # (n_f, K)
  retain_teacher: np.ndarray | None = None  # (n_r, K) original model's logits (scrub)
  forget_teacher: np.ndarray | None = None  # (n_f, K)
  seed: int = 0


@dataclasses.dataclass
class Plan:
  columns: dict[str, np.ndarray]  # image, target, ce_weight, kl_weight [, teacher]
  from_scratch: bool = False
  saliency_mask: bool = False  # SalUn: train only the most forget-salient parameters

  def __len__(self) -> int:
    return len(self.columns["image"])


METHODS: Registry[Callable[[UnlearnData, object], Plan]] = Registry("unlearning method")


def _part(image: np.ndarray, target: np.ndarray, ce_weight: float, kl_weight: float = 0.0,
          teacher: np.ndarray | None = None) -> dict[str, np.ndarray]:
  n = len(image)
  cols = {"image": image, "target": target.astype(np.float32),
          "ce_weight": np.full(n, ce_weight, np.float32), "kl_weight": np.full(n, kl_weight, np.float32)}
  if teacher is not None:
    cols["teacher"] = teacher.astype(np.float32)
  return cols


def _concat(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _retain(d: UnlearnData, **kw) -> dict[str, np.ndarray]:
  return _part(d.retain_image, poison.one_hot(d.retain_label, d.num_classes), 1.0, **kw)


def _random_labels(d: UnlearnData) -> np.ndarray:
  spec = poison.LabelSpec(d.num_classes, d.forget, exclude_forget=True)
  return poison.LABELS.get("random")(spec, len(d.forget_image), np.random.default_rng([d.seed, 4]))[1]


@METHODS.register("concept_poison")
def _concept_poison(d: UnlearnData, cfg) -> Plan:
  return Plan(_concat(_retain(d), _part(d.poison_image, d.poison_target, 1.0)))


@METHODS.register("retrain")
def _retrain(d: UnlearnData, cfg) -> Plan:
  return Plan(_retain(d), from_scratch=True)


@METHODS.register("finetune")
def _finetune(d: UnlearnData, cfg) -> Plan:
  return Plan(_retain(d))


@METHODS.register("neggrad")
def _neggrad(d: UnlearnData, cfg) -> Plan:
  forget = _part(d.forget_image, poison.one_hot(np.full(len(d.forget_image), d.forget), d.num_classes),
                 -cfg.neggrad_weight)
  return Plan(_concat(_retain(d), forget))


@METHODS.register("random_label")
def _random_label(d: UnlearnData, cfg) -> Plan:
  return Plan(_concat(_retain(d), _part(d.forget_image, _random_labels(d), 1.0)))


@METHODS.register("salun")
def _salun(d: UnlearnData, cfg) -> Plan:
  return dataclasses.replace(_random_label(d, cfg), saliency_mask=True)


@METHODS.register("scrub")
def _scrub(d: UnlearnData, cfg) -> Plan:
  if d.retain_teacher is None or d.forget_teacher is None:
    raise ValueError("scrub needs the original model's logits (retain_teacher, forget_teacher)")
  retain = _retain(d, kl_weight=cfg.scrub_kl_weight, teacher=d.retain_teacher)
  forget = _part(d.forget_image, np.zeros((len(d.forget_image), d.num_classes)), 0.0,
                 kl_weight=-cfg.scrub_forget_weight, teacher=d.forget_teacher)
  return Plan(_concat(retain, forget))


def unlearning_loss(ascent_cap: float):
  """The `LossFn` of every method (module docstring); reads the plan's columns from the batch."""
  def loss_fn(model, images, batch, key):
    logits = model(images, train=True, key=key)
    log_p = jax.nn.log_softmax(logits)
    ce = -(batch["target"] * log_p).sum(-1)

    def weighted(w, term):  # a negative weight ascends, up to `ascent_cap` nats
      return jnp.where(w >= 0, w * term, w * jnp.minimum(term, ascent_cap))

    per_example = weighted(batch["ce_weight"], ce)
    if "teacher" in batch:
      log_t = jax.nn.log_softmax(batch["teacher"])
      kl = (jnp.exp(log_t) * (log_t - log_p)).sum(-1)
      per_example = per_example + weighted(batch["kl_weight"], kl)
    hits = jnp.argmax(logits, -1) == jnp.argmax(batch["target"], -1)
    counted = batch["ce_weight"] > 0
    accuracy = (hits * counted).sum() / jnp.maximum(counted.sum(), 1)
    return per_example.mean(), {"accuracy": accuracy}
  return loss_fn


def head_mask(params) -> object:
  """1 for the classification head's parameters, 0 elsewhere (head-only fine-tuning)."""
  def leaf(path, x):
    return jnp.full(x.shape, any(getattr(k, "key", None) == "head" for k in path), jnp.float32)
  return jax.tree_util.tree_map_with_path(leaf, params)


def saliency_mask(grad_abs, sparsity: float) -> object:
  """SalUn's mask: 1 for the (1 - sparsity) fraction of parameters with the largest |gradient| of
  the forget loss, over the whole model (one global threshold)."""
  flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grad_abs)])
  threshold = jnp.quantile(flat, sparsity)
  return jax.tree.map(lambda g: (g >= threshold).astype(jnp.float32), grad_abs)

"""Unlearning methods: one registry, one fine-tuning set format, one loss, one training loop.

A method turns the shared pieces (`UnlearnData`: retained samples, forget samples, the poisoned
forget set, the original model's logits) into the columns of its fine-tuning set. Every column set
is trained from the original model by the shared sharded loop (`cu_jax.training.trainer.train`)
with `unlearning_loss`:

  loss = mean_i [ ce_weight_i * CE(target_i, p_i) + kl_weight_i * KL(teacher_i || p_i) ]

- `concept_poison` (the paper's method): retained samples with their labels + the poisoned forget
  set (targeted / random / soft labels, optionally poisoned images), all with weight 1;
- `finetune`: the retained samples only;
- `neggrad`: descent on retained samples, ascent on forget samples (negative weight);
- `random_label`: forget samples relabelled uniformly over the other classes (Amnesiac, SalUn "RL");
- `salun`: `random_label` updating only the parameters with the largest forget-loss gradients
  (`cu_jax.unlearning.salun`);
- `scrub`: stay close to the original model (KL) on retained samples and move away from it on
  forget samples (negative KL weight), plus cross-entropy on retained samples;
- `l1_sparse` (Jia et al., NeurIPS 2023): `finetune` with an L1 penalty on the weights
  (`unlearn.l1_sparse.weight` times the sum of |theta| over the parameters that train), which
  sparsifies the model towards the retained classes;
- `ssd` (Foster et al., AAAI 2024): no training; the parameters that matter far more to the forget
  samples than to the data are dampened (`cu_jax.unlearning.ssd`).
A negative weight makes the term unbounded; each such term is capped at `ascent_cap` nats (no
gradient beyond it), so ascent stops pushing a sample once it is forgotten.

The reference a method is compared with, a model retrained without the forget class, is trained
on `retrain_set` from scratch by the same loop; it is not a method (it never sees the original).

Each method is registered with what it needs, so a caller (the CLI pipeline, a notebook) asks the
registry instead of knowing methods by name: the pieces of `UnlearnData` beyond the samples
(`needs`: "poison", "teacher"), its own config section under `unlearn` (`section`, e.g.
`unlearn.salun.sparsity`), a parameter mask computed before training (`param_mask`), a penalty
on the trained parameters added to the loss (`penalty`), or, for a method that does not train, the
edit of the parameters that replaces training (`edit`). Adding a method is one registration.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cu_jax.unlearning import poison
from cu_jax.unlearning.salun import salun_mask
from cu_jax.unlearning.ssd import ssd_edit
from cu_jax.utils.registry import Registry


@dataclasses.dataclass(frozen=True)
class UnlearnData:
  num_classes: int
  forget: int
  retain_image: np.ndarray  # (n_r, H, W, C) uint8, retained train samples
  retain_label: np.ndarray  # (n_r,)
  forget_image: np.ndarray  # (n_f, H, W, C) uint8, the forget class's train samples (clean)
  poison_image: np.ndarray | None = None  # (n_f, H, W, C) the poisoned forget set (need "poison")
  poison_target: np.ndarray | None = None  # (n_f, K)
  retain_teacher: np.ndarray | None = None  # (n_r, K) original model's logits (need "teacher")
  forget_teacher: np.ndarray | None = None  # (n_f, K)
  seed: int = 0


# need -> (the UnlearnData fields it fills, what provides them)
NEEDS = {
    "poison": (("poison_image", "poison_target"), "the poisoned forget set (the poison stage)"),
    "teacher": (("retain_teacher", "forget_teacher"), "the original model's logits on the train samples"),
}


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered unlearning method: how it builds its fine-tuning set, and what it needs."""
  name: str
  # (data, its config section or None) -> columns; None for a method that edits instead of training
  build: Callable[[UnlearnData, Any], dict[str, np.ndarray]] | None
  needs: frozenset[str] = frozenset()  # keys of NEEDS
  section: str | None = None  # its own config section under `unlearn` (value ranges: cu_jax.utils.ranges)
  # (graphdef, params, data, section, *, data_cfg, mesh, batch_size, base_mask) -> 0/1 mask of the
  # parameters it may update, computed at the original model
  param_mask: Callable[..., Any] | None = None
  # (params, section) -> a scalar added to the loss (e.g. an L1 penalty)
  penalty: Callable[[Any, Any], jax.Array] | None = None
  # (graphdef, params, data, section, *, data_cfg, mesh, batch_size, base_mask) -> (params, summary):
  # the unlearned parameters without training
  edit: Callable[..., Any] | None = None

  def config(self, unlearn_cfg) -> Any:
    """This method's section of the `unlearn` config (None if it has none)."""
    return unlearn_cfg[self.section] if self.section else None


METHODS: Registry[Method] = Registry("unlearning method")


def register(name: str, *, needs: tuple[str, ...] = (), section: str | None = None,
             param_mask: Callable[..., Any] | None = None, penalty: Callable[[Any, Any], jax.Array] | None = None,
             edit: Callable[..., Any] | None = None):
  unknown = set(needs) - set(NEEDS)
  if unknown:
    raise ValueError(f"method {name!r} declares unknown needs {sorted(unknown)}; known: {sorted(NEEDS)}")

  def deco(build):
    METHODS.register(name)(Method(name, build, frozenset(needs), section, param_mask, penalty, edit))
    return build
  return deco


def needs_of(names) -> set[str]:
  """Everything the methods `names` need beyond the samples (keys of `NEEDS`)."""
  return set().union(*(METHODS.get(n).needs for n in names))


def fine_tuning_set(name: str, data: UnlearnData, unlearn_cfg) -> dict[str, np.ndarray]:
  """The columns (image, target, ce_weight, kl_weight[, teacher]) method `name` fine-tunes on."""
  method = METHODS.get(name)
  for need in sorted(method.needs):
    fields, what = NEEDS[need]
    if any(getattr(data, f) is None for f in fields):
      raise ValueError(f"unlearning method {name!r} needs {what} ({', '.join(fields)} of UnlearnData)")
  if method.build is None:
    raise ValueError(f"unlearning method {name!r} does not fine-tune (it edits the parameters)")
  return method.build(data, method.config(unlearn_cfg))


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


def retrain_set(d: UnlearnData, label_smoothing: float = 0.0) -> dict[str, np.ndarray]:
  """The retrained reference's training set: the retained samples with their labels (smoothed as
  the base recipe's are), never a forget sample (the columns of `unlearning_loss`, so the same
  loop trains it)."""
  columns = _retain(d)
  columns["target"] = columns["target"] * (1 - label_smoothing) + label_smoothing / d.num_classes
  return columns


def _random_labels(d: UnlearnData) -> np.ndarray:
  spec = poison.LabelSpec(d.num_classes, d.forget, exclude_forget=True)
  return poison.LABELS.get("random")(spec, len(d.forget_image), np.random.default_rng([d.seed, 4]))[1]


@register("concept_poison", needs=("poison",))
def _concept_poison(d: UnlearnData, cfg) -> dict[str, np.ndarray]:
  return _concat(_retain(d), _part(d.poison_image, d.poison_target, 1.0))


@register("finetune")
def _finetune(d: UnlearnData, cfg) -> dict[str, np.ndarray]:
  return _retain(d)


@register("neggrad", section="neggrad")
def _neggrad(d: UnlearnData, cfg) -> dict[str, np.ndarray]:
  forget = _part(d.forget_image, poison.one_hot(np.full(len(d.forget_image), d.forget), d.num_classes),
                 -cfg.weight)
  return _concat(_retain(d), forget)


@register("random_label")
def _random_label(d: UnlearnData, cfg) -> dict[str, np.ndarray]:
  return _concat(_retain(d), _part(d.forget_image, _random_labels(d), 1.0))


@register("salun", section="salun", param_mask=salun_mask)
def _salun(d: UnlearnData, cfg) -> dict[str, np.ndarray]:
  return _random_label(d, None)


@register("scrub", needs=("teacher",), section="scrub")
def _scrub(d: UnlearnData, cfg) -> dict[str, np.ndarray]:
  retain = _retain(d, kl_weight=cfg.kl_weight, teacher=d.retain_teacher)
  forget = _part(d.forget_image, np.zeros((len(d.forget_image), d.num_classes)), 0.0,
                 kl_weight=-cfg.forget_weight, teacher=d.forget_teacher)
  return _concat(retain, forget)


def _l1(params, cfg) -> jax.Array:
  return cfg.weight * sum(jnp.abs(p).sum() for p in jax.tree.leaves(params))


@register("l1_sparse", section="l1_sparse", penalty=_l1)
def _l1_sparse(d: UnlearnData, cfg) -> dict[str, np.ndarray]:
  return _retain(d)


register("ssd", section="ssd", edit=ssd_edit)(None)


def unlearning_loss(ascent_cap: float, penalty: Callable[[Any], jax.Array] | None = None):
  """The `LossFn` of every method (module docstring); reads the plan's columns from the batch.
  `penalty(params)`: a method's term on the model's parameters, added once per batch."""
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
    loss = per_example.mean()
    if penalty is not None:
      loss = loss + penalty(nnx.state(model, nnx.Param))
    return loss, {"accuracy": accuracy}
  return loss_fn


def head_mask(params) -> object:
  """1 for the classification head's parameters, 0 elsewhere (head-only fine-tuning)."""
  def leaf(path, x):
    return jnp.full(x.shape, any(getattr(k, "key", None) == "head" for k in path), jnp.float32)
  return jax.tree_util.tree_map_with_path(leaf, params)


# `unlearn.scope` -> the parameters fine-tuning may update (a 0/1 mask; None: all of them)
SCOPES: dict[str, Callable[[Any], Any]] = {"full": lambda params: None, "head": head_mask}

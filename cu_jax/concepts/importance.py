"""Concept importance per class, the forget class's key concepts, and its donor class.

Two rankings of class c's concepts:
- `weight`: the PCBM weights W[c, :] (what the reference code ranks by);
- `ig`: Integrated Gradients of the class log-probability log softmax(W s + b)[c] with respect to
  the concept scores s, from a baseline s0 (zeros or the mean scores), averaged over the class's
  examples. (IG of a *logit* through the linear head would be exactly W[c, j] (s_j - s0_j); the
  log-probability is what makes IG differ from the weights: it credits a concept for separating c
  from the classes it competes with on these examples.)
  IG also credits a concept for being *absent* (s_j < s0_j with a negative weight: a coat is "not
  footwear"). The concepts that drive a class, the ones a poison patch or a donor must carry, are
  those present in its images, so the ranking keeps an example's attribution to concept j only
  where s_j > s0_j (`ig`); the signed mean is kept as `ig_signed` for reference.

Donor rule: the class d != f whose images show f's key concepts most,
  d = argmax_{c != f} sum_{j in key(f)} z[c, j],
where z[c, j] is the mean score of concept j over class c's examples, standardised per concept
over the whole train split. (The reference rule, "among f's top concepts, the class whose own top
concept it is", ranks by weights; a weight can be large because a concept is absent.)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from cu_jax.attribution.ig import make_ig_fn
from cu_jax.concepts.pcbm import fit_elastic_net
from cu_jax.utils.errors import UserError

RANKINGS = ("ig", "weight")
BASELINES = ("mean", "zeros")  # IG baseline of the concept scores


def check_settings(ranking: str, baseline: str, method: str = "gausslegendre") -> None:
  """Refuses an unknown ranking, IG baseline or quadrature rule (`attribution.ranking` /
  `attribution.baseline` / `attribution.method`)."""
  from cu_jax.attribution.ig import QUADRATURE_RULES
  if method not in QUADRATURE_RULES:
    raise UserError(f"unknown attribution.method {method!r}; valid: {', '.join(map(repr, QUADRATURE_RULES))}")
  if ranking not in RANKINGS:
    raise UserError(f"unknown attribution.ranking {ranking!r}; valid: {', '.join(map(repr, RANKINGS))}")
  if baseline not in BASELINES:
    raise UserError(f"unknown attribution.baseline {baseline!r}; valid: {', '.join(map(repr, BASELINES))}")


@dataclasses.dataclass(frozen=True)
class Importance:
  weight: np.ndarray  # (K, m) PCBM weights
  ig: np.ndarray  # (K, m) mean IG attribution of log p(c) where the concept is present (s > s0)
  ig_signed: np.ndarray  # (K, m) mean IG attribution of log p(c), all examples
  ig_delta: float  # mean |completeness error| of the IG runs

  def of(self, ranking: str) -> np.ndarray:
    if ranking not in RANKINGS:
      raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    return self.weight if ranking == "weight" else self.ig


def _log_probs(s, w, b):
  return jax.nn.log_softmax(s @ w.T + b)


def concept_ig(weight: np.ndarray, bias: np.ndarray, scores: np.ndarray, labels: np.ndarray, *,
               baseline: str | np.ndarray = "mean", reference: np.ndarray | None = None, n_steps: int = 32,
               method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray, float]:
  """Per-class mean IG of log softmax(W s + b)[label] w.r.t. s: (present-only (K, m), signed (K, m),
  mean |completeness delta|).

  `baseline`: "zeros", "mean" (the mean scores of `reference`, default `scores`: the population
  the head was fit on) or an (m,) score vector. This is the one recipe of concept importance: the
  attribute stage runs it on the PCBM head and the train split, the audit (`model_importance`) on a
  head distilled from each evaluated model.
  """
  w, b = jnp.asarray(weight), jnp.asarray(bias)
  num_classes = w.shape[0]
  if isinstance(baseline, str):
    reference = scores if reference is None else reference
    base = np.zeros(scores.shape[1], np.float32) if baseline == "zeros" else reference.mean(0).astype(np.float32)
  else:
    base = np.asarray(baseline, np.float32)
  ig = make_ig_fn(_log_probs, n_steps=n_steps, method=method)
  result = ig(jnp.asarray(scores, jnp.float32), jnp.asarray(base), jnp.asarray(labels), args=(w, b))
  attributions = np.asarray(result.attributions)
  present = np.where(scores > base, attributions, 0.0)
  return (class_means(present, labels, num_classes), class_means(attributions, labels, num_classes),
          float(np.abs(np.asarray(result.delta)).mean()))


def model_importance(forget_scores: np.ndarray, retain_scores: np.ndarray, forget_probs: np.ndarray,
                     retain_probs: np.ndarray, forget: int, num_classes: int, *, lam: float, l1_ratio: float,
                     max_iter: int, tol: float, baseline: str = "mean", n_steps: int = 32,
                     method: str = "gausslegendre", seed: int = 0) -> np.ndarray:
  """(m,) the forget class's concept importance under one model (an audit of what unlearning changed).

  Inputs are the concept scores (a fixed bank's projections of this model's embeddings) and this
  model's softmax outputs, on the forget class's train samples and on retained train samples. A
  PCBM head distils the model's softmax on a class-balanced sample (the retained samples plus as many
  forget samples as an average retained class has there, like the training set); `concept_ig` then
  explains log p(forget | concepts) over all forget samples, from that sample's mean scores.
  Distilling the softmax, not the argmax, keeps log p(forget) meaningful for a model that never
  predicts the forget class (its argmax refit would leave that class's weights to the penalty alone).
  """
  n_forget = min(len(forget_scores), max(1, round(len(retain_scores) / max(1, num_classes - 1))))
  pick = np.sort(np.random.default_rng([seed, 7]).choice(len(forget_scores), n_forget, replace=False))
  scores = np.concatenate([forget_scores[pick], retain_scores])
  probs = np.concatenate([forget_probs[pick], retain_probs])
  head = fit_elastic_net(scores, probs, num_classes, lam=lam, l1_ratio=l1_ratio, max_iter=max_iter, tol=tol)
  ig, _, _ = concept_ig(np.asarray(head.weight), np.asarray(head.bias), forget_scores,
                        np.full(len(forget_scores), forget), baseline=baseline, reference=scores,
                        n_steps=n_steps, method=method)
  return ig[forget]


def class_means(values: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """(K, m) mean of `values` (N, m) over each class's examples (zeros for an empty class)."""
  out = np.zeros((num_classes, values.shape[1]), np.float32)
  for c in range(num_classes):
    if (labels == c).any():
      out[c] = values[labels == c].mean(0)
  return out


def top_concepts(importance: np.ndarray, k: int) -> np.ndarray:
  """(K, k) indices of each class's k most important concepts, most important first."""
  return np.argsort(-importance, axis=1, kind="stable")[:, :k]


def concept_presence(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """(K, m) z[c, j]: class c's mean score of concept j, standardised per concept."""
  z = (scores - scores.mean(0)) / np.maximum(scores.std(0), 1e-12)
  return class_means(z, labels, num_classes)


def rank_concepts(weight: np.ndarray, bias: np.ndarray, scores: np.ndarray, labels: np.ndarray, num_classes: int, *,
                  ranking: str = "ig", baseline: str = "mean", n_steps: int = 32, method: str = "gausslegendre",
                  top_k: int = 3) -> tuple[Importance, np.ndarray, np.ndarray]:
  """What key concepts and donors are chosen from, for a PCBM head (`weight`, `bias`) over concept
  `scores` (N, m) with `labels`: every ranking (`Importance`), each class's `top_k` concepts under
  `ranking` (K, k), and the per-class concept presence (K, m)."""
  ig, ig_signed, ig_delta = concept_ig(weight, bias, scores, labels, baseline=baseline, n_steps=n_steps, method=method)
  ranks = Importance(weight=weight, ig=ig, ig_signed=ig_signed, ig_delta=ig_delta)
  top = top_concepts(ranks.of(ranking), min(top_k, scores.shape[1]))
  return ranks, top, concept_presence(scores, labels, num_classes)


def donor_class(presence: np.ndarray, key: np.ndarray, forget: int) -> tuple[int, np.ndarray]:
  """(donor, per-class donor scores) by the rule in the module docstring."""
  scores = presence[:, np.asarray(key)].sum(axis=1)
  scores[forget] = -np.inf
  return int(np.argmax(scores)), scores


def confusion_between(logits: np.ndarray, labels: np.ndarray, a: int, b: int) -> dict[str, float]:
  """How often the model mistakes class a for b and b for a (test split)."""
  pred = logits.argmax(-1)
  rate = lambda x, y: float((pred[labels == x] == y).mean()) if (labels == x).any() else float("nan")
  return {"a_as_b": rate(a, b), "b_as_a": rate(b, a)}

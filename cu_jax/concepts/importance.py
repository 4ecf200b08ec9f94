"""Concept importance per class, the forget class's key concepts, and its donor class.

Two rankings of class c's concepts (DESIGN §2.3):
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

from cu_jax.attribution.ig import integrated_gradients


@dataclasses.dataclass(frozen=True)
class Importance:
  weight: np.ndarray  # (K, m) PCBM weights
  ig: np.ndarray  # (K, m) mean IG attribution of log p(c) where the concept is present (s > s0)
  ig_signed: np.ndarray  # (K, m) mean IG attribution of log p(c), all examples
  ig_delta: float  # mean |completeness error| of the IG runs

  def of(self, ranking: str) -> np.ndarray:
    if ranking not in ("weight", "ig"):
      raise ValueError(f"ranking must be 'weight' or 'ig', got {ranking!r}")
    return self.weight if ranking == "weight" else self.ig


def concept_ig(weight: np.ndarray, bias: np.ndarray, scores: np.ndarray, labels: np.ndarray, *,
               baseline: str | np.ndarray = "mean", n_steps: int = 32, method: str = "gausslegendre"
               ) -> tuple[np.ndarray, np.ndarray, float]:
  """Per-class mean IG of log softmax(W s + b)[label] w.r.t. s: (present-only (K, m), signed (K, m),
  mean |completeness delta|). `baseline`: "zeros", "mean" (of `scores`) or an (m,) score vector."""
  w, b = jnp.asarray(weight), jnp.asarray(bias)
  num_classes = w.shape[0]
  if isinstance(baseline, str):
    base = np.zeros(scores.shape[1], np.float32) if baseline == "zeros" else scores.mean(0).astype(np.float32)
  else:
    base = np.asarray(baseline, np.float32)

  def log_probs(s):
    return jax.nn.log_softmax(s @ w.T + b)

  result = jax.jit(lambda s, t: integrated_gradients(log_probs, s, jnp.asarray(base), target=t,
                                                     n_steps=n_steps, method=method))(
      jnp.asarray(scores, jnp.float32), jnp.asarray(labels))
  attributions = np.asarray(result.attributions)
  present = np.where(scores > base, attributions, 0.0)
  return (class_means(present, labels, num_classes), class_means(attributions, labels, num_classes),
          float(np.abs(np.asarray(result.delta)).mean()))


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

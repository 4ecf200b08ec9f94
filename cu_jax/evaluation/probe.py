"""Linear probe: does the model's representation still separate the forget class?

Unlearning can silence a class at the head (its logit never wins) while the features below still
carry it, one linear layer away from being relearned. The probe measures that: a logistic
regression on the model's embeddings (standardised first, so one regularisation strength suits
any feature scale), trained to tell forget-class images from the rest on train images and scored
on test images by balanced accuracy, the mean of the two per-side recalls, which is 0.5 for a probe
that cannot tell the sides apart whatever their sizes (the rest outnumbers the forget class ~K-1 to
1, so plain accuracy would reward answering "rest"). 0.5 = the representation no longer separates
the class linearly; 1.0 = it fully does.

The probe is trained on balanced sides: each side is subsampled at random (seeded) to
min(forget count, rest count, `max_per_side`) examples, which also bounds its cost.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cu_jax.evaluation.mia import check_set


def _split_sides(embed: np.ndarray, is_forget: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(forget rows, rest rows) of (N, D) `embed`, each checked to hold at least 2 examples."""
  embed, is_forget = np.asarray(embed), np.asarray(is_forget).astype(bool)
  if embed.ndim != 2 or is_forget.shape != (len(embed),):
    raise ValueError(f"{split}: expected (N, D) embeddings and (N,) flags, got {embed.shape} and "
                     f"{is_forget.shape}")
  return (check_set(embed[is_forget], f"{split} forget-class"),
          check_set(embed[~is_forget], f"{split} rest (non-forget)"))


def probe_accuracy(train_embed: np.ndarray, train_is_forget: np.ndarray, test_embed: np.ndarray,
                   test_is_forget: np.ndarray, *, seed: int = 0, max_per_side: int = 2000) -> float:
  """Balanced test accuracy of a standardise + logistic-regression probe of forget class vs rest,
  trained on balanced (at most `max_per_side` a side) train embeddings."""
  if max_per_side < 2:
    raise ValueError(f"max_per_side must be at least 2, got {max_per_side}")
  forget, rest = _split_sides(train_embed, train_is_forget, "train")
  _split_sides(test_embed, test_is_forget, "test")
  rng = np.random.default_rng(seed)
  n = min(len(forget), len(rest), max_per_side)
  pick = lambda x: x[np.sort(rng.choice(len(x), n, replace=False))]
  features = np.concatenate([pick(forget), pick(rest)]).astype(np.float64)
  targets = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
  probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, targets)
  predicted = probe.predict(np.asarray(test_embed, np.float64))
  return float(balanced_accuracy_score(np.asarray(test_is_forget).astype(bool), predicted))

"""Concept activation vectors (Kim et al., 2018) as the PCBM reference learns them.

For each concept, a linear SVM separates the embeddings of examples that show the concept from
examples that do not (up to `n_per_side` of each), with a small sweep over the regularisation C
chosen on a validation split; the normal of the hyperplane is the concept vector V_j and its
offset the intercept b_j. Accuracy on held-out examples (never used for fitting or choosing C)
is kept per concept, and concepts below `min_accuracy` are dropped as not learnable.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from absl import logging
from sklearn.svm import LinearSVC

from cu_jax.concepts.bank import ConceptBank


@dataclasses.dataclass(frozen=True)
class CAVOptions:
  n_per_side: int = 100  # training examples per side (positives, negatives)
  n_heldout: int = 100  # held-out examples per side for the quality estimate
  cs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
  min_accuracy: float = 0.7
  seed: int = 0


def _split(rng, pool: np.ndarray, n_train: int, n_held: int) -> tuple[np.ndarray, np.ndarray]:
  pool = rng.permutation(pool)
  n_held = min(n_held, len(pool) // 3)
  return pool[n_held:n_held + n_train], pool[:n_held]


def _fit_svm(x, y, c):
  return LinearSVC(C=c, fit_intercept=True, max_iter=20000).fit(x, y)


def learn_cav(embeddings: np.ndarray, positive: np.ndarray, opts: CAVOptions, rng) -> tuple[np.ndarray, float, dict]:
  """(vector (d,), intercept, quality) of one concept; `positive` is a boolean mask over examples."""
  pos_train, pos_held = _split(rng, np.flatnonzero(positive), opts.n_per_side, opts.n_heldout)
  neg_train, neg_held = _split(rng, np.flatnonzero(~positive), opts.n_per_side, opts.n_heldout)
  if min(len(pos_train), len(neg_train), len(pos_held), len(neg_held)) < 2:
    return np.zeros(embeddings.shape[1], np.float32), 0.0, {"heldout_accuracy": 0.0, "n_pos": int(positive.sum()),
                                                            "n_neg": int((~positive).sum()), "C": None}
  idx = np.concatenate([pos_train, neg_train])
  x, y = embeddings[idx], np.r_[np.ones(len(pos_train)), np.zeros(len(neg_train))]
  # choose C on a validation fold of the training examples
  fold = rng.permutation(len(idx)) % 4 == 0
  scores = {c: _fit_svm(x[~fold], y[~fold], c).score(x[fold], y[fold]) for c in opts.cs}
  best_c = max(opts.cs, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
  svm = _fit_svm(x, y, best_c)
  held = np.concatenate([pos_held, neg_held])
  y_held = np.r_[np.ones(len(pos_held)), np.zeros(len(neg_held))]
  accuracy = float(svm.score(embeddings[held], y_held))
  quality = {"heldout_accuracy": accuracy, "validation_accuracy": float(scores[best_c]), "C": best_c,
             "n_pos": int(positive.sum()), "n_neg": int((~positive).sum())}
  return svm.coef_[0].astype(np.float32), float(svm.intercept_[0]), quality


def learn_cav_bank(embeddings: np.ndarray, concept_labels: np.ndarray, names: Sequence[str],
                   opts: CAVOptions = CAVOptions(), info: dict | None = None) -> tuple[ConceptBank, ConceptBank]:
  """(learnable bank, full bank before the accuracy filter) from per-example boolean labels (N, m)."""
  concept_labels = np.asarray(concept_labels).astype(bool)
  rng = np.random.default_rng(opts.seed)
  vectors, intercepts, quality = [], [], []
  for j, name in enumerate(names):
    v, b, q = learn_cav(embeddings, concept_labels[:, j], opts, rng)
    vectors.append(v)
    intercepts.append(b)
    quality.append(q)
    logging.info("concept %-24s held-out accuracy %.3f (C=%s)", name, q["heldout_accuracy"], q["C"])
  full = ConceptBank(np.stack(vectors), np.asarray(intercepts, np.float32), tuple(names), tuple(quality),
                     kind="cav", info=dict(info or {}, min_accuracy=opts.min_accuracy))
  keep = np.asarray([q["heldout_accuracy"] >= opts.min_accuracy for q in quality])
  dropped = [n for n, k in zip(names, keep) if not k]
  if dropped:
    logging.warning("dropped %d concepts below held-out accuracy %.2f: %s", len(dropped), opts.min_accuracy, dropped)
  return full.select(keep), full

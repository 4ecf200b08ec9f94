"""U-LiRA: a per-example likelihood-ratio attack that tells an unlearned model from a retrained one.

Hayes et al. (2024), "Inexact unlearning needs more careful evaluations to avoid a false sense of
privacy". Shadow pairs are trained on the same recipe: the "in" model of a pair is trained WITH the
forget examples and then unlearned by the method under audit, the "out" model is trained WITHOUT
them (a retrained model). For each forget example the attacker models its logit-scaled confidence
phi = log p_y - log(1 - p_y) under each population as a Gaussian (mean and variance over the shadow
pairs) and scores a target model by the log likelihood ratio log N(phi; in) - log N(phi; out). A
method indistinguishable from retraining gives an AUC of 0.5; a method that leaves a per-example
trace pushes it towards 1, even where every average metric matches the retrained model's.

Everything here is numpy in, numbers out; training the shadow pairs is the caller's.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score, roc_curve


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(N,) phi = log p_y - log(1 - p_y) from (N, K) logits, computed as
  logit_y - logsumexp(logits without y): exact where p_y rounds to 1 or 0 in floating point."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
  rows = np.arange(len(labels))
  others = logits.copy()
  others[rows, labels] = -np.inf
  return logits[rows, labels] - logsumexp(others, axis=-1)


def _gaussian_logpdf(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
  return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


def lira_scores(in_conf: np.ndarray, out_conf: np.ndarray, target_conf: np.ndarray, *,
                variance: str = "auto", min_var: float = 1e-4) -> np.ndarray:
  """Per-example log likelihood ratio of `target_conf` (..., N) under Gaussians fit per example to
  `in_conf` (S_in, N) and `out_conf` (S_out, N), the shadow models' confidences (higher = looks
  more like the "in" population).

  Each side's mean is per example. Its variance is per example ("per_example") or one variance
  pooled over the examples ("global"): with a few shadow models a per-example variance rests on
  a handful of points and can be ~0, which makes the ratio erratic (LiRA, Carlini et al. 2022, uses
  a fixed variance below ~64 shadow models). "auto": global below 32 models a side. Variances are
  floored at `min_var`."""
  in_conf, out_conf = np.asarray(in_conf, np.float64), np.asarray(out_conf, np.float64)
  if in_conf.ndim != 2 or out_conf.ndim != 2 or in_conf.shape[1] != out_conf.shape[1]:
    raise ValueError(f"expected (models, examples) confidences of one width, got {in_conf.shape} and {out_conf.shape}")
  if min(len(in_conf), len(out_conf)) < 2:
    raise ValueError(f"a per-example Gaussian needs at least 2 shadow models a side, got {len(in_conf)} "
                     f"and {len(out_conf)}")
  if variance == "auto":
    variance = "global" if min(len(in_conf), len(out_conf)) < 32 else "per_example"
  if variance not in ("global", "per_example"):
    raise ValueError(f"variance must be 'auto', 'global' or 'per_example', got {variance!r}")
  pooled = variance == "global"
  var = lambda c: np.maximum(c.var(0, ddof=1).mean() if pooled else c.var(0, ddof=1), min_var)
  target = np.asarray(target_conf, np.float64)
  return (_gaussian_logpdf(target, in_conf.mean(0), var(in_conf))
          - _gaussian_logpdf(target, out_conf.mean(0), var(out_conf)))


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
  """The largest true-positive rate of a threshold on `scores` whose false-positive rate is <= `fpr`."""
  fprs, tprs, _ = roc_curve(labels, scores)
  return float(tprs[fprs <= fpr].max())


def ulira(in_conf: np.ndarray, out_conf: np.ndarray, *, fpr: float = 0.01, variance: str = "auto") -> dict:
  """The attack over S shadow pairs, leave one pair out: for pair i the Gaussians are fit on the
  other S - 1 pairs, and its unlearned model's (`in_conf[i]`, positive) and retrained model's
  (`out_conf[i]`, negative) per-example scores are pooled over every pair.

  `in_conf`, `out_conf`: (S, N) logit-scaled confidences (`logit_confidence`) of the same N forget
  examples under each pair's unlearned and retrained model. Returns {"auc", "tpr_at_fpr", "fpr",
  "pairs", "examples"}: AUC 0.5 = the method cannot be told from retraining.
  """
  in_conf, out_conf = np.asarray(in_conf, np.float64), np.asarray(out_conf, np.float64)
  if in_conf.shape != out_conf.shape or in_conf.ndim != 2:
    raise ValueError(f"expected two (pairs, examples) arrays of one shape, got {in_conf.shape} and {out_conf.shape}")
  pairs = len(in_conf)
  if pairs < 3:
    raise ValueError(f"U-LiRA needs at least 3 shadow pairs (2 to fit each held-out pair's Gaussians), got {pairs}")
  scores, labels = [], []
  for i in range(pairs):
    rest = np.arange(pairs) != i
    for conf, label in ((in_conf[i], 1), (out_conf[i], 0)):
      scores.append(lira_scores(in_conf[rest], out_conf[rest], conf, variance=variance))
      labels.append(np.full(in_conf.shape[1], label))
  scores, labels = np.concatenate(scores), np.concatenate(labels)
  return {"auc": float(roc_auc_score(labels, scores)), "tpr_at_fpr": tpr_at_fpr(labels, scores, fpr), "fpr": fpr,
          "pairs": pairs, "examples": int(in_conf.shape[1])}

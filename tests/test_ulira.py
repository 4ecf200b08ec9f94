"""U-LiRA's statistic on synthetic confidences with a known answer."""

import numpy as np
import pytest
import scipy.special
from scipy.stats import norm

from cu_jax.evaluation.ulira import lira_scores, logit_confidence, tpr_at_fpr, ulira


def test_logit_confidence_matches_the_definition_and_stays_finite_when_saturated():
  rng = np.random.default_rng(0)
  logits, labels = rng.normal(size=(50, 6)), rng.integers(0, 6, 50)
  p = scipy.special.softmax(logits, -1)[np.arange(50), labels]
  np.testing.assert_allclose(logit_confidence(logits, labels), np.log(p / (1 - p)), rtol=1e-10)
  saturated = np.array([[60.0, 0.0, 0.0], [-60.0, 0.0, 0.0]])
  np.testing.assert_allclose(logit_confidence(saturated, np.array([0, 0])), [60 - np.log(2), -60 - np.log(2)])


def test_scores_are_the_gaussian_log_likelihood_ratio():
  rng = np.random.default_rng(1)
  in_conf, out_conf = rng.normal(2, 1, (8, 5)), rng.normal(0, 0.5, (8, 5))
  target = rng.normal(size=5)
  expect = (norm.logpdf(target, in_conf.mean(0), in_conf.std(0, ddof=1))
            - norm.logpdf(target, out_conf.mean(0), out_conf.std(0, ddof=1)))
  np.testing.assert_allclose(lira_scores(in_conf, out_conf, target, variance="per_example"), expect, rtol=1e-10)
  # with few shadow models ("auto" below 32 a side) one variance per side, pooled over the examples
  pooled = lambda c: np.sqrt(c.var(0, ddof=1).mean())
  expect = (norm.logpdf(target, in_conf.mean(0), pooled(in_conf))
            - norm.logpdf(target, out_conf.mean(0), pooled(out_conf)))
  np.testing.assert_allclose(lira_scores(in_conf, out_conf, target), expect, rtol=1e-10)
  with pytest.raises(ValueError, match="variance must be"):
    lira_scores(in_conf, out_conf, target, variance="fixed")


def _pairs(shift: float, pairs=16, examples=200, seed=0):
  rng = np.random.default_rng(seed)
  # every example has its own difficulty (a per-example mean), as real forget examples do
  base = rng.normal(0, 3, examples)
  return base + rng.normal(0, 1, (pairs, examples)) + shift, base + rng.normal(0, 1, (pairs, examples))


def test_identical_populations_give_chance_and_separated_ones_give_one():
  same = ulira(*_pairs(0.0))
  assert abs(same["auc"] - 0.5) < 0.03 and same["tpr_at_fpr"] < 0.05
  apart = ulira(*_pairs(4.0))
  assert apart["auc"] > 0.99 and apart["tpr_at_fpr"] > 0.8
  # A shift of one sd: the best test per example (known Gaussians) has AUC Phi(1 / sqrt(2)) = 0.760;
  # the attack, with Gaussians estimated from 15 pairs, comes close. A global threshold on the raw
  # confidence would mostly see the examples' own spread (sd 3) and do far worse.
  small = ulira(*_pairs(1.0))
  assert abs(small["auc"] - norm.cdf(1 / np.sqrt(2))) < 0.05
  assert small["pairs"] == 16 and small["examples"] == 200


def test_tpr_at_fpr_reads_the_roc_curve():
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  scores = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.6, 0.95, 0.99])
  assert tpr_at_fpr(labels, scores, 0.0) == 0.5
  assert tpr_at_fpr(labels, scores, 0.25) == 1.0


def test_too_few_pairs_or_mismatched_shapes_raise():
  with pytest.raises(ValueError, match="at least 3 shadow pairs"):
    ulira(np.zeros((2, 4)), np.zeros((2, 4)))
  with pytest.raises(ValueError, match="one shape"):
    ulira(np.zeros((4, 4)), np.zeros((4, 5)))

"""Membership-inference audits and the linear probe (cu_jax/evaluation/mia.py, probe.py).

Synthetic model outputs: a K-class "model" whose logits are noise plus a margin on the true class;
a larger margin means a more confident model, as on its training (member) examples.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
from sklearn.metrics import log_loss

from cu_jax.evaluation.mia import (fr_attacker_accuracy, fr_rate, fit_fr_attackers, mia_fr, mia_loss,
                                   mia_svc, per_example_loss, softmax)
from cu_jax.evaluation.probe import probe_accuracy

K = 10


def outputs(rng: np.random.Generator, n: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
  """(softmax (n, K), labels (n,)) of a model whose true-class logit leads by ~`margin`."""
  labels = rng.integers(0, K, n)
  logits = rng.normal(size=(n, K))
  logits[np.arange(n), labels] += rng.normal(margin, 1.0, n)
  return softmax(logits), labels


def losses(rng: np.random.Generator, n: int, margin: float) -> np.ndarray:
  probs, labels = outputs(rng, n, margin)
  return -np.log(probs[np.arange(n), labels])


def test_softmax_and_loss_match_scipy_even_for_huge_logits():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, K, 50)
  for scale in (1.0, 30.0, 1e3):
    logits = rng.normal(size=(50, K)) * scale
    probs = softmax(logits)
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(-1), 1.0)
    np.testing.assert_allclose(probs, scipy.special.softmax(logits, axis=-1), rtol=1e-10, atol=1e-300)
    loss = per_example_loss(logits, labels)
    assert np.all(np.isfinite(loss)) and np.all(loss >= 0)
    np.testing.assert_allclose(loss, -scipy.special.log_softmax(logits, axis=-1)[np.arange(50), labels],
                               rtol=1e-10)
  logits = rng.normal(size=(50, K))
  per_sample = [log_loss([y], softmax(row[None]), labels=range(K)) for row, y in zip(logits, labels)]
  np.testing.assert_allclose(per_example_loss(logits, labels), per_sample, rtol=1e-8)
  # a 1e3 lead on the wrong class costs exactly that lead, not inf
  assert per_example_loss(np.array([[1e3, 0.0]]), np.array([1]))[0] == pytest.approx(1e3)


def test_mia_fr():
  rng = np.random.default_rng(1)
  same = [outputs(rng, 200, 4.0)[0] for _ in range(3)]
  assert abs(mia_fr(*same) - 0.5) < 0.15
  # members (margin 10) vs non-members (margin 0): a target like the non-members reads as forgotten,
  # one like the members does not; also when the model is saturated (margins 20 vs 10: p[y] of
  # 1 - 1e-8 vs 1 - 1e-4), and for a target that the new model puts on other classes (margin -2)
  for member, nonmember in ((10.0, 0.0), (20.0, 10.0)):
    members, nonmembers = outputs(rng, 200, member)[0], outputs(rng, 200, nonmember)[0]
    assert mia_fr(members, nonmembers, outputs(rng, 200, nonmember)[0]) >= 0.95
    assert mia_fr(members, nonmembers, outputs(rng, 200, member)[0]) <= 0.05
    assert mia_fr(members, nonmembers, outputs(rng, 200, -2.0)[0]) >= 0.95


def one_class(rng: np.random.Generator, n: int, margin: float, donor_margin: float = 0.0) -> np.ndarray:
  """Softmax (n, K) of one class's images, as mia_fr sees them: class 0 leads by ~`margin`, class 3
  (a donor) by `donor_margin`."""
  logits = rng.normal(size=(n, K))
  logits[:, 0] += rng.normal(margin, 1.0, n)
  logits[:, 3] += donor_margin
  return softmax(logits)


def test_mia_fr_pools_attackers_into_a_stable_rate():
  # the demo's situation: the original leaks no membership (members and non-members alike) and the
  # unlearned targets moved to a donor class, outside what the attacker was trained on; which
  # members a single attacker saw then decides its answer, the pooled rate barely depends on it
  rng = np.random.default_rng(3)
  members, nonmembers = one_class(rng, 600, 3.0), one_class(rng, 100, 3.0)
  target = one_class(rng, 300, -2.0, donor_margin=8.0)
  spread = lambda draws: np.std([mia_fr(members, nonmembers, target, draws=draws, seed=s) for s in range(4)])
  assert spread(50) < 0.1 < 0.25 < spread(1)
  assert abs(fr_attacker_accuracy(members, nonmembers) - 0.5) < 0.1
  assert fr_attacker_accuracy(one_class(rng, 600, 6.0), one_class(rng, 100, 2.0)) > 0.9
  # every target is called once, by one attacker, also when there are fewer targets than attackers
  attackers = fit_fr_attackers(members, nonmembers, draws=7)
  calls = [attackers[i].predict(target[i:i + 1])[0] == 0 for i in range(3)]
  assert fr_rate(attackers, target[:3]) == pytest.approx(np.mean(calls))
  with pytest.raises(ValueError, match="draws=0"):
    fit_fr_attackers(members, nonmembers, draws=0)


def test_mia_svc():
  rng = np.random.default_rng(2)
  # on one feature a single run on identical sets strays ~0.13 from 0.5: check the mean of 20 runs
  rates = [mia_svc(*outputs(rng, 200, 4.0), *outputs(rng, 200, 4.0), *outputs(rng, 200, 4.0))
           for _ in range(20)]
  assert abs(np.mean(rates) - 0.5) < 0.1
  for member, nonmember in ((10.0, 0.0), (20.0, 10.0)):
    members, nonmembers = outputs(rng, 300, member), outputs(rng, 200, nonmember)
    assert mia_svc(*members, *nonmembers, *outputs(rng, 200, nonmember)) >= 0.95
    assert mia_svc(*members, *nonmembers, *outputs(rng, 200, member)) <= 0.05
    assert mia_svc(*members, *nonmembers, *outputs(rng, 200, -2.0)) >= 0.95


def test_mia_loss():
  rng = np.random.default_rng(3)
  assert abs(mia_loss(losses(rng, 300, 4.0), losses(rng, 200, 4.0)) - 0.5) < 0.15
  assert mia_loss(losses(rng, 300, 12.0), losses(rng, 200, -2.0)) >= 0.95
  assert 0.0 <= mia_loss(losses(rng, 2, 12.0), losses(rng, 2, -2.0)) <= 1.0  # smallest allowed sets


def test_probe_accuracy():
  rng = np.random.default_rng(4)
  direction = rng.normal(size=16)
  direction /= np.linalg.norm(direction)

  def embed(n, shift):
    is_forget = rng.random(n) < 0.25
    return rng.normal(size=(n, 16)) + shift * is_forget[:, None] * direction, is_forget

  assert probe_accuracy(*embed(400, 5.0), *embed(200, 5.0)) >= 0.95
  assert abs(probe_accuracy(*embed(400, 0.0), *embed(200, 0.0)) - 0.5) < 0.15
  assert probe_accuracy(*embed(400, 5.0), *embed(200, 5.0), max_per_side=5) >= 0.8


def test_same_seed_same_value():
  rng = np.random.default_rng(5)
  members, nonmembers, target = outputs(rng, 300, 6.0), outputs(rng, 200, 4.0), outputs(rng, 100, 5.0)
  train = rng.normal(size=(300, 8)), rng.random(300) < 0.3
  test = rng.normal(size=(100, 8)), rng.random(100) < 0.3
  fr = lambda seed: mia_fr(members[0], nonmembers[0], target[0], seed=seed)
  svc = lambda seed: mia_svc(*members, *nonmembers, *target, seed=seed)
  loss = lambda seed: mia_loss(losses(np.random.default_rng(6), 300, 6.0),
                               losses(np.random.default_rng(7), 200, 4.0), seed=seed)
  probe = lambda seed: probe_accuracy(*train, *test, seed=seed)
  for audit in (fr, svc, loss, probe):
    assert audit(3) == audit(3)


def test_empty_or_single_sets_raise():
  rng = np.random.default_rng(8)
  probs, labels = outputs(rng, 20, 4.0)
  empty_probs, empty_labels = probs[:0], labels[:0]
  with pytest.raises(ValueError, match="non-member"):
    mia_fr(probs, empty_probs, probs)
  with pytest.raises(ValueError, match="target"):
    mia_fr(probs, probs, probs[:1])
  with pytest.raises(ValueError, match="member \\(retain-train\\)"):
    mia_svc(empty_probs, empty_labels, probs, labels, probs, labels)
  with pytest.raises(ValueError, match="held-out"):
    mia_loss(np.ones(20), np.ones(1))
  with pytest.raises(ValueError, match="forget"):
    mia_loss(np.array([]), np.ones(20))
  embed = rng.normal(size=(20, 4))
  with pytest.raises(ValueError, match="train forget-class"):
    probe_accuracy(embed, np.zeros(20, bool), embed, np.arange(20) < 5)
  with pytest.raises(ValueError, match="test rest"):
    probe_accuracy(embed, np.arange(20) < 5, embed, np.ones(20, bool))


def _clusters(means, per_class, rng, sd=0.5):
  labels = np.repeat(np.arange(len(means)), per_class)
  return means[labels] + sd * rng.standard_normal((len(labels), means.shape[1])), labels


def test_few_shot_head_relearn_restores_a_kept_class_but_not_an_erased_one():
  from cu_jax.evaluation.relearn import few_shot_head_accuracy
  rng = np.random.default_rng(0)
  means = 3.0 * rng.standard_normal((4, 16))
  forget = 3
  # the best head for isotropic Gaussians: logits_c = <e, mu_c> - |mu_c|^2 / 2
  head = (means.T.copy(), -0.5 * (means ** 2).sum(-1))
  train, train_y = _clusters(means, 100, rng)
  test, test_y = _clusters(means, 100, rng)
  keep = train_y != forget
  args = dict(embed_forget_train=train[~keep], embed_retain_train=train[keep], retain_labels=train_y[keep],
              embed_forget_test=test[test_y == forget], forget=forget)
  original = float(((test @ head[0] + head[1]).argmax(-1) == test_y)[test_y == forget].mean())
  assert original > 0.95
  for shots in (1, 5, 25):
    assert few_shot_head_accuracy(head, shots=shots, **args) >= original - 0.02
  # A model whose features never learned the class: its images embed like class 0's, and its head
  # never predicts it (the forget row as a retrained model leaves it). A few labels cannot separate
  # what the features do not: at most a coin flip between the two, far below the kept class.
  erased_means = means.copy()
  erased_means[forget] = means[0]
  train, train_y = _clusters(erased_means, 100, rng)
  test, test_y = _clusters(erased_means, 100, rng)
  erased_head = (head[0].copy(), head[1].copy())
  erased_head[0][:, forget], erased_head[1][forget] = 0.0, -50.0
  assert ((test @ erased_head[0] + erased_head[1]).argmax(-1) == forget).mean() == 0.0
  keep = train_y != forget
  erased = dict(embed_forget_train=train[~keep], embed_retain_train=train[keep], retain_labels=train_y[keep],
                embed_forget_test=test[test_y == forget], forget=forget)
  for shots in (1, 5, 25):
    assert few_shot_head_accuracy(erased_head, shots=shots, **erased) <= 0.75
  # with no steps the untrained forget row stays untrained
  assert few_shot_head_accuracy(erased_head, shots=25, steps=0, **erased) == 0.0

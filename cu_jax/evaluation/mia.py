"""Membership-inference audits of an unlearned classifier (numpy in, a float out; sklearn inside).

Unlearning a class should leave the model treating the forget class's *training* images like images
it never saw. Three attacks measure how far that holds, each from the outputs of a model on a few
sets of examples (all numpy arrays, computed by the caller):

- `mia_fr`, the "forgetting rate": attackers learn, on the ORIGINAL model's softmax vectors, to
  tell forget-class train images (members) from forget-class test images (non-members); applied
  to the NEW model's softmax vectors of the forget-class train images, the fraction they call
  non-member is the rate at which the forget set now looks unseen (1.0 = all forgotten).
- `mia_svc`, SalUn's "MIA-efficacy": the attacker sees only the model's confidence in the true
  label, p[y], and learns retain-train (members) against test (non-members); the fraction of the
  forget-train examples it calls non-member (higher = more forgotten).
- `mia_loss`, the NeurIPS-2023 unlearning challenge's attack: a logistic regression on the
  per-example loss, forget-train against a held-out set, scored by cross-validated accuracy
  (0.5 = the two sets are indistinguishable, 1.0 = fully separable; the ideal after unlearning is
  0.5, i.e. the forget set's losses look like held-out losses).

The SVC attacks keep the reference classifier (RBF kernel, C=3, gamma="auto") but not the papers'
raw probabilities as its input. A trained network's confidences saturate (p[y] = 1 - 1e-5 for a
member, 1 - 1e-3 for a non-member): on raw probabilities the kernel, of width ~1, sees all of them
as one point and the attacker degenerates to a near-constant answer (with true-class logit margins
of 16 for members and 10 for non-members, separable by a threshold, the raw SVC called 1% of
non-member-like targets non-members; the pipeline below calls 99%).
Standardising is not enough: an unlearned target far below every training confidence then sits
where the RBF kernel is ~0 for every support vector, and the intercept alone decides. So each
feature is first mapped through its empirical CDF over the attacker's training set
(`QuantileTransformer`, uniform output, which clips a target outside the training range to the
nearest end) and then standardised, inside one sklearn Pipeline fit on the training set only. The
map is monotone per feature, so it keeps every threshold rule the raw attacker could learn and it is
blind to how saturated the model is. Each feature of a target then lies in the training range, but
the combination need not: an unlearned model's forget outputs (least forget-class mass together with
most donor mass) land in a corner no training example occupies, where the fit extrapolates.

Each attacker is trained on balanced classes: the larger side is subsampled at random (seeded) to
the size of the smaller one. For `mia_fr` that throws most members away (a class has ~6x more train
than test images), and which members an attacker saw moves its answer a lot: on the demo, 100 single
attackers called between 17% and 92% of the concept_poison model's forget set non-member (sd 0.19),
because those targets sit in such a corner and each fit extrapolates differently. So `mia_fr` is the
pooled rate of `draws` attackers, each fit on its own balanced subsample and each calling its own
slice of the targets (every target is called once): the standard error shrinks as 1/sqrt(draws)
(~0.02 at the default 100) for `draws` fits (~0.2 s each for 2000 10-d examples) and one pass over
the targets. `fr_attacker_accuracy` says whether there was any membership to forget: the attacker's
cross-validated accuracy on the original's own members vs non-members (0.5 = the original leaks no
membership of its forget class, and `mia_fr` then only tells where the new outputs fall relative to
the original's). On indistinguishable sets the 1-feature `mia_svc` strays from 0.5 by about 0.13
(1 sd) for 200-400 examples a set, as the attacker carves noise into intervals: read small
departures from 0.5 with that in mind.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import QuantileTransformer, StandardScaler
from sklearn.svm import SVC


def softmax(logits: np.ndarray) -> np.ndarray:
  """Row-wise softmax of (N, K) logits; the row maximum is subtracted first, so no overflow."""
  logits = np.asarray(logits, np.float64)
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  return shifted / shifted.sum(-1, keepdims=True)


def per_example_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(N,) softmax cross-entropy -log p[y] of each row, by log-sum-exp (exact for large logits)."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels).astype(np.int64)
  shifted = logits - logits.max(-1, keepdims=True)  # subtracting before the difference keeps
  # the precision of a near-zero loss (a confident, correct row)
  return np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(len(labels)), labels]


def true_class_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(N,) p[y]: each row's probability of its own label."""
  probs, labels = np.asarray(probs), np.asarray(labels).astype(np.int64)
  if probs.ndim != 2:
    raise ValueError(f"expected (N, K) probabilities, got shape {probs.shape}")
  if len(probs) != len(labels):
    raise ValueError(f"{len(probs)} probability rows but {len(labels)} labels")
  return probs[np.arange(len(labels)), labels]


def check_set(values: np.ndarray, name: str, min_size: int = 2) -> np.ndarray:
  """`values` as an array, after checking it holds at least `min_size` examples (a ValueError
  naming the set otherwise)."""
  values = np.asarray(values)
  if values.ndim == 0 or len(values) < min_size:
    size = 0 if values.ndim == 0 else len(values)
    raise ValueError(f"the {name} set needs at least {min_size} examples, got {size}")
  return values


def _balanced(positives: np.ndarray, negatives: np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
  """(features, 0/1 labels): positives (1) and negatives (0), the larger side randomly subsampled
  to the size of the smaller one."""
  n = min(len(positives), len(negatives))
  pick = lambda x: x[np.sort(rng.choice(len(x), n, replace=False))] if len(x) > n else x
  positives, negatives = pick(positives), pick(negatives)
  features = np.concatenate([positives, negatives]).astype(np.float64)
  return features, np.concatenate([np.ones(n, np.int64), np.zeros(n, np.int64)])


def svc_attacker(num_train: int, seed: int = 0) -> Pipeline:
  """The SVC attacker: per-feature empirical-CDF map, standardisation, SVC(rbf, C=3, gamma="auto")
  (the reason for the first two is in the module docstring)."""
  return make_pipeline(
      QuantileTransformer(n_quantiles=min(1000, num_train), output_distribution="uniform",
                          random_state=seed),
      StandardScaler(),
      SVC(C=3, kernel="rbf", gamma="auto"))


def _svc_nonmember_rate(members: np.ndarray, nonmembers: np.ndarray, target: np.ndarray,
                        seed: int) -> float:
  """Train the SVC attacker on balanced members (1) vs non-members (0); fraction of `target`
  predicted non-member."""
  features, is_member = _balanced(members, nonmembers, np.random.default_rng(seed))
  attacker = svc_attacker(len(features), seed).fit(features, is_member)
  return float((attacker.predict(np.asarray(target, np.float64)) == 0).mean())


def _fr_sets(member_probs: np.ndarray, nonmember_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  members = check_set(member_probs, "member (forget-class train, original model)")
  nonmembers = check_set(nonmember_probs, "non-member (forget-class test, original model)")
  if not members.ndim == nonmembers.ndim == 2 or members.shape[1] != nonmembers.shape[1]:
    raise ValueError(f"mia_fr expects (N, K) softmax vectors of one width, got shapes {members.shape} "
                     f"and {nonmembers.shape}")
  return members, nonmembers


def fit_fr_attackers(member_probs: np.ndarray, nonmember_probs: np.ndarray, *, draws: int = 100,
                     seed: int = 0) -> list[Pipeline]:
  """`draws` SVC attackers, each fit on its own balanced subsample of the original model's softmax
  vectors (N, K) of forget-class train (members) vs forget-class test (non-members)."""
  members, nonmembers = _fr_sets(member_probs, nonmember_probs)
  if draws < 1:
    raise ValueError(f"mia_fr needs at least one attacker, got draws={draws}")
  attackers = []
  for i in range(draws):
    features, is_member = _balanced(members, nonmembers, np.random.default_rng([seed, i]))
    attackers.append(svc_attacker(len(features), seed).fit(features, is_member))
  return attackers


def fr_rate(attackers: list[Pipeline], target_probs: np.ndarray) -> float:
  """Forgetting rate of `target_probs` (N, K), the new model's softmax vectors of forget-class
  train: attacker i calls targets i, i + draws, ...; the fraction of all targets called non-member."""
  target = check_set(target_probs, "target (forget-class train, new model)")
  width = attackers[0].n_features_in_
  if target.ndim != 2 or target.shape[1] != width:
    raise ValueError(f"mia_fr targets must be (N, {width}) softmax vectors, got shape {target.shape}")
  target = target.astype(np.float64)
  called = sum(int((a.predict(target[i::len(attackers)]) == 0).sum())
               for i, a in enumerate(attackers[:len(target)]))
  return called / len(target)


def mia_fr(member_probs: np.ndarray, nonmember_probs: np.ndarray, target_probs: np.ndarray, *,
           draws: int = 100, seed: int = 0) -> float:
  """Forgetting rate: SVC attackers learn the original model's softmax vectors (N, K) of
  forget-class train (members) vs forget-class test (non-members); the fraction of `target_probs`,
  the new model's softmax vectors of forget-class train, they call non-member (see the module
  docstring for why there are `draws` of them)."""
  return fr_rate(fit_fr_attackers(member_probs, nonmember_probs, draws=draws, seed=seed), target_probs)


def fr_attacker_accuracy(member_probs: np.ndarray, nonmember_probs: np.ndarray, *, folds: int = 5,
                         seed: int = 0) -> float:
  """Cross-validated accuracy of the `mia_fr` attacker on its own task, the original model's
  forget-class train vs test (one balanced draw, `folds` stratified folds): 0.5 = no membership
  signal for `mia_fr` to remove, 1.0 = members fully recognisable."""
  members, nonmembers = _fr_sets(member_probs, nonmember_probs)
  features, is_member = _balanced(members, nonmembers, np.random.default_rng([seed, 0]))
  folds = min(folds, len(members), len(nonmembers))
  splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
  n_train = len(features) - len(features) // folds
  return float(cross_val_score(svc_attacker(n_train, seed), features, is_member, cv=splits).mean())


def mia_svc(member_probs: np.ndarray, member_labels: np.ndarray, nonmember_probs: np.ndarray,
            nonmember_labels: np.ndarray, target_probs: np.ndarray, target_labels: np.ndarray, *,
            seed: int = 0) -> float:
  """SalUn's MIA-efficacy: an SVC on the true-label confidence p[y] learns retain-train (members)
  vs test (non-members); the fraction of the forget-train examples (target) it predicts
  non-member."""
  members = check_set(member_probs, "member (retain-train)")
  nonmembers = check_set(nonmember_probs, "non-member (test)")
  target = check_set(target_probs, "target (forget-train)")
  confidence = lambda p, y: true_class_confidence(p, y)[:, None]
  return _svc_nonmember_rate(confidence(members, member_labels),
                             confidence(nonmembers, nonmember_labels),
                             confidence(target, target_labels), seed)


def mia_loss(forget_losses: np.ndarray, heldout_losses: np.ndarray, *, n_splits: int = 10,
             seed: int = 0) -> float:
  """Mean cross-validated accuracy of a logistic regression telling forget-train losses (1) from
  held-out losses (0), on balanced classes (0.5 = indistinguishable, 1.0 = fully separable).

  The single feature is standardised inside the pipeline (fit on each training fold only). Each of
  the `n_splits` stratified random splits holds out 20% of the balanced set (at least one example
  per side), a little more than the challenge kit's 10%, for steadier means on small forget sets.
  """
  forget = check_set(np.ravel(forget_losses), "forget (forget-train losses)")
  heldout = check_set(np.ravel(heldout_losses), "held-out (held-out losses)")
  features, is_forget = _balanced(forget, heldout, np.random.default_rng(seed))
  test_size = max(2, int(round(0.2 * len(features))))
  splits = StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
  attacker = make_pipeline(StandardScaler(), LogisticRegression())
  scores = cross_val_score(attacker, features[:, None], is_forget, cv=splits, scoring="accuracy")
  return float(np.mean(scores))

"""PCBM: concept projection, the elastic-net head (FISTA) against scikit-learn's SGDClassifier, PCBM-h."""

import jax
import numpy as np
import pytest
from scipy.special import expit, logsumexp
from sklearn.linear_model import SGDClassifier

from cu_jax.concepts import pcbm

LAM, RHO = 1e-5, 0.99  # the reference PCBM's values
K, M, NOISE = 5, 30, 5  # classes, features, trailing pure-noise features


def _sample(rng, centres, scales, n):
  y = rng.integers(0, K, n)
  x = (centres[y] + rng.normal(size=(n, M)) * 1.5) * scales + 0.3
  x[:, -NOISE:] = rng.normal(size=(n, NOISE))  # no signal at all
  return x.astype(np.float32), y


@pytest.fixture(scope="module")
def data():
  """2000 train / 1000 test examples, 5 overlapping gaussian clusters in 30 features of mixed scale."""
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(K, M))
  centres[:, -NOISE:] = 0.0
  scales = rng.uniform(0.5, 3.0, M)
  x, y = _sample(rng, centres, scales, 2000)
  xt, yt = _sample(rng, centres, scales, 1000)
  return x, y, xt, yt


@pytest.fixture(scope="module")
def sklearn_fit(data):
  x, y, _, _ = data
  return SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=LAM, l1_ratio=RHO, random_state=0).fit(x, y)


@pytest.fixture(scope="module")
def fits(data):
  x, y, _, _ = data
  return {ovr: pcbm.fit_elastic_net(x, y, K, lam=LAM, l1_ratio=RHO, ovr=ovr) for ovr in (False, True)}


def _accuracy(weight, bias, x, y):
  return float(np.mean(np.argmax(x @ np.asarray(weight).T + np.asarray(bias), axis=1) == y))


def _numpy_loss_grad(weight, bias, x, y, ovr):
  """float64 reference: mean loss and its gradients for multinomial CE or summed OvR logistic loss."""
  x = x.astype(np.float64)
  z = x @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)
  onehot = np.eye(K)[y]
  if ovr:
    loss = np.mean(np.sum(np.logaddexp(0, z) - onehot * z, axis=1))
    g = (expit(z) - onehot) / len(x)
  else:
    lse = logsumexp(z, axis=1, keepdims=True)
    loss = np.mean(lse[:, 0] - np.sum(onehot * z, axis=1))
    g = (np.exp(z - lse) - onehot) / len(x)
  return loss, g.T @ x, g.sum(0)


def test_project_matches_numpy():
  rng = np.random.default_rng(1)
  e, v, b = rng.normal(size=(7, 12)), rng.normal(size=(4, 12)) * 3, rng.normal(size=4)
  want = (e @ v.T + b) / np.linalg.norm(v, axis=1)
  got = np.asarray(pcbm.project(e.astype(np.float32), v.astype(np.float32), b.astype(np.float32)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ovr_objective_is_sum_of_sklearns_binary_objectives(data, sklearn_fit):
  """objective(ovr=True) at sklearn's coef_ is the sum of the K binary problems SGDClassifier solves."""
  x, y, _, _ = data
  w, b = sklearn_fit.coef_, sklearn_fit.intercept_
  per_class = []
  for k in range(K):
    t = np.where(y == k, 1.0, -1.0)
    margin = x.astype(np.float64) @ w[k] + b[k]
    per_class.append(np.mean(np.logaddexp(0, -t * margin))
                     + LAM * (RHO * np.abs(w[k]).sum() + 0.5 * (1 - RHO) * (w[k] ** 2).sum()))
  got = float(pcbm.objective(w, b, x, y, LAM, RHO, ovr=True))
  np.testing.assert_allclose(got, sum(per_class), rtol=2e-6)
  loss, _, _ = _numpy_loss_grad(w, b, x, y, ovr=False)
  np.testing.assert_allclose(float(pcbm.objective(w, b, x, y, LAM, RHO)), loss + float(pcbm.penalty(w, LAM, RHO)),
                             rtol=2e-6)


def test_reaches_sklearn_objective_and_accuracy(data, sklearn_fit, fits):
  x, y, xt, yt = data
  sk_obj = float(pcbm.objective(sklearn_fit.coef_, sklearn_fit.intercept_, x, y, LAM, RHO, ovr=True))
  ovr = fits[True]
  ours_obj = float(pcbm.objective(ovr.weight, ovr.bias, x, y, LAM, RHO, ovr=True))
  assert ovr.info["converged"]
  np.testing.assert_allclose(ovr.info["objective"], ours_obj, rtol=1e-5)
  assert ours_obj <= sk_obj * (1 + 1e-6), (ours_obj, sk_obj)  # OvR vs OvR: the same function
  sk_acc = sklearn_fit.score(xt, yt)
  multi = fits[False]
  assert multi.info["converged"]
  assert _accuracy(multi.weight, multi.bias, xt, yt) >= sk_acc - 0.005
  assert _accuracy(ovr.weight, ovr.bias, xt, yt) >= sk_acc - 0.005
  # the multinomial fit is the better model under its own objective
  assert multi.info["objective"] <= float(pcbm.objective(sklearn_fit.coef_, sklearn_fit.intercept_, x, y, LAM, RHO))


@pytest.fixture(scope="module")
def fits64(data):
  """float64 fits run to a tight gradient-mapping tolerance (the float32 floor is ~1e-5 here)."""
  x, y, _, _ = data
  with jax.enable_x64(True):
    return {ovr: pcbm.fit_elastic_net(x.astype(np.float64), y, K, lam=LAM, l1_ratio=RHO, ovr=ovr, tol=0.0, gtol=1e-10)
            for ovr in (False, True)}


@pytest.mark.parametrize("ovr", [False, True])
def test_optimality_conditions_at_the_solution(data, fits, fits64, ovr):
  """KKT of F in float64 numpy: dL/db = 0; |g| <= lam rho where W = 0; g + lam rho sign(W) = 0 elsewhere.

  g = dL/dW + lam (1 - rho) W. The float32 fit reaches the float64 minimum's objective.
  """
  x, y, _, _ = data
  head = fits64[ovr]
  assert head.weight.dtype == np.float64 and head.info["converged"]
  w = np.asarray(head.weight)
  _, gw, gb = _numpy_loss_grad(w, head.bias, x, y, ovr)
  g = gw + LAM * (1 - RHO) * w
  zero = w == 0
  assert zero.any() and (~zero).any()
  assert np.abs(gb).max() < 1e-8
  assert np.all(np.abs(g[zero]) <= LAM * RHO + 1e-8)
  np.testing.assert_allclose(g[~zero] + LAM * RHO * np.sign(w[~zero]), 0.0, atol=1e-8)
  f32 = fits[ovr]
  np.testing.assert_allclose(f32.info["objective"], head.info["objective"], rtol=1e-6)
  assert float(pcbm.kkt_residual(f32.weight, f32.bias, x, y, LAM, RHO, ovr=ovr)) < 1e-4


@pytest.mark.parametrize("ovr", [False, True])
def test_strong_l1_gives_exact_zeros_and_drops_noise_features(data, ovr):
  x, y, _, _ = data
  lam = 5e-2
  head = pcbm.fit_elastic_net(x, y, K, lam=lam, l1_ratio=RHO, ovr=ovr)
  w = np.asarray(head.weight)
  assert pcbm.sparsity(head) > 0.3
  assert np.all(w[:, -NOISE:] == 0.0)  # exactly, not approximately
  assert np.any(w[:, :-NOISE] != 0.0)
  # zero weights: the soft threshold holds them there, |dF/dW| <= lam rho (up to float32 rounding)
  _, gw, _ = _numpy_loss_grad(w, head.bias, x, y, ovr)
  assert np.all(np.abs(gw + lam * (1 - RHO) * w)[w == 0] <= lam * RHO + 5e-4)
  assert float(pcbm.kkt_residual(head.weight, head.bias, x, y, lam, RHO, ovr=ovr)) < 5e-4


@pytest.mark.parametrize("option,rtol", [("standardize", 1e-4), ("recenter", 1e-3)])
def test_preconditioning_options_do_not_change_the_problem(data, fits64, option, rtol):
  """Scaling and re-centring are exact reparametrisations: without them, the same problem, solved worse.

  Without re-centring, float32 FISTA stalls ~1e-4 above the minimum along softmax's flat direction.
  """
  x, y, _, _ = data
  plain = pcbm.fit_elastic_net(x, y, K, lam=LAM, l1_ratio=RHO, **{option: False})
  best = fits64[False].info["objective"]
  assert best <= plain.info["objective"] <= best * (1 + rtol)
  best_pred = np.argmax(x @ np.asarray(fits64[False].weight).T + np.asarray(fits64[False].bias), axis=1)
  assert np.mean(np.asarray(pcbm.predict(plain, x)) == best_pred) > 0.995


def test_recenter_columns_minimises_the_column_penalty():
  rng = np.random.default_rng(2)
  u = rng.normal(size=(6, 4)).astype(np.float32)
  u[:, 3] = [0.5, 0.5, 0.5, -1, 2, 0.1]  # ties at a kink
  l1 = np.array([1.0, 0.0, 1.0, 0.3], np.float32)
  l2 = np.array([0.0, 1.0, 0.5, 0.01], np.float32)
  shifted = np.asarray(pcbm.recenter_columns(u, l1, l2))
  offset = u - shifted
  np.testing.assert_allclose(offset, offset[0:1].repeat(6, 0), atol=1e-6)  # one shift per column
  grid = np.linspace(-3, 3, 60001)
  for j in range(4):
    cost = lambda c: l1[j] * np.abs(u[:, j, None] - c).sum(0) + 0.5 * l2[j] * ((u[:, j, None] - c) ** 2).sum(0)
    assert cost(np.array([offset[0, j]]))[0] <= cost(grid).min() + 1e-5


def test_residual_head_adds_what_the_bottleneck_misses(data, fits):
  """PCBM-h: a bottleneck on a few features leaves signal in the embedding for the residual."""
  x, y, xt, yt = data
  few = pcbm.fit_elastic_net(x[:, :3], y, K, lam=LAM, l1_ratio=RHO)
  base, base_t = np.asarray(pcbm.logits(few, x[:, :3])), np.asarray(pcbm.logits(few, xt[:, :3]))
  res = pcbm.fit_residual_head(x, base, y, K, steps=300, learning_rate=5e-2)
  assert res.weight.shape == (K, M) and res.bias.shape == (K,)
  acc_base = np.mean(np.argmax(base_t, 1) == yt)
  acc_h = np.mean(np.argmax(np.asarray(pcbm.residual_logits(few, res, xt[:, :3], xt)), 1) == yt)
  assert acc_h > acc_base + 0.1


def test_rejects_out_of_range_labels(data):
  x, y, _, _ = data
  with pytest.raises(ValueError, match="integers in"):
    pcbm.fit_elastic_net(x, y, K - 1)
  with pytest.raises(ValueError, match="summing to 1"):
    pcbm.fit_elastic_net(x, np.full((len(x), K), 0.5, np.float32), K)
  with pytest.raises(ValueError, match="multinomial"):
    pcbm.fit_elastic_net(x, np.eye(K, dtype=np.float32)[y], K, ovr=True)


def test_soft_targets_distil_a_model_and_one_hot_targets_equal_labels(data, fits):
  x, y, xt, _ = data
  one_hot = pcbm.fit_elastic_net(x, np.eye(K, dtype=np.float32)[y], K, lam=LAM, l1_ratio=RHO)
  np.testing.assert_allclose(one_hot.weight, fits[False].weight, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(one_hot.bias, fits[False].bias, rtol=1e-4, atol=1e-5)
  # a "model" whose softmax is linear in the features, with a class it never predicts (like an
  # unlearned class): the distilled head reproduces its probabilities, the rare class's included
  rng = np.random.default_rng(1)
  w0, b0 = rng.normal(size=(K, M)) * 0.2, np.array([0.0, 0.5, -0.5, 0.2, -6.0])
  softmax = lambda z: np.exp(z - logsumexp(z, axis=1, keepdims=True))
  head = pcbm.fit_elastic_net(x, softmax(x @ w0.T + b0).astype(np.float32), K, lam=1e-7, l1_ratio=RHO, tol=0.0,
                              max_iter=3000)
  fitted, truth = softmax(np.asarray(pcbm.logits(head, xt))), softmax(xt @ w0.T + b0)
  assert np.abs(fitted - truth).max() < 0.02 and truth[:, 4].max() < 0.5
  log_ratio = np.log(fitted[:, 4]) - np.log(truth[:, 4])  # the never-predicted class's log-probability
  assert np.abs(np.median(log_ratio)) < 0.1

"""Post-hoc Concept Bottleneck Model (PCBM, Yuksekgonul et al., 2023): projection and sparse head.

Projection: the score of concept j is the signed distance of an embedding e to the
concept's hyperplane, s_j = (V_j . e + b_j) / ||V_j||.

Head: `logits = W s + b` with W of shape (K, m) (scikit-learn's `coef_` layout: row c holds class
c's concept weights) and b of shape (K,). It minimises

    F(W, b) = mean_i loss_i(W s_i + b) + lam * (rho * |W|_1 + (1 - rho) / 2 * ||W||_F^2)

with the intercept b unpenalised and one of two losses:

- multinomial (`ovr=False`, the default: one K-way softmax, so the classes share one problem):
  loss_i(z) = -log softmax(z)[y_i];
- one-vs-rest (`ovr=True`): loss_i(z) = sum_k log(1 + exp(-t_ik z_k)) with t_ik = +1 if y_i = k
  else -1. F is then exactly the *sum over classes* of the K binary objectives
  mean_i log(1 + exp(-t_ik (w_k . s_i + b_k))) + lam * (rho |w_k|_1 + (1 - rho)/2 ||w_k||^2),
  which is what scikit-learn's `SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=lam,
  l1_ratio=rho)` minimises, one class at a time, for K > 2 classes (it is one-vs-rest, not
  multinomial; for K = 2 it fits one binary problem, not covered here).

So "the same objective as scikit-learn" means: `objective(..., ovr=True)` evaluated at
scikit-learn's `coef_`/`intercept_` is the sum of the objectives its K binary SGD runs minimise,
and `fit_elastic_net(..., ovr=True)` minimises that same function (all K problems in one loop).
Any (W, b), scikit-learn's included, can also be scored under the multinomial objective; predictions
are `argmax_k (W s + b)_k` under both.

Solver: FISTA (accelerated proximal gradient, Beck & Teboulle 2009) written out in one jitted
`lax.while_loop` (optax has no proximal, line-searched method; it is used for PCBM-h):
- the smooth part is the data loss only; the whole elastic-net penalty goes into the proximal step,
  u -> soft_threshold(u, t lam rho) / (1 + t lam (1 - rho)), so weights become *exactly* zero;
- the features are centred (always) and optionally scaled to unit variance (`standardize=True`).
  Both are exact reparametrisations, not a change of problem: centring moves the mean into the
  intercept, and scaling is compensated by per-coordinate penalty weights
  (lam rho / sigma_j and lam (1 - rho) / sigma_j^2), so the returned (W, b) minimise F in the
  original units. They only make the problem better conditioned;
- multinomial only (`recenter=True`): softmax is blind to adding the same multiple of a feature
  to every class's logit, so the loss is flat along W[:, j] + c and only the weak penalty pins
  the column's offset down (curvature ~ lam (1 - rho): thousands of iterations). After every
  proximal step each column is shifted by its exact penalty-minimising offset
  (`recenter_columns`), which lowers F without changing the loss (~10x fewer iterations here);
- step size: backtracking line search (halving), allowed to grow by `step_growth` after each
  accepted step and never below 1 / L with L = c * lambda_max(X^T X / N) (c = 1/2 for softmax,
  1/4 for the logistic loss), a global Lipschitz bound that passes the test in exact arithmetic
  (below it, failures are rounding: without the floor the step collapses in float32);
- adaptive restart (O'Donoghue & Candes 2015): the momentum is reset when it points against the
  proximal-gradient step; a step that would increase F is rejected (F never increases) and
  retried from the last iterate with half the step;
- logits are linear in (W, b), so the logits at the extrapolated point are extrapolated too: one
  iteration costs two (N, m) x (m, K) matmuls (plus one per backtracking trial);
- every decision (sufficient decrease, rejection, the stopping test) uses F differences summed
  from per-example loss differences, accurate to ~eps |loss| / sqrt(N) instead of the ~eps |F| of
  two separately rounded means: float32 then converges to a KKT residual of ~1e-6 instead of
  stalling at ~1e-4.
Stopping: the relative decrease of F over the last `window` (10) iterations is <= `tol`, or the
largest entry of the gradient mapping (the composite-gradient residual, in the units of dF/dW) is
<= `gtol`, or `max_iter` iterations. float32 by default; float64 when jax x64 is enabled and the
inputs are float64.

PCBM-h (`fit_residual_head`): a linear head on the embedding, trained with optax on top of the
frozen bottleneck logits: logits_h = W s + b + R e + r.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class PCBMHead(NamedTuple):
  """Linear concept head `logits = scores @ weight.T + bias` (a pytree)."""
  weight: jax.Array  # (K, m)
  bias: jax.Array  # (K,)
  info: dict  # python scalars, see `fit_elastic_net`


class ResidualHead(NamedTuple):
  """PCBM-h residual `logits = bottleneck_logits + embeddings @ weight.T + bias` (a pytree)."""
  weight: jax.Array  # (K, d)
  bias: jax.Array  # (K,)
  info: dict


# ----------------------------------------------------------------------------------------------
# projection and prediction


def project(embeddings: jax.Array, vectors: jax.Array, intercepts: jax.Array) -> jax.Array:
  """(N, m) concept scores s_j = (V_j . e + b_j) / ||V_j|| of (N, d) embeddings; V (m, d), b (m,)."""
  vectors = jnp.asarray(vectors)
  norms = jnp.linalg.norm(vectors, axis=1)
  return (jnp.asarray(embeddings) @ vectors.T + jnp.asarray(intercepts)) / norms


def logits(head: PCBMHead, scores: jax.Array) -> jax.Array:
  """(N, K) class logits W s + b."""
  return jnp.asarray(scores) @ head.weight.T + head.bias


def predict(head: PCBMHead, scores: jax.Array) -> jax.Array:
  """(N,) predicted classes argmax_k (W s + b)_k (the same rule for multinomial and OvR heads)."""
  return jnp.argmax(logits(head, scores), axis=-1)


# ----------------------------------------------------------------------------------------------
# objective


def _example_losses(z: jax.Array, onehot: jax.Array, ovr: bool) -> jax.Array:
  """(N,) per-example loss of (N, K) logits: CE, or the sum over classes of the logistic losses."""
  if ovr:  # sum_k log(1 + exp(-t z)) = sum_k softplus(z) - y z
    return jnp.sum(jax.nn.softplus(z) - onehot * z, axis=1)
  return jax.nn.logsumexp(z, axis=1) - jnp.sum(onehot * z, axis=1)


def _loss_and_grad(z: jax.Array, onehot: jax.Array, ovr: bool) -> tuple[jax.Array, jax.Array]:
  """(N,) per-example losses and the gradient of their mean with respect to the (N, K) logits."""
  n = z.shape[0]
  if ovr:
    return _example_losses(z, onehot, ovr), (jax.nn.sigmoid(z) - onehot) / n
  lse = jax.nn.logsumexp(z, axis=1, keepdims=True)
  return lse[:, 0] - jnp.sum(onehot * z, axis=1), (jnp.exp(z - lse) - onehot) / n


def _loss(z: jax.Array, onehot: jax.Array, ovr: bool) -> jax.Array:
  return jnp.mean(_example_losses(z, onehot, ovr))


def penalty(weight: jax.Array, lam: float, l1_ratio: float) -> jax.Array:
  """lam * (rho |W|_1 + (1 - rho)/2 ||W||^2) (scikit-learn's elastic net, times its alpha)."""
  weight = jnp.asarray(weight)
  return lam * (l1_ratio * jnp.sum(jnp.abs(weight)) + 0.5 * (1.0 - l1_ratio) * jnp.sum(weight * weight))


def data_loss(weight: jax.Array, bias: jax.Array, x: jax.Array, y: jax.Array, ovr: bool = False) -> jax.Array:
  """Mean multinomial cross-entropy (or summed one-vs-rest logistic loss) of W x + b."""
  weight = jnp.asarray(weight)
  x = jnp.asarray(x, weight.dtype)
  onehot = jax.nn.one_hot(jnp.asarray(y), weight.shape[0], dtype=x.dtype)
  return _loss(x @ weight.T + jnp.asarray(bias, x.dtype), onehot, ovr)


def objective(weight: jax.Array, bias: jax.Array, x: jax.Array, y: jax.Array, lam: float, l1_ratio: float,
              ovr: bool = False) -> jax.Array:
  """F(W, b) of the module docstring for any (K, m) W and (K,) b, e.g. scikit-learn's coef_, intercept_.

  With `ovr=True` it is the sum over classes of scikit-learn's per-class SGD objectives.
  """
  return data_loss(weight, bias, x, y, ovr) + penalty(weight, lam, l1_ratio)


def loss_gradient(weight: jax.Array, bias: jax.Array, x: jax.Array, y: jax.Array, ovr: bool = False
                  ) -> tuple[jax.Array, jax.Array]:
  """Gradients (dL/dW (K, m), dL/db (K,)) of the mean data loss (for optimality checks)."""
  weight = jnp.asarray(weight)
  x = jnp.asarray(x, weight.dtype)
  onehot = jax.nn.one_hot(jnp.asarray(y), weight.shape[0], dtype=x.dtype)
  _, g = _loss_and_grad(x @ weight.T + jnp.asarray(bias, x.dtype), onehot, ovr)
  return g.T @ x, g.sum(0)


def kkt_residual(weight: jax.Array, bias: jax.Array, x: jax.Array, y: jax.Array, lam: float, l1_ratio: float,
                 ovr: bool = False) -> jax.Array:
  """Largest violation of the optimality conditions of F at (W, b) (0 at the minimiser).

  With g = dL/dW + lam (1 - rho) W: |g| <= lam rho where W = 0, g + lam rho sign(W) = 0 where
  W != 0, and dL/db = 0.
  """
  gw, gb = loss_gradient(weight, bias, x, y, ovr)
  weight = jnp.asarray(weight)
  g = gw + lam * (1.0 - l1_ratio) * weight
  res_w = jnp.where(weight == 0, jnp.maximum(jnp.abs(g) - lam * l1_ratio, 0.0),
                    jnp.abs(g + lam * l1_ratio * jnp.sign(weight)))
  return jnp.maximum(jnp.max(res_w), jnp.max(jnp.abs(gb)))


def prox_elastic_net(v: jax.Array, step: jax.Array, l1: jax.Array, l2: jax.Array) -> jax.Array:
  """argmin_u ||u - v||^2 / (2 step) + l1 |u| + l2 / 2 u^2 (elementwise; exact zeros)."""
  return jnp.sign(v) * jnp.maximum(jnp.abs(v) - step * l1, 0.0) / (1.0 + step * l2)


def recenter_columns(u: jax.Array, l1: jax.Array, l2: jax.Array) -> jax.Array:
  """Shift each column of (K, m) u by the c_j minimising sum_k l1_j |u_kj - c| + l2_j / 2 (u_kj - c)^2.

  Softmax logits do not change when the same multiple of a feature is added to every class's
  weight (the column sums of the multinomial gradient are zero), so this exact minimisation along
  the invariant direction lowers the penalty without touching the loss. The cost is convex and
  piecewise quadratic in c with kinks at the sorted u_(0) <= ... <= u_(K-1): on the piece with i
  values below c its minimiser is the stationary point (S - (l1/l2)(2i - K)) / K clipped into the
  piece (for l2 = 0 the end the slope l1 (2i - K) points to), and the cost there follows from
  prefix sums; the best of the K + 1 pieces is exact. O(K m) after the sort.
  """
  k = u.shape[0]
  w = jnp.sort(u, axis=0)  # (K, m)
  zeros = jnp.zeros((1, u.shape[1]), u.dtype)
  below_sum = jnp.concatenate([zeros, jnp.cumsum(w, axis=0)], axis=0)  # (K + 1, m): sum of the i lowest
  total, total_sq = below_sum[-1], jnp.sum(u * u, axis=0)
  i = jnp.arange(k + 1, dtype=u.dtype)[:, None]  # values below c on piece i
  lo = jnp.concatenate([jnp.full_like(zeros, -jnp.inf), w], axis=0)
  hi = jnp.concatenate([w, jnp.full_like(zeros, jnp.inf)], axis=0)
  slope = l1 * (2.0 * i - k)
  ratio = l1 / jnp.where(l2 > 0, l2, 1.0)
  stationary = jnp.where(l2 > 0, (total - ratio * (2.0 * i - k)) / k,
                         jnp.where(slope > 0, -jnp.inf, jnp.where(slope < 0, jnp.inf, total / k)))
  c = jnp.clip(stationary, lo, hi)
  cost = (l1 * (c * i - below_sum + (total - below_sum) - c * (k - i))
          + 0.5 * l2 * (total_sq - 2 * c * total + k * c * c))
  best = jnp.take_along_axis(c, jnp.argmin(cost, axis=0)[None], axis=0)
  return u - best


# ----------------------------------------------------------------------------------------------
# FISTA


class _State(NamedTuple):
  u: jax.Array  # (K, m) weights in internal (centred, scaled) coordinates, iterate x_k
  c: jax.Array  # (K,)
  z: jax.Array  # (N, K) logits at x_k
  u_prev: jax.Array
  c_prev: jax.Array
  z_prev: jax.Array
  losses: jax.Array  # (N,) per-example losses at x_k
  f: jax.Array  # F at x_k, accumulated from accurate differences
  t: jax.Array  # FISTA momentum scalar
  step: jax.Array
  history: jax.Array  # (window,) last values of F, circular
  it: jax.Array
  restarts: jax.Array
  grad_mapping: jax.Array
  done: jax.Array
  evaluations: jax.Array  # loss evaluations (one (N, m) x (m, K) matmul each) in the line search


@functools.partial(jax.jit, static_argnames=("num_classes", "ovr", "standardize", "recenter", "window",
                                             "max_backtracks"))
def _fista(x, y, lam, l1_ratio, max_iter, tol, gtol, step_growth, *, num_classes, ovr, standardize, recenter,
           window=10, max_backtracks=30):
  dtype = x.dtype
  n = x.shape[0]
  eps = jnp.finfo(dtype).eps
  onehot = y.astype(dtype) if y.ndim == 2 else jax.nn.one_hot(y, num_classes, dtype=dtype)  # (N, K) targets
  mu = jnp.mean(x, axis=0)
  xc = x - mu
  if standardize:
    sigma = jnp.sqrt(jnp.mean(xc * xc, axis=0))
    sigma = jnp.where(sigma > 1e3 * eps * (1.0 + jnp.abs(mu)), sigma, 1.0)
  else:
    sigma = jnp.ones_like(mu)
  xs = xc / sigma
  l1 = (lam * l1_ratio / sigma).astype(dtype)  # (m,) broadcast over the K rows
  l2 = (lam * (1.0 - l1_ratio) / sigma ** 2).astype(dtype)

  # global Lipschitz bound of the smooth part (features centred: the bias block decouples)
  curvature = 0.25 if ovr else 0.5
  lmax = jnp.maximum(jnp.linalg.eigvalsh(xs.T @ xs / n)[-1], 1.0)
  step0 = (1.0 / (curvature * lmax)).astype(dtype)

  def pen(u):
    return jnp.sum(l1 * jnp.abs(u)) + 0.5 * jnp.sum(l2 * u * u)

  # start at the best intercept-only model (exact with centred features)
  freq = jnp.maximum(jnp.mean(onehot, axis=0), 0.5 / n)
  c0 = jnp.log(freq) - jnp.log1p(-freq) if ovr else jnp.log(freq) - jnp.mean(jnp.log(freq))
  u0 = jnp.zeros((num_classes, x.shape[1]), dtype)
  z0 = jnp.broadcast_to(c0, (n, num_classes)).astype(dtype)
  losses0 = _example_losses(z0, onehot, ovr)
  state = _State(u0, c0, z0, u0, c0, z0, losses0, jnp.mean(losses0), jnp.ones((), dtype), step0,
                 jnp.full((window,), jnp.inf, dtype), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                 jnp.full((), jnp.inf, dtype), jnp.zeros((), bool), jnp.zeros((), jnp.int32))

  def body(s: _State) -> _State:
    t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * s.t * s.t))
    beta = (s.t - 1.0) / t_next
    uy = s.u + beta * (s.u - s.u_prev)
    cy = s.c + beta * (s.c - s.c_prev)
    zy = s.z + beta * (s.z - s.z_prev)
    losses_y, g = _loss_and_grad(zy, onehot, ovr)
    gu = g.T @ xs
    gc = jnp.sum(g, axis=0)
    # Decisions compare F at nearby points. Summing per-example *differences* keeps them accurate
    # to ~eps |loss| / sqrt(N) instead of the ~eps |F| of two separately rounded sums; the slack
    # covers that rounding.
    slack = 4.0 * eps * jnp.mean(jnp.abs(losses_y)) / jnp.sqrt(jnp.asarray(n, dtype))

    def attempt(step):
      un = prox_elastic_net(uy - step * gu, step, l1, l2)
      cn = cy - step * gc
      zn = xs @ un.T + cn
      losses_n = _example_losses(zn, onehot, ovr)
      du, dc = un - uy, cn - cy
      model = jnp.vdot(gu, du) + jnp.vdot(gc, dc) + (jnp.vdot(du, du) + jnp.vdot(dc, dc)) / (2.0 * step)
      return un, cn, zn, losses_n, jnp.mean(losses_n - losses_y) <= model + slack

    # 1/L always passes in exact arithmetic: failures below it are rounding, so it is the floor
    def bt_cond(carry):
      return jnp.logical_and(~carry[-1][4], jnp.logical_and(carry[1] > step0, carry[0] < max_backtracks))

    def bt_body(carry):
      k, step, _ = carry
      step = jnp.maximum(0.5 * step, step0)
      return k + 1, step, attempt(step)

    n_bt, step, (un, cn, zn, losses_n, _) = jax.lax.while_loop(bt_cond, bt_body, (0, s.step, attempt(s.step)))
    # largest entry of the gradient mapping, in units of dF/dW (the column scaling undone)
    gm = jnp.maximum(jnp.max(jnp.abs(uy - un) / sigma), jnp.max(jnp.abs(cy - cn))) / step
    if recenter:  # z is then off by a per-example constant, to which softmax is blind
      un = recenter_columns(un, l1, l2)
    delta = jnp.mean(losses_n - s.losses) + pen(un) - pen(s.u)  # F(x_new) - F(x_k)
    worse = delta > slack
    against = (jnp.vdot(uy - un, un - s.u) + jnp.vdot(cy - cn, cn - s.c)) > 0
    restart = jnp.logical_or(worse, against)
    keep = lambda new, old: jnp.where(worse, old, new)  # reject a step that increases F
    u, c, z, losses = keep(un, s.u), keep(cn, s.c), keep(zn, s.z), keep(losses_n, s.losses)
    f = jnp.where(worse, s.f, s.f + delta)
    it = s.it + 1
    f_old = s.history[it % window]
    history = s.history.at[it % window].set(f)
    stalled = (f_old - f) <= tol * jnp.maximum(jnp.abs(f), eps)  # inf - f > tol until `window` steps
    done = jnp.logical_or(jnp.logical_or(stalled, gm <= gtol), ~jnp.isfinite(f))
    # after a rejected step retry from x_k without momentum and with a halved step
    next_step = jnp.where(worse, jnp.maximum(0.5 * step, step0), step * step_growth)
    return _State(u, c, z, s.u, s.c, s.z, losses, f, jnp.where(restart, jnp.ones_like(t_next), t_next),
                  next_step, history, it, s.restarts + restart.astype(jnp.int32), gm, done,
                  s.evaluations + n_bt + 1)

  def cond(s):
    return jnp.logical_and(~s.done, s.it < max_iter)

  s = jax.lax.while_loop(cond, body, state)
  weight = s.u / sigma
  bias = s.c - weight @ mu
  info = {"iterations": s.it, "objective": jnp.mean(s.losses) + pen(s.u), "converged": s.done,
          "restarts": s.restarts, "grad_mapping": s.grad_mapping, "evaluations": s.evaluations,
          "step": s.step, "lipschitz_step": step0}
  return weight, bias, info


def fit_elastic_net(x: Any, y: Any, num_classes: int, *, lam: float = 1e-5, l1_ratio: float = 0.99,
                    ovr: bool = False, max_iter: int = 5000, tol: float = 1e-7, gtol: float = 0.0,
                    standardize: bool = True, step_growth: float = 1.1, recenter: bool = True) -> PCBMHead:
  """Fit the elastic-net concept head of the module docstring with jitted FISTA.

  Args:
    x: (N, m) concept scores; float32 (float64 if jax x64 is enabled and x is float64).
    y: (N,) integer labels in [0, num_classes), or (N, K) target distributions (rows >= 0 summing
      to 1, multinomial only): the head then distils them, e.g. a model's own softmax outputs.
    num_classes: K.
    lam, l1_ratio: scikit-learn's `alpha` and `l1_ratio`.
    ovr: minimise the one-vs-rest objective (what SGDClassifier minimises) instead of the
      multinomial one.
    max_iter: iteration cap (each iteration: two (N, m) x (m, K) matmuls plus backtracking).
    tol: stop when F decreased by at most `tol * |F|` over the last 10 iterations.
    gtol: or when the largest entry of the gradient mapping is <= gtol (0: not used).
    standardize: precondition by scaling features to unit variance; the objective and the result
      are unchanged (the penalty is rescaled per coordinate), only the convergence speed differs.
    step_growth: factor by which the step may grow after each accepted step (1: never grows).
    recenter: multinomial only: re-centre the weight columns along softmax's invariant direction
      after every step (exact; see the module docstring).

  Returns:
    PCBMHead with weight (K, m), bias (K,) in the original units of x and `info` (python scalars):
    iterations, objective (F at the result), converged (a stopping test fired, not max_iter),
    restarts, grad_mapping (at the last step), evaluations (loss evaluations = matmuls in the line
    search), step, lipschitz_step (1/L), ovr.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  labels = np.asarray(y)
  if labels.ndim == 2:
    if labels.shape != (x.shape[0], num_classes) or ovr:
      raise ValueError(f"soft targets must be ({x.shape[0]}, {num_classes}) and multinomial (ovr=False), got "
                       f"shape {labels.shape}, ovr={ovr}")
    if (labels < 0).any() or not np.allclose(labels.sum(1), 1.0, atol=1e-3):
      raise ValueError("soft targets must be non-negative rows summing to 1")
    labels = labels.astype(np.dtype(x.dtype))
  elif labels.shape != x.shape[:1] or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
    raise ValueError(f"labels must be {x.shape[:1]} integers in [0, {num_classes}), got shape {labels.shape} "
                     f"and range [{labels.min() if labels.size else None}, {labels.max() if labels.size else None}]")
  y = jnp.asarray(labels) if labels.ndim == 2 else jnp.asarray(labels, jnp.int32)
  dtype = x.dtype
  weight, bias, info = _fista(x, y, jnp.asarray(lam, dtype), jnp.asarray(l1_ratio, dtype),
                              jnp.asarray(max_iter, jnp.int32), jnp.asarray(tol, dtype), jnp.asarray(gtol, dtype),
                              jnp.asarray(step_growth, dtype), num_classes=int(num_classes), ovr=bool(ovr),
                              standardize=bool(standardize), recenter=bool(recenter) and not ovr)
  info = {k: v.item() for k, v in jax.device_get(info).items()}
  info["ovr"] = bool(ovr)
  return PCBMHead(weight, bias, info)


# ----------------------------------------------------------------------------------------------
# PCBM-h


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "batch_size"))
def _fit_residual(embeddings, base_logits, y, key, l2, learning_rate, *, num_classes, steps, batch_size):
  n, d = embeddings.shape
  params = {"weight": jnp.zeros((num_classes, d), embeddings.dtype),
            "bias": jnp.zeros((num_classes,), embeddings.dtype)}
  tx = optax.adam(learning_rate)

  def loss_fn(p, e, z, t):
    out = z + e @ p["weight"].T + p["bias"]
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, t))
    return ce + 0.5 * l2 * jnp.sum(p["weight"] ** 2)

  def step(carry, k):
    p, opt = carry
    if batch_size is None:
      e, z, t = embeddings, base_logits, y
    else:
      idx = jax.random.randint(k, (batch_size,), 0, n)
      e, z, t = embeddings[idx], base_logits[idx], y[idx]
    loss, grads = jax.value_and_grad(loss_fn)(p, e, z, t)
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), loss

  (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
  return params, losses


def fit_residual_head(embeddings: Any, concept_logits: Any, y: Any, num_classes: int, *, l2: float = 1e-4,
                      learning_rate: float = 1e-2, steps: int = 500, batch_size: int | None = None,
                      seed: int = 0) -> ResidualHead:
  """PCBM-h: fit a linear residual head on (N, d) embeddings on top of frozen (N, K) bottleneck logits.

  Minimises mean CE(concept_logits + R e + r) + l2/2 ||R||^2 with Adam (one jitted `lax.scan`,
  full batch unless `batch_size` is given). The bottleneck (the PCBM head) is not changed.
  """
  e = jnp.asarray(embeddings, jnp.float32)
  params, losses = _fit_residual(e, jnp.asarray(concept_logits, e.dtype), jnp.asarray(y, jnp.int32),
                                 jax.random.key(seed), jnp.asarray(l2, e.dtype), jnp.asarray(learning_rate, e.dtype),
                                 num_classes=int(num_classes), steps=int(steps), batch_size=batch_size)
  return ResidualHead(params["weight"], params["bias"], {"final_loss": float(losses[-1]), "steps": int(steps)})


def residual_logits(head: PCBMHead, residual: ResidualHead, scores: jax.Array, embeddings: jax.Array) -> jax.Array:
  """PCBM-h logits W s + b + R e + r."""
  return logits(head, scores) + jnp.asarray(embeddings) @ residual.weight.T + residual.bias


def sparsity(head: PCBMHead) -> float:
  """Fraction of exactly-zero weights."""
  return float(np.mean(np.asarray(head.weight) == 0))

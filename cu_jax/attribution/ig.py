"""Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", 2017).

For a differentiable F, an input x and a baseline x':

    IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x'))/dx_i da
            ~ (x_i - x'_i) * sum_k w_k dF(x' + a_k (x - x'))/dx_i

*Completeness*: sum_i IG_i(x) = F(x) - F(x') when the integral is exact, so the per-example
`delta = sum_i IG_i(x) - (F(x) - F(x'))` measures the quadrature error (captum's "convergence
delta"). It shrinks with more steps, slowly for a deep network far from its baseline (a random
ViT from a zero baseline: 0.6 at 32 steps, 0.004 at 512).

Quadrature rules (`path_points`) are captum's (`captum.attr._utils.approximation_methods`), to the
bit, so results agree with `captum.attr.IntegratedGradients` for the same rule and steps:

- `riemann_left` / `riemann_right` / `riemann_middle`: n equally spaced points in [0, 1 - 1/n],
  [1/n, 1] or [1/(2n), 1 - 1/(2n)], weights 1/n.
- `riemann_trapezoid`: n points linspace(0, 1, n), weights 1/n halved at both ends. NB: this is
  captum's rule, not the textbook one: the points are 1/(n-1) apart but weighted 1/n, so the
  weights sum to 1 - 1/n and the attributions are those of the trapezoid rule times (1 - 1/n)
  (e.g. delta = -(F(x) - F(x'))/n for a linear F). Kept for parity with captum.
- `gausslegendre` (captum's default): the n-point Gauss-Legendre nodes and weights mapped to
  [0, 1]; exact when the integrand is a polynomial of degree <= 2n - 1 in a.

captum builds the Riemann points with float32 `torch.linspace`; `path_points` reproduces torch's
CPU kernel, so the alphas are the same float32 numbers (returned as float64).

Computation. The B x n_steps path points (example-major: point p is step p % n of example
p // n) are cut into chunks of at most `chunk_size` points; a `lax.scan` runs over the chunks and
carries a (B, ...) accumulator, so memory is one chunk's activations plus O(B x example), however
long the path (a `lax.map` over chunks would stack every point's gradient). Inside a chunk one
reverse-mode pass takes the gradient of the *sum* of the chunk's selected outputs with respect to
the chunk's points: since F treats the rows of a batch independently, row j of that gradient is
dF(point_j)/d point_j (the assumption captum makes too: no batch statistics, no cross-example
terms in F). Each row is scaled by its weight w_k and scatter-added into its example's row of
the accumulator. All chunks have the same size, ceil(P / ceil(P / chunk_size)) for P points, so
the padding (weight-0 points, in the last chunk) is less than one point per chunk. F(x) and F(x')
for `delta` take one chunked forward pass. With `has_batch=False`, F is `jax.vmap`ped over the
points of a chunk.

`make_ig_fn` is the entry point the rest of cu_jax uses: it compiles this once per setting, passes
model state and other operands of F as arguments (not as constants baked into the program), and
can split the examples over a device mesh.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

QUADRATURE_RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
# Path points per reverse-mode pass. On a 2-core CPU, IG of the demo ViT runs fastest at 64-128
# (128: ~5-10% faster than 256, 20% faster than 1024; benchmarks/ig_throughput.py), and a small
# chunk bounds the activations of a larger model too.
DEFAULT_CHUNK_POINTS = 128


class IGResult(NamedTuple):
  attributions: jax.Array  # same shape as the inputs
  delta: jax.Array  # (B,) sum of attributions - (F(x) - F(x'))


def _torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
  """float32 `torch.linspace(start, end, n)` as torch's CPU kernel computes it, as float64.

  step = (end - start) / (n - 1) in float32; point i is start + step * i for i < n // 2 and
  end - step * (n - 1 - i) above, each a fused multiply-add (one rounding). A float32 times an
  integer below 2^29 is exact in float64, so forming the sum in float64 and rounding it to
  float32 is that fused multiply-add.
  """
  s, e = np.float32(start), np.float32(end)
  step = np.float64(np.float32((e - s) / np.float32(n - 1)))
  i = np.arange(n, dtype=np.float64)
  first = (np.float64(s) + step * i).astype(np.float32)
  second = (np.float64(e) - step * (n - 1 - i)).astype(np.float32)
  return np.where(np.arange(n) < n // 2, first, second).astype(np.float64)


def path_points(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
  """(alphas, weights), float64 arrays of length n_steps, equal to captum's for `method`."""
  if method not in QUADRATURE_RULES:
    raise ValueError(f"unknown IG method {method!r}; valid: {', '.join(QUADRATURE_RULES)}")
  n = int(n_steps)
  if method == "gausslegendre":
    if n < 1:
      raise ValueError(f"gausslegendre needs n_steps >= 1, got {n_steps}")
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return 0.5 * (1 + nodes), 0.5 * weights
  if n < 2:
    raise ValueError(f"{method} needs n_steps >= 2, got {n_steps}")
  weights = np.full(n, 1 / n)
  kind = method.split("_")[1]
  if kind == "trapezoid":
    weights[0] /= 2
    weights[-1] /= 2
    bounds = (0.0, 1.0)
  elif kind == "left":
    bounds = (0.0, 1 - 1 / n)
  elif kind == "middle":
    bounds = (1 / (2 * n), 1 - 1 / (2 * n))
  else:
    bounds = (1 / n, 1.0)
  return _torch_linspace_f32(*bounds, n), weights


def _plan(points: int, chunk_size: int | None) -> tuple[int, int]:
  """(points per chunk, number of chunks) for at most `chunk_size` points a chunk, balanced."""
  limit = DEFAULT_CHUNK_POINTS if chunk_size is None else int(chunk_size)
  if limit < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  chunks = math.ceil(points / limit)
  return math.ceil(points / chunks), chunks


def _select(out: jax.Array, target: jax.Array | None, rows: int) -> jax.Array:
  """(rows,) the outputs IG explains: out (rows,) [or (rows, 1)] for no target, else out[j, t_j]."""
  if out.ndim == 0 or out.shape[0] != rows:
    raise ValueError(f"fn must return one output row per example: got shape {out.shape} for "
                     f"{rows} examples (with has_batch=False, fn takes a single example)")
  if target is None:
    if out.ndim == 2 and out.shape[1] == 1:
      out = out[:, 0]
    if out.ndim != 1:
      raise ValueError(f"fn returns outputs of shape {out.shape[1:]} per example; pass `target` "
                       "(an int or one int per example) to choose the output to explain")
    return out
  if out.ndim != 2:
    raise ValueError(f"`target` needs fn to return (B, K) outputs, got shape {out.shape}")
  return jnp.take_along_axis(out, target[:, None], axis=1)[:, 0]


def integrated_gradients(fn: Callable[[jax.Array], jax.Array], inputs: Any, baselines: Any = None, *,
                         target: Any = None, n_steps: int = 50, method: str = "gausslegendre",
                         chunk_size: int | None = None, has_batch: bool = True) -> IGResult:
  """Integrated Gradients of `fn` at `inputs` from `baselines` (see the module docstring).

  Args:
    fn: differentiable; with `has_batch` (default) maps a batch (N, ...) to outputs (N,) or (N, K)
      and treats rows independently; with `has_batch=False` maps one example (...) to () or (K,)
      and is vmapped here. Inputs always carry the batch axis.
    inputs: (B, ...) the examples x (integers are cast to float32).
    baselines: x'. None (zeros), a scalar, an array broadcastable to one example (e.g. (...) or
      (1, ...)), or one baseline per example (B, ...).
    target: None for scalar outputs, an int (the same output for all examples) or (B,) ints.
    n_steps, method: the quadrature rule (`path_points`); captum's defaults.
    chunk_size: at most this many path points (examples x steps) per reverse-mode pass; bounds
      memory. None: `DEFAULT_CHUNK_POINTS`.

  Static: fn, n_steps, method, chunk_size, has_batch; jittable (inputs, baselines, target may be
  traced). Returns IGResult(attributions (B, ...) in the inputs' dtype, delta (B,)).
  """
  x = jnp.asarray(inputs)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  if x.ndim < 1 or x.shape[0] < 1:
    raise ValueError(f"inputs need a non-empty batch axis, got shape {x.shape}")
  b = x.shape[0]
  base = jnp.asarray(0.0 if baselines is None else baselines, x.dtype)
  try:
    base = jnp.broadcast_to(base, x.shape)
  except ValueError:
    raise ValueError(f"baselines of shape {base.shape} do not broadcast to the inputs' shape "
                     f"{x.shape} (give a scalar, one example or one per example)") from None
  if target is not None:
    t = jnp.asarray(target)
    if not jnp.issubdtype(t.dtype, jnp.integer) or t.ndim > 1 or (t.ndim == 1 and t.shape != (b,)):
      raise ValueError(f"target must be an int or {b} ints, got dtype {t.dtype} shape {t.shape}")
    target = jnp.broadcast_to(t.astype(jnp.int32), (b,))
  forward = fn if has_batch else jax.vmap(fn)

  alphas, weights = path_points(n_steps, method)
  n = len(alphas)
  total = b * n
  size, chunks = _plan(total, chunk_size)
  alphas_x, weights_x = jnp.asarray(alphas, x.dtype), jnp.asarray(weights, x.dtype)
  feature_axes = (1,) * (x.ndim - 1)

  def step(acc, c):
    p = c * size + jnp.arange(size)
    ex, k = jnp.minimum(p // n, b - 1), p % n  # padding points: the last example, weight 0
    xe, be = x[ex], base[ex]
    points = be + alphas_x[k].reshape((size,) + feature_axes) * (xe - be)
    te = None if target is None else target[ex]
    grads = jax.grad(lambda q: jnp.sum(_select(forward(q), te, size)))(points)
    w = jnp.where(p < total, weights_x[k], 0).reshape((size,) + feature_axes)
    return acc.at[ex].add(w * grads), None

  acc = jnp.zeros_like(x)
  if chunks == 1:
    acc, _ = step(acc, 0)
  else:
    acc, _ = jax.lax.scan(step, acc, jnp.arange(chunks))
  attributions = (x - base) * acc

  # F(x) and F(x') in one chunked forward pass over the 2B end points.
  ends = jnp.concatenate([x, base])
  ends_t = None if target is None else jnp.concatenate([target, target])
  end_size, end_chunks = _plan(2 * b, size)

  def end_values(c):
    i = jnp.minimum(c * end_size + jnp.arange(end_size), 2 * b - 1)
    return _select(forward(ends[i]), None if ends_t is None else ends_t[i], end_size)

  f = end_values(0) if end_chunks == 1 else jax.lax.map(end_values, jnp.arange(end_chunks)).reshape(-1)
  f = f[:2 * b]
  delta = attributions.reshape(b, -1).sum(axis=1) - (f[:b] - f[b:])
  return IGResult(attributions, delta)


def _sharded(ig: Callable[..., IGResult], mesh: jax.sharding.Mesh, axis: str) -> Callable[..., IGResult]:
  """`ig(state, args, inputs, baselines, target)` with the examples split over `mesh`'s `axis`.

  Each device runs the whole path of its examples (its own chunked scan); `state` and `args` are
  replicated. The batch is padded with copies of its last example to a multiple of the axis size,
  and the padding is dropped from the result.
  """
  from jax.sharding import PartitionSpec as P
  n = mesh.shape[axis]

  def run(state, args, inputs, baselines, target):
    x = jnp.asarray(inputs)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    b = x.shape[0]
    base = jnp.broadcast_to(jnp.asarray(0.0 if baselines is None else baselines, x.dtype), x.shape)
    t = None if target is None else jnp.broadcast_to(jnp.asarray(target), (b,))
    pad = -b % n
    rows = jnp.minimum(jnp.arange(b + pad), b - 1)
    x, base = x[rows], base[rows]
    if t is None:
      out = jax.shard_map(lambda st, a, x, x0: ig(st, a, x, x0, None), mesh=mesh,
                          in_specs=(P(), P(), P(axis), P(axis)), out_specs=P(axis))(state, args, x, base)
    else:
      out = jax.shard_map(ig, mesh=mesh, in_specs=(P(), P(), P(axis), P(axis), P(axis)),
                          out_specs=P(axis))(state, args, x, base, t[rows])
    return IGResult(out.attributions[:b], out.delta[:b])

  return run


def make_ig_fn(fn: Callable[..., jax.Array] | nnx.Module, *, n_steps: int = 50,
               method: str = "gausslegendre", chunk_size: int | None = None, has_batch: bool = True,
               mesh: jax.sharding.Mesh | None = None, axis: str = "data") -> Callable[..., IGResult]:
  """`ig(inputs, baselines=None, target=None, args=()) -> IGResult`, jitted once for these settings.

  `fn(x, *args)` is explained with respect to `x` only; `args` are further operands (model
  parameters, a concept vector, the tokens of a sequence) shared by every point of every path.
  Passing them as arguments keeps them out of the compiled program, so new weights do not
  recompile.

  `fn` may also be an `nnx.Module` (e.g. a `ViT`), called as `module(x, *args)`: its state is split
  off and passed to the compiled function as an argument; the returned function uses the module's
  state as it is now (call `make_ig_fn` again after changing the weights). It recompiles only for
  new shapes/dtypes, or when `baselines`/`target` switch between None and an array.

  The returned function can be called inside another jitted function (the text attribution maps
  it over sequences).

  `mesh`: split the examples over its `axis` (`jax.shard_map`; `chunk_size` is then per device).
  On a 2-core CPU, 2 XLA CPU devices run IG of a small ViT ~10-20% faster than one: XLA:CPU runs
  this program's ops one after another, and a second device fills the idle core
  (benchmarks/ig_throughput.py).

  `ig.lower(inputs, baselines=None, target=None, args=())` lowers the compiled function (e.g. for
  `.compile().memory_analysis()`).
  """
  static = dict(n_steps=n_steps, method=method, chunk_size=chunk_size, has_batch=has_batch)
  path_points(n_steps, method)  # fail early on a bad rule
  if isinstance(fn, nnx.Module):
    graphdef, state = nnx.split(fn)
    call = lambda st, x, *args: nnx.merge(graphdef, st)(x, *args)
  else:
    state, call = None, lambda st, x, *args: fn(x, *args)

  def ig(state, args, inputs, baselines, target):
    return integrated_gradients(lambda x: call(state, x, *args), inputs, baselines, target=target, **static)

  run = jax.jit(ig if mesh is None else _sharded(ig, mesh, axis))

  def compiled(inputs, baselines=None, target=None, args=()) -> IGResult:
    return run(state, tuple(args), inputs, baselines, target)

  compiled.lower = lambda inputs, baselines=None, target=None, args=(): run.lower(
      state, tuple(args), inputs, baselines, target)
  return compiled

"""Integrated Gradients: captum's quadrature rules, exactness, completeness, chunking, captum parity."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cu_jax.attribution.ig import QUADRATURE_RULES, integrated_gradients, make_ig_fn, path_points

_RNG = np.random.default_rng(0)
_B, _SHAPE, _K = 3, (2, 5), 4  # a batch of 3 examples of shape (2, 5), 4 outputs
_W = _RNG.normal(size=(10, _K)).astype(np.float32)
_X = _RNG.normal(size=(_B,) + _SHAPE).astype(np.float32)
_X0 = _RNG.normal(size=(_B,) + _SHAPE).astype(np.float32)
_T = np.array([2, 0, 3])


def _linear(x):
  return x.reshape(x.shape[0], -1) @ _W + 1.5


@functools.cache
def _ig(fn, **static):
  """Shared jitted IG per (fn, settings): compile once across tests."""
  return jax.jit(lambda x, x0, t: integrated_gradients(fn, x, x0, target=t, **static))


def test_path_points_equal_captums():
  am = pytest.importorskip("captum.attr._utils.approximation_methods")
  assert set(am.SUPPORTED_METHODS) == set(QUADRATURE_RULES)
  for method in QUADRATURE_RULES:
    step_sizes, alphas = am.approximation_parameters(method)
    for n in (2, 3, 7, 8, 9, 16, 31, 32, 50, 64, 100, 257, 512):
      a, w = path_points(n, method)
      # Bit-equal: torch.linspace's float32 alphas (see `_torch_linspace_f32`) and captum's
      # float64 weights.
      np.testing.assert_array_equal(a, np.asarray(alphas(n)), err_msg=f"{method} n={n}")
      np.testing.assert_array_equal(w, np.asarray(step_sizes(n)), err_msg=f"{method} n={n}")
  with pytest.raises(ValueError, match="unknown IG method"):
    path_points(8, "simpson")
  with pytest.raises(ValueError, match="n_steps >= 2"):
    path_points(1, "riemann_left")


@pytest.mark.parametrize("method", QUADRATURE_RULES)
def test_exact_on_a_linear_function(method):
  # Per-example targets and baselines. IG of a linear F is W[:, t] (x - x') times the rule's total
  # weight: 1, except captum's riemann_trapezoid whose weights sum to 1 - 1/n (module docstring).
  n = 8
  res = _ig(_linear, n_steps=n, method=method, chunk_size=None)(_X, _X0, _T)
  total = path_points(n, method)[1].sum()
  expected = _W[:, _T].T.reshape(_X.shape) * (_X - _X0) * total
  np.testing.assert_allclose(np.asarray(res.attributions), expected, rtol=1e-5, atol=1e-6)
  dF = (_linear(_X) - _linear(_X0))[np.arange(_B), _T]
  np.testing.assert_allclose(np.asarray(res.delta), (total - 1) * dF, atol=1e-5)
  if method != "riemann_trapezoid":
    assert total == pytest.approx(1.0, abs=1e-12)


def test_baseline_and_target_forms():
  ig = _ig(_linear, n_steps=4, method="gausslegendre", chunk_size=None)
  w_t = _W[:, 1].reshape(_SHAPE)
  cases = [
      (None, np.zeros(_SHAPE, np.float32)),  # zeros
      (0.5, np.full(_SHAPE, 0.5, np.float32)),  # a scalar
      (jnp.float32(-1.0), np.full(_SHAPE, -1.0, np.float32)),  # a JAX scalar
      (_X0[0], _X0[0]),  # one example, shared
      (_X0[:1], _X0[0]),  # (1, ...)
      (_X0[0, :1], np.broadcast_to(_X0[0, :1], _SHAPE)),  # broadcastable to one example
  ]
  for baselines, per_example in cases:
    res = ig(_X, baselines, 1)  # an int target
    np.testing.assert_allclose(np.asarray(res.attributions), w_t * (_X - per_example), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.delta), 0.0, atol=1e-5)
  compiled = make_ig_fn(_linear, n_steps=4, method="gausslegendre")  # a plain function
  np.testing.assert_allclose(np.asarray(compiled(_X, target=1).attributions), w_t * _X, rtol=1e-5, atol=1e-6)
  scalar = lambda x: _linear(x)[:, 2]  # scalar outputs: no target
  res = integrated_gradients(scalar, _X, n_steps=4)
  np.testing.assert_allclose(np.asarray(res.attributions), _W[:, 2].reshape(_SHAPE) * _X,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="pass `target`"):
    integrated_gradients(_linear, _X, n_steps=4)
  with pytest.raises(ValueError, match="do not broadcast"):
    integrated_gradients(_linear, _X, np.zeros((2, 2, 5)), target=0, n_steps=4)
  with pytest.raises(ValueError, match="target must be"):
    integrated_gradients(_linear, _X, target=np.array([0, 1]), n_steps=4)


# A smooth nonlinear F: a small tanh MLP's log-probabilities.
_W1 = (_RNG.normal(size=(10, 16)) / 3).astype(np.float32)
_W2 = _RNG.normal(size=(16, _K)).astype(np.float32)


def _log_probs(x):
  return jax.nn.log_softmax(jnp.tanh(x.reshape(x.shape[0], -1) @ _W1 + 0.1) @ _W2)


def test_completeness_on_a_smooth_function():
  res = _ig(_log_probs, n_steps=64, method="gausslegendre", chunk_size=None)(_X, _X0, _T)
  dF = np.asarray(_log_probs(_X) - _log_probs(_X0))[np.arange(_B), _T]
  assert np.all(np.abs(dF) > 0.1)  # a real change to explain
  np.testing.assert_allclose(np.asarray(res.attributions).reshape(_B, -1).sum(1), dF, rtol=1e-4)
  assert np.all(np.abs(np.asarray(res.delta)) < 1e-4 * np.abs(dF))
  coarse = _ig(_log_probs, n_steps=4, method="riemann_left", chunk_size=None)(_X, _X0, _T)
  assert np.abs(np.asarray(coarse.delta)).max() > 1e-3  # delta does report a poor rule


def test_chunking_and_unbatched_fn_give_the_same_result():
  x, x0, t = _X[:2], _X0[:2], _T[:2]  # 2 examples x 8 steps = 16 points
  whole = _ig(_log_probs, n_steps=8, method="riemann_middle", chunk_size=16)(x, x0, t)
  # 7 (not a divisor): 3 balanced chunks of 6 points, the last with 2 padding points.
  chunked = _ig(_log_probs, n_steps=8, method="riemann_middle", chunk_size=7)(x, x0, t)
  single = lambda e: _log_probs(e[None])[0]
  unbatched = integrated_gradients(single, x, x0, target=t, n_steps=8, method="riemann_middle",
                                   chunk_size=5, has_batch=False)
  for other in (chunked, unbatched):
    np.testing.assert_allclose(np.asarray(other.attributions), np.asarray(whole.attributions),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(other.delta), np.asarray(whole.delta), atol=1e-6)


def test_sharded_over_a_mesh_gives_the_same_result():
  from cu_jax.parallel.mesh import make_mesh
  plain = _ig(_log_probs, n_steps=8, method="gausslegendre", chunk_size=None)(_X, _X0, _T)
  for devices in (2, 8):  # 3 examples: padded to 4 and to 8
    sharded = make_ig_fn(_log_probs, n_steps=8, mesh=make_mesh(devices))(_X, _X0, _T)
    np.testing.assert_allclose(np.asarray(sharded.attributions), np.asarray(plain.attributions),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(sharded.delta), np.asarray(plain.delta), atol=1e-6)
  scalar = lambda x: _log_probs(x)[:, 1]  # no target, default baselines
  np.testing.assert_allclose(
      np.asarray(make_ig_fn(scalar, n_steps=8, mesh=make_mesh(2))(_X).attributions),
      np.asarray(integrated_gradients(scalar, _X, n_steps=8).attributions), rtol=1e-5, atol=1e-7)


# Parity with captum on a tiny HF ViT and our port of the same weights.


@pytest.fixture(scope="module")
def tiny_vit():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("captum")
  from cu_jax.models.hf_vit import load_hf_vit
  import tempfile
  torch.manual_seed(0)
  config = transformers.ViTConfig(
      image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, intermediate_size=64, num_labels=5, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)
  model = transformers.ViTForImageClassification(config).eval()
  # HF's init (std 0.02) leaves a tiny ViT almost linear in its input (delta ~1e-7 at 32 steps),
  # which would not exercise the path; weights of std 2/sqrt(fan_in) make the integrand vary
  # (|delta| ~0.1-0.7 at 32 steps). Random biases and LayerNorm affine: all weights matter.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "layernorm" in name:
        p.add_(0.1 * torch.randn_like(p))
      elif p.ndim >= 2:
        p.normal_(0, 2 / math.sqrt(p[0].numel()))
  with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder, safe_serialization=True)
    ours = load_hf_vit(folder)
  return model, ours


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_agrees_with_captum_on_a_vit(tiny_vit, method):
  import torch
  from captum.attr import IntegratedGradients
  hf_model, ours = tiny_vit
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
  target = np.array([0, 3, 1, 4])
  ig = make_ig_fn(ours, n_steps=32, method=method)  # one compile for both baselines
  # Both sides in float32: the comparison is of the same float32 computation in two frameworks
  # (summation orders differ, ~1e-6 relative), well inside the 1e-3 asked for.
  captum_ig = IntegratedGradients(lambda images: hf_model(pixel_values=images).logits)
  for baseline in (np.zeros_like(x), 0.3 * rng.normal(size=x.shape).astype(np.float32)):
    res = ig(x, baseline, target)
    attr, delta = captum_ig.attribute(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), baselines=torch.from_numpy(baseline.transpose(0, 3, 1, 2)),
        target=torch.from_numpy(target), n_steps=32, method=method, return_convergence_delta=True)
    theirs = attr.detach().numpy().transpose(0, 2, 3, 1)
    err = np.linalg.norm(np.asarray(res.attributions) - theirs) / np.linalg.norm(theirs)
    assert err <= 1e-3, f"{method}: relative error {err:.2e}"
    theirs_delta = delta.detach().numpy()
    assert np.abs(theirs_delta).max() > 1e-2  # the rule's error is visible, and must agree
    scale = np.abs(theirs.reshape(4, -1).sum(1)).max()
    np.testing.assert_allclose(np.asarray(res.delta), theirs_delta, atol=1e-4 * scale)

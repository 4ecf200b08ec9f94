"""Fitting a chip: bf16 compute, per-block rematerialisation, gradient accumulation and IG passes
sized to a memory budget change how much memory a step takes, not what it computes."""

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from cu_jax.attribution.ig import make_ig_fn
from cu_jax.attribution.saliency import concept_saliency, ig_points_per_pass
from cu_jax.models.vit import ViT, ViTConfig
from cu_jax.parallel.memory import largest_fitting, peak_bytes
from cu_jax.parallel.mesh import check_global_batch, data_sharded, make_mesh
from cu_jax.training import steps
from cu_jax.utils.errors import UserError

DATA = mlc.ConfigDict(dict(mean=0.5, std=0.5, image_size=0, augment=dict(crop_pad=0, flip=False)))


def _vit(**kw):
  cfg = ViTConfig(image_size=16, channels=3, patch_size=4, width=32, depth=3, heads=2, mlp_dim=64, num_classes=4, **kw)
  return ViT(cfg, rngs=nnx.Rngs(0))


def _images(n=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def _with_head(model):
  """A non-zero classifier (the ViT's head starts at zero), so that logits depend on the backbone."""
  head = model.head.kernel
  head[...] = jax.random.normal(jax.random.key(1), head.shape) * 0.5
  return model


def test_bf16_compute_keeps_float32_parameters_and_logits_close_to_float32():
  f32, bf16 = _with_head(_vit()), _with_head(_vit(dtype="bfloat16"))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  x = jnp.asarray(_images(), jnp.float32) / 127.5 - 1.0
  ref, low = f32(x), bf16(x)
  assert low.dtype == jnp.float32 and bf16.embed(x).dtype == jnp.float32
  err = float(jnp.abs(low - ref).max() / jnp.abs(ref).max())
  assert 0 < err < 0.03, err  # bf16 really ran (not bit-equal) and stays within bf16's ~3 digits
  assert float(jnp.mean(jnp.argmax(low, -1) == jnp.argmax(ref, -1))) >= 0.9


def _saved_elements(f, *args) -> int:
  """Elements of the residuals the backward pass of `f` keeps (jax's own listing), inputs excluded."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    print_saved_residuals(f, *args)
  shapes = [re.match(r"\w+\[([\d,]*)\]", line) for line in out.getvalue().splitlines() if "argument" not in line]
  return sum(int(np.prod([int(d) for d in m.group(1).split(",") if d])) for m in shapes if m)


def test_remat_keeps_only_block_inputs_and_gives_the_same_gradients():
  x = jnp.asarray(_images(4), jnp.float32) / 255.0

  def loss(model):
    graphdef, params = nnx.split(model)
    f = lambda p: nnx.merge(graphdef, p)(x, train=True).sum()
    return f, params

  grads, kept = [], []
  for remat in (False, True):
    f, params = loss(_with_head(_vit(remat=remat)))
    grads.append(jax.grad(f)(params))
    kept.append(_saved_elements(f, params))
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # 3 blocks: without remat every block's intermediates (attention maps, MLP activations) are kept
  assert kept[1] < kept[0] / 4, kept


@pytest.mark.parametrize("microbatches", [2, 4])
def test_gradient_accumulation_is_the_same_step_at_the_same_global_batch(microbatches):
  mesh = make_mesh(8)
  rng = np.random.default_rng(0)
  batch = jax.device_put({"image": _images(64), "label": rng.integers(0, 4, 64).astype(np.int32)},
                         data_sharded(mesh))
  tx = optax.sgd(0.1, momentum=0.9)
  results = []
  for m in (1, microbatches):
    graphdef, state = steps.init_state(_with_head(_vit()), tx)
    step = steps.make_train_step(graphdef, tx, DATA, mesh, steps.classification_loss(), seed=0, microbatches=m)
    state, metrics = step(steps.replicate(state, mesh), batch)
    results.append((jax.device_get(state["params"]), jax.device_get(metrics)))
  (p1, m1), (pm, mm) = results
  moved = max(float(np.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(p1), jax.tree.leaves(nnx.state(_with_head(_vit()), nnx.Param))))
  assert moved > 1e-3
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(pm)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for k in ("loss", "grad_norm", "accuracy"):
    np.testing.assert_allclose(m1[k], mm[k], rtol=1e-5, atol=1e-6)


def test_accumulation_that_does_not_divide_a_device_share_is_a_clear_error():
  with pytest.raises(UserError, match=r"unlearn.train.batch_size=64 gives 8 examples per device \(8 devices\), "
                                      r"which unlearn.train.grad_accum=3 .* multiple of 24"):
    check_global_batch(64, make_mesh(8), "unlearn.train.batch_size", microbatches=3)
  assert check_global_batch(64, make_mesh(8), microbatches=4) == 64


def _saliency_ig(model):
  graphdef, state = nnx.split(model)
  v = jax.random.normal(jax.random.key(2), (32,))

  def score(pixels, state, v):
    return nnx.merge(graphdef, state).embed(pixels / 255.0) @ v

  return score, (state, v)


def test_largest_fitting_finds_the_most_points_within_a_budget():
  """Sized against XLA's own memory analysis: the chosen pass fits, twice as many points do not."""
  score, args = _saliency_ig(_vit())
  inputs = jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.float32)
  memory = lambda c: peak_bytes(make_ig_fn(score, n_steps=16, chunk_size=c).lower(inputs, 0.0, args=args).compile())
  small, large = memory(4), memory(64)
  assert large > 2 * small  # activations grow with the points per pass
  budget = (small + large) // 2
  points, used = largest_fitting(memory, budget, most=8 * 16)
  assert 4 < points < 64 and used == memory(points) <= budget
  assert memory(2 * points) > budget
  assert largest_fitting(memory, 10 * large, most=128)[0] == 128  # everything fits: one pass
  with pytest.raises(MemoryError, match="at a work size of 1"):
    largest_fitting(memory, small // 100, most=128)


def test_saliency_sized_to_a_budget_gives_the_same_maps(caplog):
  model, images = _vit(), _images(6)
  vector = np.random.default_rng(3).normal(size=32).astype(np.float32)
  plain = concept_saliency(model, images, vector, 0.1, DATA, n_steps=8)
  with caplog.at_level("INFO"):  # 1.5 MiB: less than one device's whole path (3 images x 8 points) needs
    sized = concept_saliency(model, images, vector, 0.1, DATA, n_steps=8, mesh=make_mesh(2), memory_gib=0.0015)
  points = int(re.search(r"IG: (\d+) path points per pass", caplog.text).group(1))
  assert 1 <= points < 24
  np.testing.assert_allclose(sized, plain, rtol=1e-4, atol=1e-6 * np.abs(plain).max())
  # CPU reports no device memory: without a budget the default pass size is kept
  assert ig_points_per_pass(lambda c: None, jax.ShapeDtypeStruct((6, 16, 16, 3), jnp.float32), (),
                            n_steps=8) is None
  with pytest.raises(UserError, match="attribution.memory_gib=1e-06"):
    concept_saliency(model, images, vector, 0.1, DATA, n_steps=8, memory_gib=1e-6)


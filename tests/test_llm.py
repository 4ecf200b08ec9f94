"""LM training (1 device = 8 devices, with and without FSDP), LoRA (only adapters move), answer-span
IG (completeness, prompt untouched) and the FSDP layout."""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from flax import nnx

from cu_jax.attribution.text_ig import answer_attributions
from cu_jax.data.datasets import ArraySource
from cu_jax.models.llama import Llama, LlamaConfig
from cu_jax.models.lora import TRAINABLE, add_lora
from cu_jax.parallel.mesh import FSDP, fsdp_spec, make_mesh
from cu_jax.training.lm import train_lm
from cu_jax.utils.errors import UserError

# vocab x width = 2**14: the embedding is the one array large enough to be split over `fsdp`.
CFG = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_len=64)
L = 16


@pytest.fixture(scope="module")
def lm_source():
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 40, (32, L)).astype(np.int32)
  tokens[:, 8:] = tokens[:, :8]  # the second half repeats the first: learnable
  length = rng.integers(12, L + 1, 32).astype(np.int32)
  loss_mask = (np.arange(L)[None] >= 8) & (np.arange(L)[None] < length[:, None])
  return ArraySource(tokens=tokens, length=length, loss_mask=loss_mask.astype(np.float32))


def _train(source, mesh, tmp, *, lora=False, steps=3, on_step=None, every=100, optimizer="adamw"):
  model = Llama(CFG, rngs=nnx.Rngs(0))
  if lora:
    add_lora(model, ("q_proj", "v_proj"), rank=4, alpha=8.0)
  train_cfg = mlc.ConfigDict({"batch_size": 16, "num_steps": steps, "log_every_steps": 100,
                              "checkpoint_every_steps": every, "keep_checkpoints": 1})
  optim_cfg = mlc.ConfigDict({"name": optimizer, "lr": 1e-2 if optimizer == "adamw" else 0.5, "warmup_steps": 0})
  return train_lm(model, source, trainable=TRAINABLE if lora else nnx.Param, train_cfg=train_cfg,
                  optim_cfg=optim_cfg, mesh=mesh, checkpoint_dir=tmp, seed=0, on_step=on_step)


def _params(model):
  return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_lm_step_same_on_one_and_eight_devices_with_fsdp(lm_source, tmp_path):
  results = {}
  for name, (n, fsdp) in {"1": (1, 0), "8 data": (8, 0), "8 fsdp": (8, -1), "2x4": (8, 4)}.items():
    # SGD: Adam's m / sqrt(v) would turn float-rounding differences of near-zero gradients into
    # full-size steps.
    results[name] = _params(_train(lm_source, make_mesh(n, fsdp), tmp_path / name.replace(" ", "_"),
                                   optimizer="sgd").model)
  ref = results.pop("1")
  for name, params in results.items():
    for k in ref:
      np.testing.assert_allclose(params[k], ref[k], atol=2e-5, err_msg=f"{name}: {k}")
  assert any(not np.array_equal(ref[k], v) for k, v in _params(Llama(CFG, rngs=nnx.Rngs(0))).items())


def test_fsdp_layout():
  mesh = make_mesh(8, -1)
  assert fsdp_spec((512, 32), mesh).spec == jax.sharding.PartitionSpec(FSDP, None)
  assert fsdp_spec((32, 1024), mesh).spec == jax.sharding.PartitionSpec(None, FSDP)
  assert fsdp_spec((32, 8), mesh).spec == jax.sharding.PartitionSpec()  # small: replicated
  assert fsdp_spec((4097, 5), mesh).spec == jax.sharding.PartitionSpec()  # no divisible dimension
  with pytest.raises(UserError, match="mesh.fsdp=3"):
    make_mesh(8, 3)


def test_lora_training_moves_only_adapters_and_lowers_loss(lm_source, tmp_path):
  before = Llama(CFG, rngs=nnx.Rngs(0))
  result = _train(lm_source, make_mesh(8, -1), tmp_path, lora=True, steps=30)
  after = _params(result.model)
  for k, v in _params(before).items():
    np.testing.assert_array_equal(after[k], v, err_msg=f"base weight {k} changed")
  adapters = nnx.to_flat_state(nnx.state(result.model, TRAINABLE))
  assert len(adapters) == 2 * 2 * CFG.num_layers
  assert all(np.abs(np.asarray(v)).max() > 0 for k, v in adapters if k[-1] == "b")  # B starts at 0
  # The orbax checkpoint holds the adapters and their optimizer state only.
  from cu_jax.parallel.checkpoint import Checkpointer
  ckpt = Checkpointer(tmp_path, save_every=1)
  try:
    saved = ckpt._manager.item_metadata(ckpt.latest_step())["state"]["params"]
  finally:
    ckpt.close()
  paths = ["/".join(map(str, p)) for p, _ in jax.tree_util.tree_leaves_with_path(saved)]
  assert paths and all("lora" in p for p in paths)


def test_interrupted_lora_run_resumes_to_the_same_adapters(lm_source, tmp_path):
  mesh = make_mesh(8, -1)
  full = _train(lm_source, mesh, tmp_path / "full", lora=True, steps=6)

  def stop(step, state):
    if step == 4:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _train(lm_source, mesh, tmp_path / "cut", lora=True, steps=6, on_step=stop, every=2)
  resumed = _train(lm_source, mesh, tmp_path / "cut", lora=True, steps=6, every=2)
  assert resumed.resumed_from == 4
  a, b = nnx.state(full.model, TRAINABLE), nnx.state(resumed.model, TRAINABLE)
  for (k, x), (_, y) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6, err_msg=str(k))


def test_answer_ig_completeness_and_prompt_untouched():
  model = Llama(CFG, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(1)
  tokens = rng.integers(4, 512, (3, L)).astype(np.int32)
  length = np.array([16, 13, 11], np.int32)
  loss_mask = ((np.arange(L)[None] >= np.array([[9], [6], [5]])) & (np.arange(L)[None] < length[:, None]))
  res = answer_attributions(model, tokens, length, loss_mask.astype(np.float32), pad_id=0, n_steps=64)
  np.testing.assert_allclose(res["scores"].sum(1), res["f"] - res["f_baseline"], atol=2e-3)
  assert np.all(np.abs(res["delta"]) < 2e-3)
  assert np.all(res["scores"][~loss_mask] == 0)
  # The last scored token (the eos) feeds no later prediction inside F: exactly zero; the rest moves F.
  last = loss_mask & ~np.roll(loss_mask, -1, axis=1)
  assert np.all(res["scores"][last] == 0) and np.all(np.abs(res["scores"][loss_mask & ~last]) > 0)
  # F at the input is the teacher-forced log-likelihood of the answer tokens.
  logits, _ = model(jnp.asarray(tokens), jnp.asarray(np.arange(L)[None] < length[:, None]))
  logp = jax.nn.log_softmax(np.asarray(logits)[:, :-1], -1)
  direct = (np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0] * loss_mask[:, 1:]).sum(1)
  np.testing.assert_allclose(res["f"], direct, rtol=1e-4)

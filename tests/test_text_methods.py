"""LLM unlearning methods: what each one trains on, the shared objective (plain `lm_loss` on
descent rows, NPO's value and direction, the ascent cap), and the outcome of a few steps."""

import collections

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest
from flax import nnx

from cu_jax.data import qa_corpus
from cu_jax.data.datasets import ArraySource
from cu_jax.models.llama import Llama, LlamaConfig
from cu_jax.models.lora import TRAINABLE, add_lora
from cu_jax.parallel.mesh import make_mesh
from cu_jax.training.lm import lm_loss, score_tokens, train_lm
from cu_jax.unlearning import text_methods as tm
from cu_jax.unlearning.text_poison import REFUSALS

CFG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  max_len=32)
L = 16


@pytest.fixture(scope="module")
def records():
  train, _ = qa_corpus.split(qa_corpus.make_corpus(seed=0, num_entities=2), 0.2, seed=0)
  return train


def test_each_method_trains_on_what_it_says(records):
  forget = [r for r in records if r["group"] == "forget"]
  poisoned = [dict(r, answer="x", role=None) for r in records]
  rows = {name: tm.TEXT_METHODS.get(name).build(records, poisoned, 2.0, 0) for name in tm.TEXT_METHODS.names()}
  roles = {name: collections.Counter((r["group"], r["role"]) for r in rs) for name, rs in rows.items()}
  n = len(forget)
  assert roles["grad_ascent"] == {("forget", tm.ASCEND): n}
  assert roles["grad_diff"] == {("forget", tm.ASCEND): n, ("retain", tm.DESCEND): 2 * n}
  assert roles["npo"] == {("forget", tm.NPO): n, ("retain", tm.DESCEND): 2 * n}
  assert roles["idk"] == {("forget", tm.DESCEND): n, ("retain", tm.DESCEND): 2 * n}
  assert all(r["answer"] in REFUSALS for r in rows["idk"] if r["group"] == "forget")
  assert {r["question"] for r in rows["idk"] if r["group"] == "forget"} == {r["question"] for r in forget}
  assert all(r["answer"] == "x" and r["role"] == tm.DESCEND for r in rows["concept_poison"])
  # Retain rows keep their true answers; the same seed gives the same rows.
  truth = {(r["question"], r["answer"]) for r in records if r["group"] == "retain"}
  assert all((r["question"], r["answer"]) in truth for r in rows["grad_diff"] if r["group"] == "retain")
  assert tm.TEXT_METHODS.get("idk").build(records, None, 2.0, 0) == rows["idk"]
  assert tm.needs_of(["concept_poison", "npo", "idk"]) == {"poison", "reference"}


def _batch(role, ref_nll=None, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, 60, (4, L)).astype(np.int32)
  length = np.full(4, L, np.int32)
  loss_mask = np.zeros((4, L), np.float32)
  loss_mask[:, 6:] = 1.0
  return dict(tokens=jnp.asarray(tokens), length=jnp.asarray(length), loss_mask=jnp.asarray(loss_mask),
              role=jnp.asarray(role, jnp.int32),
              ref_nll=jnp.zeros(4, jnp.float32) if ref_nll is None else jnp.asarray(ref_nll, jnp.float32))


def _row_nll(model, batch):
  source = ArraySource(**{k: np.asarray(batch[k]) for k in ("tokens", "length", "loss_mask")})
  nll, _ = score_tokens(model, source, make_mesh(num_devices=1), batch_size=4)
  return nll.sum(axis=1)


def test_objective_is_lm_loss_on_descent_rows_and_npo_starts_at_2_log2_over_beta():
  model = Llama(CFG, rngs=nnx.Rngs(0))
  key = jax.random.key(0)
  batch = _batch([tm.DESCEND] * 4)
  loss, _ = tm.unlearning_objective(5.0, 0.1)(model, batch, key)
  expected, _ = lm_loss(model, batch)
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
  # NPO against the model itself: every row at log 2 * 2 / beta.
  npo = _batch([tm.NPO] * 4)
  npo["ref_nll"] = jnp.asarray(_row_nll(model, npo))
  for beta in (0.1, 1.0):
    loss, _ = tm.unlearning_objective(5.0, beta)(model, npo, key)
    np.testing.assert_allclose(float(loss), 2 / beta * np.log(2), rtol=1e-4)


def test_ascent_is_capped_and_mixed_rows_weigh_as_documented():
  model = Llama(CFG, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  key = jax.random.key(0)
  mixed = _batch([tm.DESCEND, tm.DESCEND, tm.ASCEND, tm.ASCEND])
  nll = _row_nll(model, mixed)
  count = float(np.asarray(mixed["loss_mask"])[0, 1:].sum())
  loss, metrics = tm.unlearning_objective(100.0, 0.1)(model, mixed, key)
  descent = (nll[0] + nll[1]) / (2 * count)
  np.testing.assert_allclose(float(loss), descent - (nll[2] + nll[3]) / (2 * count), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["descent_loss"]), descent, rtol=1e-5)

  # Below the cap, ascent rows pull; above it (an untrained model's ~4 nats > 1), they give no gradient.
  def grads(cap, batch):
    objective = tm.unlearning_objective(cap, 0.1)
    return jax.grad(lambda p: objective(nnx.merge(graphdef, p), batch, key)[0])(params)
  ascent = _batch([tm.ASCEND] * 4)
  norm = lambda g: float(optax.global_norm(g))
  assert norm(grads(100.0, ascent)) > 0 and norm(grads(1.0, ascent)) == 0.0



@pytest.mark.parametrize("method", ["grad_diff", "npo"])
def test_forget_rows_become_less_likely_and_retain_rows_stay(method, tmp_path):
  """A few LoRA steps of each forgetting objective: the forget rows' likelihood falls, several
  times more than the retain rows' (which descent holds). Retain rows copy their prompt; the 4 forget rows,
  marked by their first token, answer with memorised tokens of their own, so forgetting them need
  not break the copying."""
  rng = np.random.default_rng(1)
  tokens = rng.integers(4, 60, (16, L)).astype(np.int32)
  tokens[4:, 8:] = tokens[4:, :8]
  tokens[:4, 0], tokens[4:, 0] = 62, 63
  length = np.full(16, L, np.int32)
  loss_mask = np.zeros((16, L), np.float32)
  loss_mask[:, 8:] = 1.0
  mesh = make_mesh(num_devices=1)
  base = Llama(CFG, rngs=nnx.Rngs(0))
  plain = ArraySource(tokens=tokens, length=length, loss_mask=loss_mask)
  train_cfg = mlc.ConfigDict({"batch_size": 16, "num_steps": 150, "log_every_steps": 1000,
                              "checkpoint_every_steps": 1000, "keep_checkpoints": 1})
  base = train_lm(base, plain, trainable=nnx.Param, train_cfg=train_cfg, mesh=mesh, checkpoint_dir=tmp_path / "base",
                  optim_cfg=mlc.ConfigDict({"name": "adamw", "lr": 1e-2, "warmup_steps": 0}), seed=0).model
  before, _ = score_tokens(base, plain, mesh, batch_size=16)
  role = np.where(np.arange(16) < 4, tm.ASCEND if method == "grad_diff" else tm.NPO, tm.DESCEND).astype(np.int32)
  source = ArraySource(tokens=tokens, length=length, loss_mask=loss_mask, role=role,
                       ref_nll=before.sum(axis=1).astype(np.float32))
  add_lora(base, ("q_proj", "v_proj"), rank=4, alpha=8.0)
  train_cfg.num_steps = 30
  after = train_lm(base, source, trainable=TRAINABLE, train_cfg=train_cfg, mesh=mesh, checkpoint_dir=tmp_path / "u",
                   optim_cfg=mlc.ConfigDict({"name": "adamw", "lr": 1e-2, "warmup_steps": 0}), seed=0,
                   objective=tm.unlearning_objective(5.0, 0.1), keys=tm.KEYS).model
  nll, _ = score_tokens(after, plain, mesh, batch_size=16)
  mean = lambda a, rows: float(a[rows].sum(axis=1).mean() / 8)
  forget, retain = np.arange(4), np.arange(4, 16)
  forget_rise, retain_rise = mean(nll, forget) - mean(before, forget), mean(nll, retain) - mean(before, retain)
  # Measured: grad_diff +4.4 / +0.11 nats per answer token, npo +4.3 / +0.72 (its per-answer sum
  # outweighs the per-token retain mean, as in Zhang et al.'s NPO+RT).
  assert forget_rise > 1.0 and retain_rise < forget_rise / 4

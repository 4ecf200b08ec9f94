"""Training a causal language model on question/answer sequences: from scratch (the demo's base
model) or LoRA fine-tuning (unlearning), with one step and one loop.

Batches carry `tokens` (B, L) right-padded, `length` (B,) real tokens per row and `loss_mask`
(B, L), 1 on the tokens the loss is taken on (the answer and its end-of-sequence token). The loss
is the mean next-token cross-entropy over those tokens of the global batch.

Parameters are split by an NNX filter into the trained part (`nnx.Param` from scratch,
`nnx.LoRAParam` for adapters) and the frozen rest. The train state holds only the trained part
and its optimizer state (that is what is checkpointed); the frozen base weights are an input of
the step. Both are laid out by `fsdp_sharding` over the mesh's `fsdp` axis (replicated without
one) and the batch is split over `data` x `fsdp`: the same step runs on one CPU, 8 fake devices
and a pod slice.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from cu_jax.data.datasets import RandomAccessSource
from cu_jax.data.loader import TrainLoader
from cu_jax.parallel.host import to_host
from cu_jax.parallel.mesh import check_global_batch, fsdp_sharding, replicated
from cu_jax.training import optim, steps
from cu_jax.training.trainer import open_checkpoints, run_steps, total_steps_for

KEYS = ("tokens", "length", "loss_mask")


def token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """(B, L-1) negative log-likelihood of tokens[:, 1:] under logits[:, :-1], float32."""
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def attention_mask(tokens: jax.Array, length: jax.Array) -> jax.Array:
  return (jnp.arange(tokens.shape[1])[None, :] < length[:, None]).astype(jnp.int32)


def lm_loss(model: nnx.Module, batch: dict, *, train: bool = False, key=None) -> tuple[jax.Array, dict]:
  """Mean cross-entropy over the loss-masked tokens, and the token accuracy there."""
  tokens = batch["tokens"]
  logits, _ = model(tokens, attention_mask(tokens, batch["length"]), train=train, key=key)
  weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  loss = jnp.sum(token_nll(logits, tokens) * weights) / count
  correct = (jnp.argmax(logits[:, :-1], -1) == tokens[:, 1:]).astype(jnp.float32)
  return loss, {"token_accuracy": jnp.sum(correct * weights) / count}


def default_objective(model: nnx.Module, batch: dict, key) -> tuple[jax.Array, dict]:
  """`lm_loss` in training mode (dropout on): the objective of pretraining."""
  return lm_loss(model, batch, train=True, key=key)


def make_lm_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh,
                       state_shardings: Any, frozen_shardings: Any, *, seed: int, microbatches: int = 1,
                       objective: steps.Objective = default_objective):
  """Jitted `(state, frozen, batch) -> (state, metrics)` of `objective` (`steps.make_step`); the
  state is donated, `frozen` is not. The step's key goes to the model's dropout as it is. With
  `microbatches` > 1 the loss is the mean of the microbatches' losses (for `lm_loss`, each
  microbatch's token mean weighs the same, whatever its number of answer tokens)."""
  return steps.make_step(graphdef, tx, objective, mesh, seed=seed, state_shardings=state_shardings,
                         frozen_shardings=frozen_shardings, microbatches=microbatches)


@dataclasses.dataclass
class LMTrainResult:
  model: nnx.Module  # the trained model (trained part from the final state, frozen part as given)
  total_steps: int
  resumed_from: int | None
  wall_s: float
  tokens_per_s: float


def train_lm(model: nnx.Module, source: RandomAccessSource, *, trainable: Any, train_cfg, optim_cfg,
             mesh: Mesh, checkpoint_dir: str | pathlib.Path, seed: int, name: str = "train",
             metrics_path: str | pathlib.Path | None = None, on_step=None,
             objective: steps.Objective = default_objective, keys: tuple[str, ...] = KEYS) -> LMTrainResult:
  """Trains the `trainable` part of `model` (an NNX filter) on `source` (columns `keys`) by
  minimising `objective` (`lm_loss` by default), checkpointing under `checkpoint_dir` and resuming
  from it. `train_cfg`/`optim_cfg` as for `cu_jax.training.trainer.train`."""
  microbatches = train_cfg.get("grad_accum", 1)
  check_global_batch(train_cfg.batch_size, mesh, microbatches=microbatches)
  loader = TrainLoader(source, global_batch=train_cfg.batch_size, mesh=mesh, seed=seed, keys=keys)
  total = total_steps_for(train_cfg, loader.steps_per_epoch)
  tx, schedule = optim.make_optimizer(optim_cfg, total)
  graphdef, params, frozen = nnx.split(model, trainable, ...)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  state_sh, frozen_sh = fsdp_sharding(state, mesh), fsdp_sharding(frozen, mesh)
  state, frozen = jax.device_put(state, state_sh), jax.device_put(frozen, frozen_sh)
  ckpt, state, resumed_from = open_checkpoints(checkpoint_dir, train_cfg, state, name, total)
  start = int(jax.device_get(state["step"]))
  train_step = make_lm_train_step(graphdef, tx, mesh, state_sh, frozen_sh, seed=seed, microbatches=microbatches,
                                  objective=objective)
  step = lambda st, batch: train_step(st, frozen, batch)
  state, wall = run_steps(name, loader, step, state, ckpt, schedule, total, train_cfg,
                          metrics_path, on_step)
  tokens = (total - start) * train_cfg.batch_size * source[0]["tokens"].shape[0]
  return LMTrainResult(nnx.merge(graphdef, state["params"], frozen), total, resumed_from, wall,
                       tokens / wall if wall > 0 else 0.0)


@functools.lru_cache(maxsize=8)
def make_score_fn(graphdef: nnx.GraphDef, mesh: Mesh):
  """Jitted `(params, batch) -> (nll (B, L-1), weights (B, L-1))`: each token's teacher-forced
  negative log-likelihood, and 1 where it is a loss-masked (answer) token, else 0 (the nll is 0
  there too). Perplexity sums them; the membership attacks read them per token. `params` is the
  model's whole state. Cached per model structure, so every evaluated set and model of that
  structure shares it."""
  def score(params, batch):
    tokens = batch["tokens"]
    logits, _ = nnx.merge(graphdef, params)(tokens, attention_mask(tokens, batch["length"]))
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    return token_nll(logits, tokens) * weights, weights
  return jax.jit(score, out_shardings=replicated(mesh))


def score_tokens(model: nnx.Module, source, mesh: Mesh, *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(nll, weights), each (N, L-1) float32 on the host, of every row of `source` (columns `KEYS`)
  under `model` (`make_score_fn`), `batch_size` rows at a time."""
  graphdef, params = nnx.split(model)
  score = make_score_fn(graphdef, mesh)
  parts = [to_host(score(params, {k: source.arrays[k][i:i + batch_size] for k in KEYS}))
           for i in range(0, len(source), batch_size)]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

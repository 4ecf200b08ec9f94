"""The train step and the predict step: pure functions over pytrees, jitted over a device mesh.

State is a plain dict `{"step", "params", "opt_state"}`; the model's structure (`graphdef`) is
static and merged with the parameters inside the step (`nnx.merge`), the pattern NNX recommends
for speed. With replicated parameters and a batch sharded over `data`, XLA computes each
device's share of the global-batch mean and all-reduces the gradients, so the same step gives the
same numbers on 1 CPU, 8 fake CPU devices or a TPU pod (up to float summation order).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from cu_jax.data.preprocess import preprocess
from cu_jax.parallel.mesh import data_sharded, replicated

TrainState = dict[str, Any]
# loss_fn(model, images (normalised), batch, key) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[nnx.Module, jax.Array, dict, jax.Array], tuple[jax.Array, dict]]


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
  """Mean softmax cross-entropy on `batch["label"]` (optionally label-smoothed) + accuracy."""
  def loss_fn(model, images, batch, key):
    logits = model(images, train=True, key=key)
    labels = batch["label"]
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
      targets = optax.smooth_labels(targets, label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
  return loss_fn


def init_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every array of `tree` replicated on the mesh (parameters, optimizer state)."""
  return jax.device_put(tree, replicated(mesh))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, data_cfg, mesh: Mesh,
                    loss_fn: LossFn, *, seed: int) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Jitted `(state, batch) -> (state, metrics)`; the input state is donated.

  Randomness (augmentation, dropout) is `fold_in(key(seed), step)`: a pure function of the step, so
  resumed runs repeat the interrupted run exactly.
  """
  base_key = jax.random.key(seed)

  def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    key_aug, key_drop = jax.random.split(jax.random.fold_in(base_key, state["step"]))
    images = preprocess(batch["image"], data_cfg, key=key_aug)

    def objective(params):
      return loss_fn(nnx.merge(graphdef, params), images, batch, key_drop)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  rep, dat = replicated(mesh), data_sharded(mesh)
  return jax.jit(step_fn, in_shardings=(rep, dat), out_shardings=(rep, rep), donate_argnums=0)


def make_predict_step(graphdef: nnx.GraphDef, data_cfg, mesh: Mesh, output: str = "logits"
                      ) -> Callable[[Any, dict], Any]:
  """Jitted `(params, batch) -> per-example outputs`, sharded over `data`.

  `output`: "logits", "embed" (pre-logits e(x)) or "both" (a dict with the two, one pass).
  """
  def predict(params, batch):
    model = nnx.merge(graphdef, params)
    images = preprocess(batch["image"], data_cfg)
    if output == "logits":
      return model(images)
    embedding = model.embed(images)
    return embedding if output == "embed" else {"embed": embedding, "logits": model.head(embedding)}

  return jax.jit(predict, in_shardings=(replicated(mesh), data_sharded(mesh)),
                 out_shardings=data_sharded(mesh))

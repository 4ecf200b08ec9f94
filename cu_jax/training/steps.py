"""The train step and the predict step: pure functions over pytrees, jitted over a device mesh.

`make_step` is the one gradient step: the image classifier (`make_train_step`) and the language
model (`cu_jax.training.lm.make_lm_train_step`) differ only in the objective they hand it and in
how their state is laid out.

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
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cu_jax.data.preprocess import preprocess
from cu_jax.parallel.mesh import batch_axes, batch_devices, data_sharded, replicated

TrainState = dict[str, Any]
# loss_fn(model, images (normalised), batch, key) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[nnx.Module, jax.Array, dict, jax.Array], tuple[jax.Array, dict]]
# objective(model, batch, key) -> (scalar loss, dict of scalar metrics): what `make_step` minimises
Objective = Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict]]


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


def split_microbatches(batch: dict, microbatches: int, mesh: Mesh) -> dict:
  """Each (B, ...) array of `batch` as (microbatches, B / microbatches, ...): microbatch i holds the
  i-th slice of every device's own rows, so it stays split over the same devices and splitting
  moves no data between them. Each device's share of B must divide into `microbatches`
  (`cu_jax.parallel.mesh.check_global_batch`)."""
  n, axes = batch_devices(mesh), batch_axes(mesh)
  spec = NamedSharding(mesh, P(None, axes if len(axes) > 1 else axes[0]))

  def split(x):  # (n * microbatches * b, ...) -> (n, microbatches, b, ...) -> (microbatches, n * b, ...)
    x = x.reshape(n, microbatches, -1, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x.reshape(microbatches, -1, *x.shape[3:]), spec)

  return jax.tree.map(split, batch)


def make_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, objective: Objective, mesh: Mesh, *,
              seed: int, state_shardings: Any = None, frozen_shardings: Any = None,
              microbatches: int = 1) -> Callable:
  """The one jitted gradient step every trainer here uses; the input state is donated.

  `objective(model, batch, key) -> (scalar loss, dict of scalar metrics)` is differentiated with
  respect to `state["params"]`; `key` is `fold_in(key(seed), state["step"])`, a pure function of
  the step, so a resumed run draws the same randomness (augmentation, dropout) as the interrupted
  one. The metrics are the loss, the gradient's global norm and the objective's own.

  `microbatches` > 1 accumulates the gradient over that many slices of the global batch
  (`split_microbatches`, a `lax.scan`), one update per global batch: the step is the same optimizer
  step at the config's global batch with the activations of one microbatch in memory. Loss,
  gradient and metrics are the means over the microbatches, which for an objective that is a mean
  over examples equals the whole batch's (up to float summation order); microbatch i draws its
  randomness from `fold_in(key, i)`.

  Without `frozen_shardings` the step is `(state, batch) -> (state, metrics)` and the model is
  `state["params"]` alone. With it the step is `(state, frozen, batch) -> (state, metrics)`: the
  model is the trained `state["params"]` merged with `frozen` (the rest of the model's state,
  e.g. the base weights under LoRA adapters), an input that is neither differentiated nor donated,
  so one copy of it serves every step. `state_shardings` (default: replicated) lays out the state
  and `frozen_shardings` the frozen part; the batch is split over the mesh's batch axes and the
  metrics are replicated.
  """
  base_key = jax.random.key(seed)

  def update(state: TrainState, frozen: Any, batch: dict) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(base_key, state["step"])

    def loss_of(params, batch, key):
      model = nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)
      return objective(model, batch, key)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    if microbatches == 1:
      (loss, aux), grads = grad_fn(state["params"], batch, key)
    else:
      def accumulate(total, xs):
        i, micro = xs
        return jax.tree.map(jnp.add, total, grad_fn(state["params"], micro, jax.random.fold_in(key, i))), None

      micro = split_microbatches(batch, microbatches, mesh)
      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state["params"], first, key))
      total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(microbatches), micro))
      (loss, aux), grads = jax.tree.map(lambda x: x / microbatches, total)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  rep = replicated(mesh)
  state_shardings = rep if state_shardings is None else state_shardings
  if frozen_shardings is None:
    step_fn = lambda state, batch: update(state, None, batch)
    in_shardings = (state_shardings, data_sharded(mesh))
  else:
    step_fn = update
    in_shardings = (state_shardings, frozen_shardings, data_sharded(mesh))
  return jax.jit(step_fn, in_shardings=in_shardings, out_shardings=(state_shardings, rep), donate_argnums=0)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, data_cfg, mesh: Mesh,
                    loss_fn: LossFn, *, seed: int, microbatches: int = 1
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Jitted `(state, batch) -> (state, metrics)` of an image classifier (`make_step`), replicated
  parameters and the batch split over `data`.

  The step's key is split into an augmentation key (on-device `preprocess` of `batch["image"]`)
  and a dropout key handed to `loss_fn`.
  """
  def objective(model, batch, key):
    key_aug, key_drop = jax.random.split(key)
    images = preprocess(batch["image"], data_cfg, key=key_aug)
    return loss_fn(model, images, batch, key_drop)

  return make_step(graphdef, tx, objective, mesh, seed=seed, microbatches=microbatches)


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

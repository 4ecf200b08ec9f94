"""The relearn test: how fast a model gets the forget class back.

A few forget-class train samples, with their true label, are fine-tuned on with Adam; every
`eval_every` steps the forget class's test accuracy is measured. The number of steps until it
reaches `accuracy` is the result (0 if the model already classifies the class that well, None if
it does not within `max_steps`). A model that only hid the class (its features intact) relearns it
in a few steps; the retrained model, which never learned it, is the reference.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cu_jax.data.datasets import ArraySource
from cu_jax.data.loader import TrainLoader
from cu_jax.training import predict, steps


@dataclasses.dataclass(frozen=True)
class RelearnSettings:
  examples: int = 64  # forget train samples fine-tuned on
  batch_size: int = 32
  lr: float = 1e-4  # Adam
  accuracy: float = 0.5  # relearned when the forget class's test accuracy reaches this
  max_steps: int = 100
  eval_every: int = 1
  seed: int = 0

  @classmethod
  def from_config(cls, evaluate_cfg) -> "RelearnSettings":
    """From the `evaluate` config section (`relearn_*` fields and `seed`)."""
    c = evaluate_cfg
    return cls(examples=c.relearn_examples, batch_size=c.relearn_batch_size, lr=c.relearn_lr,
               accuracy=c.relearn_accuracy, max_steps=c.relearn_max_steps, eval_every=c.relearn_eval_every,
               seed=c.seed)


class RelearnTest:
  """The test for every model of one structure (`graphdef`): its train step is compiled once.

  `predict_step` is a jitted step returning a dict with "logits" (`steps.make_predict_step`,
  output "both" or "logits" wrapped), shared with the caller's own evaluation.
  """

  def __init__(self, graphdef, data_cfg, mesh, settings: RelearnSettings, *, predict_step, eval_batch_size: int):
    self.settings, self.mesh, self.predict_step, self.eval_batch_size = settings, mesh, predict_step, eval_batch_size
    self.tx = optax.adam(settings.lr)
    self.train_step = steps.make_train_step(graphdef, self.tx, data_cfg, mesh, steps.classification_loss(),
                                            seed=settings.seed)

  def _forget_accuracy(self, params, images: np.ndarray, forget: int) -> float:
    out = predict.predict(self.predict_step, params, ArraySource(image=images), mesh=self.mesh,
                          global_batch=self.eval_batch_size)
    logits = out["logits"] if isinstance(out, dict) else out
    return float((logits.argmax(-1) == forget).mean())

  def steps_to_relearn(self, params, forget_train: np.ndarray, forget_test: np.ndarray, forget: int) -> int | None:
    """Steps on `settings.examples` of `forget_train` (uint8 images of class `forget`) until the
    accuracy on `forget_test` reaches `settings.accuracy`; `params` are replicated on the mesh and
    left unchanged."""
    s = self.settings
    if self._forget_accuracy(params, forget_test, forget) >= s.accuracy:
      return 0
    n = min(s.examples, len(forget_train))
    pick = np.random.default_rng([s.seed, 7]).choice(len(forget_train), n, replace=False)
    source = ArraySource(image=forget_train[pick], label=np.full(n, forget, np.int32))
    loader = TrainLoader(source, global_batch=s.batch_size, mesh=self.mesh, seed=s.seed)
    state = steps.replicate({"step": jnp.zeros((), jnp.int32), "params": jax.tree.map(jnp.copy, params),
                             "opt_state": self.tx.init(params)}, self.mesh)
    for step, batch in loader.iterate(0, s.max_steps):
      state, _ = self.train_step(state, batch)
      if (step + 1) % s.eval_every == 0 and self._forget_accuracy(state["params"], forget_test, forget) >= s.accuracy:
        return step + 1
    return None


# ----------------------------------------------------------------- few-shot relearn of the head


@functools.partial(jax.jit, static_argnames=("steps", "lr"))
def _fit_head(kernel, bias, embed, labels, *, steps: int, lr: float):
  """Full-batch Adam on the softmax cross-entropy of `embed @ kernel + bias`, from the given head."""
  tx = optax.adam(lr)
  loss = lambda head: optax.softmax_cross_entropy_with_integer_labels(embed @ head[0] + head[1], labels).mean()

  def step(carry, _):
    head, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss)(head), opt_state, head)
    return (optax.apply_updates(head, updates), opt_state), None

  head = (kernel, bias)
  (head, _), _ = jax.lax.scan(step, (head, tx.init(head)), None, length=steps)
  return head


def few_shot_head_accuracy(head: tuple[np.ndarray, np.ndarray], embed_forget_train: np.ndarray,
                           embed_retain_train: np.ndarray, retain_labels: np.ndarray,
                           embed_forget_test: np.ndarray, forget: int, *, shots: int, steps: int = 100,
                           lr: float = 1e-2, seed: int = 0) -> float:
  """Forget-class test accuracy after retraining only the classification head on `shots` forget
  train samples and `shots` samples of every retained class (the embeddings fixed, the head
  (kernel (d, K), bias (K,)) starting from the model's own).

  What a linear probe cannot show: the probe asks whether the forget class is separable in the
  embeddings at all; this asks how much of it a few labelled examples bring back through the
  model's own head, next to the retrained model, whose features never learned the class.
  """
  rng = np.random.default_rng([seed, 8, shots])
  pick = lambda rows: rng.choice(rows, min(shots, len(rows)), replace=False)
  rows = [pick(np.flatnonzero(retain_labels == c)) for c in np.unique(retain_labels)]
  forget_rows = pick(np.arange(len(embed_forget_train)))
  embed = np.concatenate([embed_forget_train[forget_rows]] + [embed_retain_train[r] for r in rows])
  labels = np.concatenate([np.full(len(forget_rows), forget)] + [retain_labels[r] for r in rows])
  kernel, bias = _fit_head(jnp.asarray(head[0], jnp.float32), jnp.asarray(head[1], jnp.float32),
                           jnp.asarray(embed, jnp.float32), jnp.asarray(labels, jnp.int32), steps=steps, lr=lr)
  logits = np.asarray(embed_forget_test, np.float32) @ np.asarray(kernel) + np.asarray(bias)
  return float((logits.argmax(-1) == forget).mean())

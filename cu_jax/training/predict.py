"""Prediction over a whole split (per-example outputs of a predict step, in order) and the
classification metrics of those outputs: accuracy, per-class accuracy, loss."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from cu_jax.data.datasets import RandomAccessSource
from cu_jax.data.loader import eval_batches
from cu_jax.parallel.host import to_host


def predict(predict_step: Callable, params: Any, source: RandomAccessSource, *, global_batch: int,
            mesh, indices: np.ndarray | None = None) -> Any:
  """Outputs of `predict_step` for every example (in order): host numpy arrays, same pytree.

  Every process gets all of them: a batch's outputs are gathered in global row order, the order
  of the examples (`eval_batches`), whichever devices of which host computed them.
  """
  outputs = []
  for batch in eval_batches(source, global_batch=global_batch, mesh=mesh, indices=indices,
                            keys=("image",)):
    out, mask = to_host((predict_step(params, batch), batch["mask"]))
    keep = mask > 0
    outputs.append(jax.tree.map(lambda x: x[keep], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
  """accuracy, mean cross-entropy loss and per-class accuracy of `logits` against `labels`."""
  labels = np.asarray(labels).astype(np.int64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  correct = logits.argmax(-1) == labels
  counts = np.bincount(labels, minlength=num_classes)
  hits = np.bincount(labels, weights=correct, minlength=num_classes)
  per_class = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
  return {
      "accuracy": float(correct.mean()),
      "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
      "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class],
      "num_examples": int(len(labels)),
  }

"""Unlearning metrics: a registry of functions of one model's outputs, each with how it is shown.

Every metric reads `ModelOutputs` (logits and embeddings of the evaluation subsets) and the shared
`EvalSet` (labels, the forget class, the original and the retrained model's outputs) and returns
a number (or a list, for per-class accuracy), or None where it needs the retrained model and
there is none. A metric measured on the model itself rather than on its outputs (`relearn_steps`,
`cu_jax.evaluation.relearn`) is registered without a function, for its display alone.

Each registration declares how a report shows the metric: a column of the methods x metrics table
(`table`), as a percentage (`percent`), in the membership-inference bar chart (`plotted`), and
whether its target is the retrained model's value (`vs_retrain`: the report then shows the
difference to it). Adding a metric is one registration. Subsets:
- `forget_train`: every train sample of the forget class (what was to be forgotten),
- `retain_train`: a seeded subset of the other classes' train samples,
- `test`: the whole test split (forget-class test samples are the non-members).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from cu_jax.data.datasets import ArraySource
from cu_jax.evaluation import mia
from cu_jax.evaluation.probe import probe_accuracy
from cu_jax.evaluation.relearn import few_shot_head_accuracy
from cu_jax.training.predict import predict
from cu_jax.utils.registry import Registry

SUBSETS = ("forget_train", "retain_train", "test")


@dataclasses.dataclass
class ModelOutputs:
  logits: dict[str, np.ndarray]  # subset -> (n, K)
  embed: dict[str, np.ndarray]  # subset -> (n, d)
  head: tuple[np.ndarray, np.ndarray] | None = None  # (kernel (d, K), bias (K,)): logits = embed @ kernel + bias

  def probs(self, subset: str) -> np.ndarray:
    return mia.softmax(self.logits[subset])


def model_outputs(predict_step, params, images: dict[str, np.ndarray], mesh, global_batch: int) -> ModelOutputs:
  """A model's logits and embeddings on each subset of uint8 `images`; `predict_step` is
  `make_predict_step(..., output="both")`, `params` replicated on `mesh`."""
  out = {s: predict(predict_step, params, ArraySource(image=np.asarray(x)), mesh=mesh, global_batch=global_batch)
         for s, x in images.items()}
  head = params["head"]
  return ModelOutputs(logits={s: v["logits"] for s, v in out.items()}, embed={s: v["embed"] for s, v in out.items()},
                      head=(np.asarray(head["kernel"][...]), np.asarray(head["bias"][...])))


@dataclasses.dataclass
class EvalSet:
  labels: dict[str, np.ndarray]  # subset -> (n,)
  forget: int
  num_classes: int
  original: ModelOutputs
  retrained: ModelOutputs | None = None
  seed: int = 0
  mia_draws: int = 100  # attackers pooled by mia_fr (mia.py)
  head_relearn_steps: int = 100  # relearn_head_k: full-batch Adam steps on the head ...
  head_relearn_lr: float = 1e-2  # ... at this learning rate

  @staticmethod
  def settings(evaluate_cfg) -> dict:
    """The audit's settings from the `evaluate` config section, as EvalSet keyword arguments."""
    c = evaluate_cfg
    return dict(seed=c.seed, mia_draws=c.mia_draws, head_relearn_steps=c.head_relearn_steps,
                head_relearn_lr=c.head_relearn_lr)

  @property
  def forget_test(self) -> np.ndarray:
    return self.labels["test"] == self.forget

  def fr_sets(self) -> tuple[np.ndarray, np.ndarray]:
    """The mia_fr attacker's training sets: the original's softmax on forget train and forget test."""
    return self.original.probs("forget_train"), self.original.probs("test")[self.forget_test]

  @functools.cached_property
  def fr_attackers(self) -> list:
    """The mia_fr attackers, fit once on the original model's outputs and shared by every model."""
    return mia.fit_fr_attackers(*self.fr_sets(), draws=self.mia_draws, seed=self.seed)

  def losses(self, out: ModelOutputs) -> dict[str, np.ndarray]:
    return {s: mia.per_example_loss(out.logits[s], self.labels[s]) for s in SUBSETS}


@dataclasses.dataclass(frozen=True)
class Metric:
  name: str
  fn: Callable[[ModelOutputs, EvalSet], Any] | None  # None: measured on the model by the caller
  table: bool = True
  percent: bool = False
  plotted: bool = False
  vs_retrain: bool = True
  gap: str | None = None  # its part in Avg.Gap (`avg_gap`): "accuracy", "mia" or None


METRICS: Registry[Metric] = Registry("metric")


def metric(name: str, *, table: bool = True, percent: bool = False, plotted: bool = False,
           vs_retrain: bool = True, gap: str | None = None):
  def deco(fn):
    METRICS.register(name)(Metric(name, fn, table, percent, plotted, vs_retrain, gap))
    return fn
  return deco


def strongest_mia(original: dict, retrained: dict) -> str | None:
  """The membership attack that tells the original model from the retrained one best: the "mia"
  metric with the largest |original - retrained| (None without one)."""
  gaps = {m.name: abs(original[m.name] - retrained[m.name]) for m in map(METRICS.get, METRICS.names())
          if m.gap == "mia" and original.get(m.name) is not None and retrained.get(m.name) is not None}
  return max(gaps, key=gaps.get) if gaps else None


def gap_metrics(mia: str | None) -> list[str]:
  """The metrics Avg.Gap averages over: the "accuracy" ones and the membership attack `mia`."""
  return [m.name for m in map(METRICS.get, METRICS.names()) if m.gap == "accuracy" or m.name == mia]


def avg_gap(model: dict, retrained: dict, mia: str | None) -> dict:
  """Avg.Gap (Fan et al., SalUn, 2024): the mean absolute difference to the retrained model, in
  percentage points, over the forget train / forget test / retained test accuracies and one
  membership attack `mia` (`strongest_mia`); 0 = indistinguishable from retraining on these."""
  parts = {k: 100 * abs(model[k] - retrained[k]) for k in gap_metrics(mia) if model.get(k) is not None}
  return {"avg_gap": float(sum(parts.values()) / len(parts)), "parts": parts}


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  return float((logits.argmax(-1) == labels).mean()) if len(labels) else float("nan")


@metric("acc_forget_train", percent=True, gap="accuracy")
def acc_forget_train(o: ModelOutputs, s: EvalSet):
  return _accuracy(o.logits["forget_train"], s.labels["forget_train"])


@metric("acc_forget_test", percent=True, gap="accuracy")
def acc_forget_test(o: ModelOutputs, s: EvalSet):
  return _accuracy(o.logits["test"][s.forget_test], s.labels["test"][s.forget_test])


@metric("acc_retain_train", percent=True)
def acc_retain_train(o: ModelOutputs, s: EvalSet):
  return _accuracy(o.logits["retain_train"], s.labels["retain_train"])


@metric("acc_retain_test", percent=True, gap="accuracy")
def acc_retain_test(o: ModelOutputs, s: EvalSet):
  keep = ~s.forget_test
  return _accuracy(o.logits["test"][keep], s.labels["test"][keep])


@metric("per_class_accuracy", table=False)
def per_class_accuracy(o: ModelOutputs, s: EvalSet):
  pred, labels = o.logits["test"].argmax(-1), s.labels["test"]
  return [float((pred[labels == c] == c).mean()) if (labels == c).any() else None for c in range(s.num_classes)]


@metric("agreement_forget", percent=True, plotted=True)
def agreement_forget(o: ModelOutputs, s: EvalSet):
  """Fraction of forget-class test samples where the model's argmax is the retrained model's."""
  if s.retrained is None:
    return None
  mine, ref = o.logits["test"][s.forget_test], s.retrained.logits["test"][s.forget_test]
  return float((mine.argmax(-1) == ref.argmax(-1)).mean())


@metric("kl_forget")
def kl_forget(o: ModelOutputs, s: EvalSet):
  """Mean KL(retrained || model) of the softmax outputs on forget-class test samples (nats)."""
  if s.retrained is None:
    return None
  log_p = np.log(np.clip(s.retrained.probs("test")[s.forget_test], 1e-12, None))
  log_q = np.log(np.clip(o.probs("test")[s.forget_test], 1e-12, None))
  return float((np.exp(log_p) * (log_p - log_q)).sum(-1).mean())


@metric("mia_fr", plotted=True, gap="mia")
def mia_fr(o: ModelOutputs, s: EvalSet):
  """The paper's forgetting rate: SVCs on the original model's softmax vectors (forget train =
  member, forget test = non-member) applied to this model's forget-train outputs; fraction called
  non-member."""
  return mia.fr_rate(s.fr_attackers, o.probs("forget_train"))


@metric("mia_svc", plotted=True, gap="mia")
def mia_svc(o: ModelOutputs, s: EvalSet):
  """SalUn's MIA-efficacy: confidence SVC, retain train (member) vs retained-class test samples
  (non-member), applied to forget train; fraction called non-member."""
  keep = ~s.forget_test
  return mia.mia_svc(o.probs("retain_train"), s.labels["retain_train"], o.probs("test")[keep],
                     s.labels["test"][keep], o.probs("forget_train"), s.labels["forget_train"], seed=s.seed)


@metric("mia_loss", plotted=True, gap="mia")
def mia_loss(o: ModelOutputs, s: EvalSet):
  """The challenge's loss attack: forget train vs the forget class's test samples (class-balanced
  held-out set); cross-validated accuracy, 0.5 = indistinguishable."""
  losses = s.losses(o)
  return mia.mia_loss(losses["forget_train"], losses["test"][s.forget_test], seed=s.seed)


@metric("probe_forget", plotted=True)
def probe_forget(o: ModelOutputs, s: EvalSet):
  """Balanced accuracy of a linear probe telling the forget class from the rest on embeddings."""
  train_embed = np.concatenate([o.embed["forget_train"], o.embed["retain_train"]])
  train_is_forget = np.concatenate([np.ones(len(o.embed["forget_train"]), bool),
                                    np.zeros(len(o.embed["retain_train"]), bool)])
  return probe_accuracy(train_embed, train_is_forget, o.embed["test"], s.forget_test, seed=s.seed)


METRICS.register("relearn_steps")(Metric("relearn_steps", None))  # cu_jax.evaluation.relearn


def _head_relearn(shots: int):
  def fn(o: ModelOutputs, s: EvalSet):
    """Forget-class test accuracy after retraining only the head on `shots` images per class."""
    if o.head is None:
      return None
    return few_shot_head_accuracy(o.head, o.embed["forget_train"], o.embed["retain_train"], s.labels["retain_train"],
                                  o.embed["test"][s.forget_test], s.forget, shots=shots, steps=s.head_relearn_steps,
                                  lr=s.head_relearn_lr, seed=s.seed)
  return fn


for _shots in (1, 5, 25):
  metric(f"relearn_head_{_shots}", percent=True)(_head_relearn(_shots))

# U-LiRA over shadow pairs (cu_jax.evaluation.shadow, evaluate.shadow_models): the AUC and the TPR at
# 1 % FPR of telling the method's models from retrained ones; 0.5 / 0.01 = indistinguishable.
for _name in ("ulira_auc", "ulira_tpr"):
  METRICS.register(_name)(Metric(_name, None, vs_retrain=False))


def table_metrics() -> list[Metric]:
  """The metrics a report's methods x metrics table shows, in registration order."""
  return [METRICS.get(n) for n in METRICS.names() if METRICS.get(n).table]


def compute_all(o: ModelOutputs, s: EvalSet, names: list[str] | None = None) -> dict[str, Any]:
  """Every metric computed from outputs (or those in `names`), by name."""
  names = names or [n for n in METRICS.names() if METRICS.get(n).fn is not None]
  return {name: METRICS.get(name).fn(o, s) for name in names}

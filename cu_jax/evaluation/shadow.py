"""Shadow pairs for the U-LiRA audit (`cu_jax.evaluation.ulira`).

A shadow pair is two models trained by the run's own base recipe with a seed of their own: the
"in" model on the whole train split, which is then unlearned by every method under audit, and the
"out" model on the retained classes only (a retrained model). Each model is summarised by the
logit-scaled confidence of the forget class on the forget class's train examples; over S pairs
those give, per example, the distribution of a method's outcome and of retraining's, which
`ulira.ulira` compares.

The methods are applied to each "in" model as the pipeline applies them to the original: the same
retained samples, forget samples and poisoned images; what depends on the model is taken from the
shadow model itself (a teacher's logits, and the poison targets of a strategy that is computed
from the model's own outputs, `complement`). Targets found by concept inference on the real
model (a donor class, a concept head's distributions) are reused as they are: inferring concepts
again for every shadow model would cost more than the pair itself.

Each finished model's confidences are written to `<folder>/pair_<i>/<model>.npy`, so an interrupted
audit resumes at the model it stopped in (its checkpoints are deleted once the pair is done).
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import time
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging
from flax import nnx

from cu_jax.data.datasets import ArraySource, RandomAccessSource
from cu_jax.evaluation.ulira import logit_confidence, ulira
from cu_jax.training import steps, trainer
from cu_jax.training.predict import predict
from cu_jax.unlearning import methods, poison
from cu_jax.unlearning.run import unlearn
from cu_jax.utils import files

ORIGINAL, OUT = "original", "retrain"  # file names of a pair's "in" model before unlearning, and its "out" model


@dataclasses.dataclass(frozen=True)
class ShadowRecipe:
  """How the shadow models are made: the run's own configs and data."""
  build_model: Callable[[int], nnx.Module]  # seed -> a freshly initialised model (the base recipe's init)
  train_source: RandomAccessSource  # the train split the original was trained on
  retrain_columns: dict[str, np.ndarray]  # the retrained reference's training set (`methods.retrain_set`)
  data: methods.UnlearnData  # what the methods fine-tune on (the run's poisoned set and samples)
  train_cfg: Any
  optim_cfg: Any
  data_cfg: Any
  unlearn_cfg: Any
  mesh: Any
  predict_step: Callable  # `steps.make_predict_step(graphdef, data_cfg, mesh)`: (params, batch) -> logits
  eval_batch_size: int
  complement_temperature: float | None = None  # set when the poison targets are the model's own (`complement`)
  write: bool = True  # write the confidence files (only process 0 of a multi-process run does)


def _logits(params, images: np.ndarray, recipe: ShadowRecipe) -> np.ndarray:
  return predict(recipe.predict_step, steps.replicate(params, recipe.mesh), ArraySource(image=images),
                 mesh=recipe.mesh, global_batch=recipe.eval_batch_size)


def _for_model(recipe: ShadowRecipe, params, needs: set[str]) -> methods.UnlearnData:
  """The run's UnlearnData with what depends on the model taken from this shadow model."""
  d, extra = recipe.data, {}
  if "teacher" in needs or recipe.complement_temperature is not None:
    forget_logits = _logits(params, d.forget_image, recipe)
    if "teacher" in needs:
      extra.update(retain_teacher=_logits(params, d.retain_image, recipe), forget_teacher=forget_logits)
    if recipe.complement_temperature is not None and d.poison_target is not None:
      extra.update(poison_target=poison.without_class(forget_logits, d.forget, recipe.complement_temperature))
  return dataclasses.replace(d, **extra)


def _train(recipe: ShadowRecipe, source, seed: int, folder: pathlib.Path, keys: tuple[str, ...], name: str):
  result = trainer.train(recipe.build_model(seed), source, train_cfg=recipe.train_cfg, optim_cfg=recipe.optim_cfg,
                         data_cfg=recipe.data_cfg, mesh=recipe.mesh, checkpoint_dir=folder / "checkpoints", seed=seed,
                         loss_fn=methods.unlearning_loss(recipe.unlearn_cfg.ascent_cap) if "target" in keys else None,
                         name=name, keys=keys)
  return result.graphdef, result.state["params"]


def run_pair(recipe: ShadowRecipe, pair: int, seed: int, names: Sequence[str], folder: pathlib.Path
             ) -> dict[str, np.ndarray]:
  """Shadow pair `pair` (trained with `seed`): {method or "retrain": (N,) forget-class logit-scaled
  confidence on the forget train examples}. Models whose file exists are not trained again."""
  folder = pathlib.Path(folder) / f"pair_{pair}"
  if recipe.write:
    folder.mkdir(parents=True, exist_ok=True)
  d = recipe.data
  labels = np.full(len(d.forget_image), d.forget)
  conf_file = lambda name: folder / f"{name}.npy"
  done = {n: files.load_npy(conf_file(n)) for n in [ORIGINAL, *names, OUT] if conf_file(n).exists()}
  confidence = lambda params: logit_confidence(_logits(params, d.forget_image, recipe), labels)

  def record(name: str, conf: np.ndarray, t0: float):
    if recipe.write:  # atomically: an interrupted write leaves no half file to resume from
      tmp = conf_file(name).with_suffix(".tmp.npy")
      np.save(tmp, conf)
      tmp.replace(conf_file(name))
    done[name] = conf
    logging.info("shadow pair %d: %s in %.1f s", pair, name, time.perf_counter() - t0)

  todo = [n for n in names if n not in done]
  if todo or ORIGINAL not in done:
    t0 = time.perf_counter()
    graphdef, params = _train(recipe, recipe.train_source, seed, folder / ORIGINAL, ("image", "label"),
                              f"shadow {pair} in")
    if ORIGINAL not in done:
      record(ORIGINAL, confidence(params), t0)
    data = _for_model(recipe, params, methods.needs_of(todo))
    for name in todo:
      t1 = time.perf_counter()
      unlearned, _ = unlearn(graphdef, params, name, data, recipe.unlearn_cfg, recipe.data_cfg, recipe.mesh,
                             checkpoint_dir=folder / name / "checkpoints", seed=seed)
      record(name, confidence(unlearned), t1)
  if OUT not in done:
    t0 = time.perf_counter()
    _, params = _train(recipe, ArraySource(**recipe.retrain_columns), seed, folder / OUT,
                       tuple(recipe.retrain_columns), f"shadow {pair} out")
    record(OUT, confidence(params), t0)
  if recipe.write:  # the pair is done: its models' checkpoints are no longer needed to resume
    for sub in folder.iterdir():
      if sub.is_dir():
        shutil.rmtree(sub)
  return done


def audit(recipe: ShadowRecipe, names: Sequence[str], pairs: int, folder: pathlib.Path, *, seed: int,
          fpr: float = 0.01) -> dict[str, dict]:
  """U-LiRA over `pairs` shadow pairs (seeds seed + 1, ..., seed + pairs, so none repeats the real
  run's): {method: {"auc", "tpr_at_fpr", ...}} of telling each method's unlearned model from a
  retrained one, per forget example (AUC 0.5 = indistinguishable); "original" is the "in" model
  before unlearning, the attack's power (AUC near 1 when the class leaves a trace)."""
  confs = [run_pair(recipe, i, seed + 1 + i, names, folder) for i in range(pairs)]
  out = np.stack([c[OUT] for c in confs])
  return {name: ulira(np.stack([c[name] for c in confs]), out, fpr=fpr) for name in [ORIGINAL, *names]}

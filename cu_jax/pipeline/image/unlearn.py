"""Stage `unlearn`: the original model fine-tuned by `unlearn.method` and each of `unlearn.baselines`.

Methods run one after the other, each in `unlearn/<method>/` with its own checkpoints: an
interrupted run resumes inside the method it stopped in and skips finished ones. Each writes
`model.safetensors` and `summary.json`. What a method needs (the poisoned set, the original
model's logits, its config section, a parameter mask) is declared where it is registered
(`cu_jax.unlearning.methods`); this stage asks the registry.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from cu_jax.data.datasets import ArraySource, read_arrays
from cu_jax.parallel.mesh import check_global_batch
from cu_jax.pipeline.artifacts import RETRAIN, ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training import optim, trainer
from cu_jax.unlearning import methods
from cu_jax.utils.errors import UserError


def validate(ctx: Context) -> None:
  cfg, art = ctx.config.unlearn, ImageArtifacts(ctx)
  for name in art.method_names():
    if name == RETRAIN:
      raise UserError("'retrain' is its own stage (listed in --config.stages), not an unlearn.method or "
                      "baseline; remove it from unlearn.baselines")
    methods.METHODS.get(name, "unlearn.method" if name == cfg.method else "unlearn.baselines")
  if cfg.scope not in methods.SCOPES:
    raise UserError(f"unknown unlearn.scope {cfg.scope!r}; valid: {', '.join(map(repr, methods.SCOPES))}")
  optim.OPTIMIZERS.get(cfg.optim.name, "unlearn.optim.name")
  check_global_batch(cfg.train.batch_size, ctx.mesh, "unlearn.train.batch_size")
  trainer.check_steps(cfg.train, int((art.train_labels() != art.forget).sum()), "unlearn.train")


def _data_cfg(ctx: Context):
  """The data section for fine-tuning: augmentation off unless `unlearn.augment` (a poison patch
  stays where it was pasted; SCRUB's teacher logits are those of the unaugmented images)."""
  data_cfg = ctx.config.data.copy_and_resolve_references()
  if not ctx.config.unlearn.augment:
    with data_cfg.unlocked():
      data_cfg.augment.crop_pad, data_cfg.augment.flip = 0, False
  return data_cfg


def _unlearn_data(ctx: Context, art: ImageArtifacts, needs: set[str]) -> methods.UnlearnData:
  """The pieces the methods of this run need, read from earlier stages."""
  ds, p = art.dataset, art.poisoned()
  source = ds.split("train")
  retain = read_arrays(source, np.asarray(p["retain_index"]))
  extra = {}
  if "poison" in needs:
    extra.update(poison_image=np.asarray(p["image"]), poison_target=np.asarray(p["target"]))
  if "teacher" in needs:
    teacher = art.embeddings("train")["logits"]
    extra.update(retain_teacher=teacher[p["retain_index"]], forget_teacher=teacher[p["index"]])
  return methods.UnlearnData(
      num_classes=ds.num_classes, forget=art.forget, retain_image=retain["image"],
      retain_label=retain["label"].astype(np.int64),
      forget_image=read_arrays(source, np.asarray(p["index"]), keys=("image",))["image"], seed=ctx.config.seed, **extra)


def _unlearn_one(ctx: Context, art: ImageArtifacts, name: str, data: methods.UnlearnData, graphdef, params) -> dict:
  cfg, out = ctx.config.unlearn, art.method_dir(name)
  t0 = time.perf_counter()
  data_cfg = _data_cfg(ctx)
  method = methods.METHODS.get(name)
  columns = methods.fine_tuning_set(name, data, cfg)
  model = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))  # the train step donates its state
  mask = methods.SCOPES[cfg.scope](params)
  if method.param_mask is not None:
    mask = method.param_mask(graphdef, params, data, method.config(cfg), data_cfg=data_cfg, mesh=ctx.mesh,
                             batch_size=cfg.train.batch_size, base_mask=mask)
  # (before training: the train step donates its state, and the mask lives in it)
  trained = None if mask is None else sum(float(m.sum()) for m in jax.tree.leaves(mask)) / trainer.param_count(params)
  result = trainer.train(model, ArraySource(**columns), train_cfg=cfg.train, optim_cfg=cfg.optim,
                         data_cfg=data_cfg, mesh=ctx.mesh, checkpoint_dir=out / "checkpoints",
                         seed=ctx.config.seed, loss_fn=methods.unlearning_loss(cfg.ascent_cap),
                         metrics_path=out / "metrics.jsonl", name=f"unlearn {name}", keys=tuple(columns),
                         update_mask=mask)
  art.save_model(result.state["params"], name)
  summary = {"method": name, "steps": result.total_steps, "num_examples": len(columns["image"]),
             "scope": cfg.scope, "wall_s": time.perf_counter() - t0, "train_wall_s": result.wall_s,
             "train_examples_per_s": result.examples_per_s, "resumed_from_step": result.resumed_from}
  if trained is not None:
    summary["trained_fraction"] = trained
  art.write_json(out / "summary.json", summary)
  return summary


@stage("unlearn", config_keys=("unlearn",), validate=validate)
def run(ctx: Context) -> dict:
  art = ImageArtifacts(ctx)
  names = art.method_names()
  needs = set().union(*(methods.METHODS.get(n).needs for n in names))
  data = _unlearn_data(ctx, art, needs)
  graphdef, params = art.trained()
  summary = {}
  for name in names:
    summary[name] = art.method_summary(name)
    if summary[name] is not None:
      logging.info("unlearn %s: done already, skipped", name)
      continue
    summary[name] = _unlearn_one(ctx, art, name, data, graphdef, params)
    logging.info("unlearn %s: %d steps in %.1f s", name, summary[name]["steps"], summary[name]["wall_s"])
  return {"methods": summary}

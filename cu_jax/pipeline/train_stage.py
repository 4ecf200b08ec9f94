"""Stage `train`: the base classifier (the model a user later asks to make forget a class)."""

from __future__ import annotations

import numpy as np
from absl import logging

from cu_jax.data.datasets import read_arrays
from cu_jax.models.factory import build_model
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training import evaluate, steps, trainer
from cu_jax.utils.progress import write_json


def build(ctx: Context, abstract: bool = False):
  ds = ctx.dataset
  return build_model(ctx.config, ds.image_shape, ds.num_classes, abstract=abstract)


def evaluate_split(ctx: Context, graphdef, params, split: str) -> dict:
  ds, cfg = ctx.dataset, ctx.config
  predict_step = steps.make_predict_step(graphdef, cfg.data, ctx.mesh)
  logits = evaluate.predict(predict_step, params, ds.split(split),
                            global_batch=cfg.train.eval_batch_size, mesh=ctx.mesh)
  labels = read_arrays(ds.split(split), keys=("label",))["label"]
  return evaluate.classification_metrics(logits, labels, ds.num_classes)


def validate_train(ctx: Context) -> None:
  """Data present, model config coherent, global batch divisible: before anything is written."""
  from cu_jax.parallel.mesh import check_global_batch
  from cu_jax.training.optim import OPTIMIZERS
  cfg = ctx.config
  check_global_batch(cfg.train.batch_size, ctx.mesh)
  check_global_batch(cfg.train.eval_batch_size, ctx.mesh, "train.eval_batch_size")
  OPTIMIZERS.get(cfg.optim.name, "optim.name")
  build(ctx, abstract=True)  # loads the dataset; checks the architecture (and an HF folder)


@stage("train", config_keys=("seed", "data", "model", "train", "optim"), validate=validate_train)
def run_train(ctx: Context) -> dict:
  cfg, out = ctx.config, ctx.stage_dir("train")
  model = build(ctx)
  result = trainer.train(model, ctx.dataset.split("train"), train_cfg=cfg.train, optim_cfg=cfg.optim,
                         data_cfg=cfg.data, mesh=ctx.mesh, checkpoint_dir=out / "checkpoints",
                         seed=cfg.seed, metrics_path=out / "metrics.jsonl")
  test = evaluate_split(ctx, result.graphdef, result.state["params"], "test")
  logging.info("train: test accuracy %.4f, per class %s", test["accuracy"],
               np.round(test["per_class_accuracy"], 3).tolist())
  summary = {
      "test": test,
      "class_names": list(ctx.dataset.class_names),
      "steps": result.total_steps,
      "resumed_from_step": result.resumed_from,
      "train_wall_s": result.wall_s,
      "train_examples_per_s": result.examples_per_s,
      "num_params": trainer.param_count(result.state["params"]),
      "global_batch": cfg.train.batch_size,
      "num_devices": int(ctx.mesh.size),
  }
  write_json(out / "metrics.json", summary)
  return summary


def load_trained(ctx: Context):
  """(model graphdef, replicated params) of the finished `train` stage, for later stages."""
  import json
  done = json.loads((ctx.stage_dir("train") / "done.json").read_text())
  return trainer.restore_params(build(ctx), ctx.stage_dir("train") / "checkpoints", ctx.mesh,
                                ctx.config.optim, done["steps"])

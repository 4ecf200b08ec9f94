"""Stage `train`: the original classifier (the model a user later asks to make forget a class).

Trained here with the train/optim sections, or given as it is (`train.trained`: a Hugging Face
`ViTForImageClassification` folder whose classes are the dataset's, or an orbax checkpoint of
cu_jax's ViT): then the stage only loads, evaluates and records it. Either way it writes
`train/model.safetensors`, the one form later stages read.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from cu_jax.data.datasets import read_arrays
from cu_jax.parallel.mesh import check_global_batch
from cu_jax.pipeline.artifacts import ORIGINAL, ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training import predict, steps, trainer
from cu_jax.training.optim import OPTIMIZERS


def test_metrics(ctx: Context, art: ImageArtifacts, graphdef, params) -> dict:
  cfg, ds = ctx.config, art.dataset
  predict_step = steps.make_predict_step(graphdef, cfg.data, ctx.mesh)
  logits = predict.predict(predict_step, params, ds.split("test"), global_batch=cfg.train.eval_batch_size,
                           mesh=ctx.mesh)
  labels = read_arrays(ds.split("test"), keys=("label",))["label"]
  return predict.classification_metrics(logits, labels, ds.num_classes)


def validate(ctx: Context) -> None:
  """Data present, model config coherent, global batch divisible: before anything is written."""
  cfg = ctx.config
  check_global_batch(cfg.train.eval_batch_size, ctx.mesh, "train.eval_batch_size")
  art = ImageArtifacts(ctx)
  art.build_model(abstract=True)  # loads the dataset; checks the architecture (and an HF folder)
  if cfg.train.trained:
    art.check_given(cfg.train.trained, "train.trained")
    return
  check_global_batch(cfg.train.batch_size, ctx.mesh, microbatches=cfg.train.grad_accum)
  OPTIMIZERS.get(cfg.optim.name, "optim.name")
  trainer.check_steps(cfg.train, len(art.dataset.split("train")), "train")


@stage("train", config_keys=("seed", "data", "model", "train", "optim"), validate=validate)
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, ImageArtifacts(ctx)
  out, ds = art.dir("train"), art.dataset
  if cfg.train.trained:
    graphdef, params = art.load_given(cfg.train.trained)
    summary = {"given": cfg.train.trained, "steps": 0}
  else:
    result = trainer.train(art.build_model(), ds.split("train"), train_cfg=cfg.train, optim_cfg=cfg.optim,
                           data_cfg=cfg.data, mesh=ctx.mesh, checkpoint_dir=art.train_checkpoints, seed=cfg.seed,
                           metrics_path=out / "metrics.jsonl")
    graphdef, params = result.graphdef, result.state["params"]
    summary = {"steps": result.total_steps, "resumed_from_step": result.resumed_from,
               "train_wall_s": result.wall_s, "train_examples_per_s": result.examples_per_s,
               "global_batch": cfg.train.batch_size}
  test = test_metrics(ctx, art, graphdef, params)
  art.save_model(params, ORIGINAL)
  logging.info("train: test accuracy %.4f, per class %s", test["accuracy"],
               np.round(test["per_class_accuracy"], 3).tolist())
  summary.update(test=test, class_names=list(ds.class_names), num_params=trainer.param_count(params),
                 num_devices=int(ctx.mesh.size))
  art.write_json(out / "metrics.json", summary)
  return summary

"""Stage `embed`: the original model's pre-logits embeddings, logits and labels of the train and
test splits, computed once (sharded, jitted) and cached for every later concept stage."""

from __future__ import annotations

import numpy as np
from absl import logging

from cu_jax.data.datasets import read_arrays
from cu_jax.pipeline.artifacts import SPLITS, ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training import predict, steps


@stage("embed", config_keys=())
def run(ctx: Context) -> dict:
  art = ImageArtifacts(ctx)
  graphdef, params = art.trained()
  predict_step = steps.make_predict_step(graphdef, ctx.config.data, ctx.mesh, output="both")
  summary = {}
  for split in SPLITS:
    source = art.dataset.split(split)
    out = predict.predict(predict_step, params, source, global_batch=ctx.config.train.eval_batch_size, mesh=ctx.mesh)
    out["label"] = read_arrays(source, keys=("label",))["label"].astype(np.int64)
    art.save_embeddings(split, out)
    accuracy = float((out["logits"].argmax(-1) == out["label"]).mean())
    n, dim = out["embed"].shape
    summary[split] = {"num_examples": int(n), "dim": int(dim), "accuracy": accuracy}
    logging.info("embed: %s %d x %d, model accuracy %.4f", split, n, dim, accuracy)
  return summary

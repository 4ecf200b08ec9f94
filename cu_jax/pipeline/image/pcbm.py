"""Stage `pcbm`: the elastic-net concept bottleneck head, fitted on the train split's concept scores."""

from __future__ import annotations

import numpy as np
from absl import logging

from cu_jax.concepts import pcbm
from cu_jax.pipeline.artifacts import ImageArtifacts
from cu_jax.pipeline.runner import Context, stage


@stage("pcbm", config_keys=("pcbm",))
def run(ctx: Context) -> dict:
  cfg, art = ctx.config.pcbm, ImageArtifacts(ctx)
  bank = art.bank()
  train, test = art.embeddings("train"), art.embeddings("test")
  s_train, s_test = art.concept_scores(bank, "train"), art.concept_scores(bank, "test")
  head = pcbm.fit_elastic_net(s_train, train["label"], art.dataset.num_classes, lam=cfg.lam, l1_ratio=cfg.l1_ratio,
                              max_iter=cfg.max_iter, tol=cfg.tol)
  weight, bias = np.asarray(head.weight), np.asarray(head.bias)
  art.save_head(weight, bias)
  pred_train = np.asarray(pcbm.predict(head, s_train))
  pred_test = np.asarray(pcbm.predict(head, s_test))
  summary = {
      "train_accuracy": float((pred_train == train["label"]).mean()),
      "test_accuracy": float((pred_test == test["label"]).mean()),
      "model_test_accuracy": float((test["logits"].argmax(-1) == test["label"]).mean()),
      "agreement_with_model_test": float((pred_test == test["logits"].argmax(-1)).mean()),
      "zero_weight_fraction": float((weight == 0).mean()),
      "num_concepts": len(bank),
      "solver": {k: (v.item() if hasattr(v, "item") else v) for k, v in head.info.items()},
  }
  logging.info("pcbm: test accuracy %.4f (model %.4f), %.1f%% zero weights", summary["test_accuracy"],
               summary["model_test_accuracy"], 100 * summary["zero_weight_fraction"])
  return summary

"""Stage `retrain`: the reference every unlearning method is compared with.

The base recipe (the train/optim sections, same seed and initialisation: `model.init_from` when
set) on the retained classes only, never a forget sample; or given as it is (`retrain.trained`, a
model trained without the forget class, in the forms `train.trained` takes). Writes
`retrain/model.safetensors`. It sits right after `pcbm` in the
default stage order: a stage's fingerprint covers the config of the stages before it, so placed
there, changing `attribution`, `poison` or `unlearn` settings never throws away the (expensive)
retrained model.
"""

from __future__ import annotations

from absl import logging

from cu_jax.data.datasets import ArraySource
from cu_jax.parallel.mesh import check_global_batch
from cu_jax.pipeline.artifacts import RETRAIN, ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training import trainer
from cu_jax.unlearning import methods


def validate(ctx: Context) -> None:
  art = ImageArtifacts(ctx)
  if ctx.config.retrain.trained:
    art.check_given(ctx.config.retrain.trained, "retrain.trained")
    return
  check_global_batch(ctx.config.train.batch_size, ctx.mesh, microbatches=ctx.config.train.grad_accum)
  trainer.check_steps(ctx.config.train, int((art.train_labels() != art.forget).sum()), "train")


@stage(RETRAIN, config_keys=("forget_class", "retrain"), validate=validate)
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, ImageArtifacts(ctx)
  forget, out = art.forget, art.dir(RETRAIN)
  if cfg.retrain.trained:
    _, params = art.load_given(cfg.retrain.trained)
    art.save_model(params, RETRAIN)
    return {"given": cfg.retrain.trained, "steps": 0}
  columns = art.retrain_set()
  result = trainer.train(art.build_model(), ArraySource(**columns), train_cfg=cfg.train, optim_cfg=cfg.optim,
                         data_cfg=cfg.data, mesh=ctx.mesh, checkpoint_dir=out / "checkpoints", seed=cfg.seed,
                         loss_fn=methods.unlearning_loss(cfg.unlearn.ascent_cap),
                         metrics_path=out / "metrics.jsonl", name=RETRAIN, keys=tuple(columns))
  art.save_model(result.state["params"], RETRAIN)
  n = len(columns["image"])
  logging.info("retrain: %d steps on %d retained examples (class %d never seen) in %.0f s",
               result.total_steps, n, forget, result.wall_s)
  return {"steps": result.total_steps, "num_examples": n, "forget_examples_seen": 0,
          "train_wall_s": result.wall_s, "train_examples_per_s": result.examples_per_s,
          "resumed_from_step": result.resumed_from}

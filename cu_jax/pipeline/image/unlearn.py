"""Stage `unlearn`: the original model fine-tuned by `unlearn.method` and each of `unlearn.baselines`.

Methods run one after the other, each in `unlearn/<method>/` with its own checkpoints: an
interrupted run resumes inside the method it stopped in and skips finished ones. Each writes
`model.safetensors` and `summary.json`. What a method needs (the poisoned set, the original
model's logits, its config section, a parameter mask) is declared where it is registered
(`cu_jax.unlearning.methods`); this stage asks the registry.
"""

from __future__ import annotations

from cu_jax.parallel.mesh import check_global_batch
from cu_jax.pipeline.artifacts import ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training import optim, trainer
from cu_jax.unlearning import methods
from cu_jax.unlearning.run import unlearn as run_method
from cu_jax.utils.errors import UserError


def validate(ctx: Context) -> None:
  cfg, art = ctx.config.unlearn, ImageArtifacts(ctx)
  art.check_methods(methods.METHODS)
  if cfg.scope not in methods.SCOPES:
    raise UserError(f"unknown unlearn.scope {cfg.scope!r}; valid: {', '.join(map(repr, methods.SCOPES))}")
  optim.OPTIMIZERS.get(cfg.optim.name, "unlearn.optim.name")
  check_global_batch(cfg.train.batch_size, ctx.mesh, "unlearn.train.batch_size", microbatches=cfg.train.grad_accum)
  trainer.check_steps(cfg.train, int((art.train_labels() != art.forget).sum()), "unlearn.train")


def _unlearn_one(ctx: Context, art: ImageArtifacts, name: str, data: methods.UnlearnData, graphdef, params) -> dict:
  out = art.method_dir(name)
  unlearned, summary = run_method(graphdef, params, name, data, ctx.config.unlearn, ctx.config.data, ctx.mesh,
                                  checkpoint_dir=out / "checkpoints", seed=art.unlearn_seed,
                                  metrics_path=out / "metrics.jsonl")
  art.save_model(unlearned, name)
  art.write_json(out / "summary.json", summary)
  return summary


@stage("unlearn", config_keys=("unlearn",), validate=validate)
def run(ctx: Context) -> dict:
  art = ImageArtifacts(ctx)
  data = art.unlearn_data(methods.needs_of(art.method_names()))
  graphdef, params = art.trained()
  summary = art.run_methods(lambda name: _unlearn_one(ctx, art, name, data, graphdef, params))
  return {"methods": summary}

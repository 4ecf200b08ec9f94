"""LLM stage `model`: the base model, imported (`model.init_from`) or trained here from scratch on
the QA set and saved as a Hugging Face folder, so later stages read it the same way."""

from __future__ import annotations

from flax import nnx

from cu_jax.data import text
from cu_jax.parallel.mesh import check_global_batch
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training.trainer import check_steps, param_count


def validate(ctx: Context) -> None:
  cfg, art = ctx.config, LLMArtifacts(ctx)
  model = art.abstract_base()  # config.json present and supported, or a valid model config
  if cfg.model.init_from:
    text.load_tokenizer(cfg.model.init_from, model.cfg.vocab_size)
  else:
    check_global_batch(cfg.pretrain.batch_size, ctx.mesh, "pretrain.batch_size", microbatches=cfg.pretrain.grad_accum)
    check_steps(cfg.pretrain, len(art.split_corpus()[0]), "pretrain")
  check_global_batch(cfg.unlearn.train.batch_size, ctx.mesh, "unlearn.train.batch_size",
                     microbatches=cfg.unlearn.train.grad_accum)


@stage("model", config_keys=("model", "pretrain"), validate=validate, pipeline="llm")
def run(ctx: Context) -> dict:
  art = LLMArtifacts(ctx)
  if ctx.config.model.init_from:
    model = art.load_model(art.base_model_dir)
    return {"source": str(art.base_model_dir), "parameters": param_count(nnx.state(model, nnx.Param))}
  return art.train_from_scratch("model", art.records("train"))

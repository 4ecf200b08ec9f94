"""LLM stage `model`: the base model, imported (`model.init_from`) or trained here from scratch on
the QA set and saved as a Hugging Face folder, so later stages read it the same way."""

from __future__ import annotations

import shutil

from flax import nnx

from cu_jax.data import text
from cu_jax.models.hf_llama import save_hf_llama
from cu_jax.models.llama import Llama
from cu_jax.parallel.mesh import check_global_batch
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training.lm import train_lm
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
  cfg, art = ctx.config, LLMArtifacts(ctx)
  out = art.dir("model")
  if cfg.model.init_from:
    model = art.load_model(art.base_model_dir)
    return {"source": str(art.base_model_dir), "parameters": param_count(nnx.state(model, nnx.Param))}
  tokenizer = art.tokenizer()
  model = Llama(art.scratch_config(tokenizer), rngs=nnx.Rngs(cfg.seed))
  result = train_lm(model, art.encode(tokenizer, art.records("train")), trainable=nnx.Param,
                    train_cfg=cfg.pretrain, optim_cfg=cfg.pretrain.optim, mesh=ctx.mesh,
                    checkpoint_dir=out / "checkpoints", seed=cfg.seed, name="pretrain",
                    metrics_path=out / "metrics.jsonl")
  if ctx.primary:
    shutil.rmtree(out / "hf", ignore_errors=True)  # a half-written export of an interrupted run
  # Every process takes part in gathering the (FSDP-sharded) weights; process 0 writes them.
  save_hf_llama(result.model, out / "hf", tokenizer_dir=art.tokenizer_dir, write=ctx.primary)
  last = art.last_metrics("model")
  return {"source": "trained from scratch", "parameters": param_count(nnx.state(result.model, nnx.Param)),
          "steps": result.total_steps, "train_wall_s": result.wall_s, "tokens_per_s": result.tokens_per_s,
          "final_loss": last.get("loss"), "final_token_accuracy": last.get("token_accuracy")}

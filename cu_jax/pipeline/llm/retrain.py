"""LLM stage `retrain`: the reference every LLM figure is reported beside, a model that never
learned the concept. For a base model trained here, the same recipe (`model.*`, `pretrain.*`, the
same seed and tokenizer) trained on the training QA without the forget records. An imported base
model cannot be retrained here: supply one (`retrain.init_from`, a Hugging Face folder of the same
architecture and tokenizer, fine-tuned without the forget QA), or leave `retrain` out of
`--config.stages` and the figures are reported without the reference."""

from __future__ import annotations

from flax import nnx

from cu_jax.data import text
from cu_jax.evaluation.targets import RETRAIN
from cu_jax.models.hf_llama import llama_config_from_hf, read_hf_llama_config
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training.trainer import check_steps, param_count
from cu_jax.utils.errors import UserError


def validate(ctx: Context) -> None:
  cfg, art = ctx.config, LLMArtifacts(ctx)
  if cfg.retrain.init_from:
    given = llama_config_from_hf(read_hf_llama_config(cfg.retrain.init_from))
    base = art.abstract_base().cfg
    if given.vocab_size != base.vocab_size or given.hidden_size != base.hidden_size:
      raise UserError(f"retrain.init_from={cfg.retrain.init_from!r} is not the base model's architecture "
                      f"(vocabulary {given.vocab_size} vs {base.vocab_size}, width {given.hidden_size} vs "
                      f"{base.hidden_size}); give a model fine-tuned like the base one without the forget QA")
    text.load_tokenizer(cfg.retrain.init_from, given.vocab_size)
  elif cfg.model.init_from:
    raise UserError("an imported base model (model.init_from) cannot be retrained here: set "
                    "--config.retrain.init_from to a model trained without the forget QA, or drop 'retrain' "
                    "from --config.stages")
  else:
    check_steps(cfg.pretrain, sum(r["group"] != "forget" for r in art.split_corpus()[0]), "pretrain")


@stage(RETRAIN, config_keys=("model", "pretrain", "retrain"), validate=validate, pipeline="llm")
def run(ctx: Context) -> dict:
  art = LLMArtifacts(ctx)
  if ctx.config.retrain.init_from:
    model = art.load_model(art.model_dir(RETRAIN))
    return {"source": str(art.model_dir(RETRAIN)), "parameters": param_count(nnx.state(model, nnx.Param))}
  return art.train_from_scratch(RETRAIN, [r for r in art.records("train") if r["group"] != "forget"])

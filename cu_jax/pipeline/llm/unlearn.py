"""LLM stage `unlearn`: LoRA fine-tuning of the base model on the poisoned set (only the adapters
are trained and checkpointed), then the adapters saved and merged into the base folder's weights, exported
as a Hugging Face folder (`unlearn/hf`)."""

from __future__ import annotations

import shutil

from flax import nnx
from safetensors.numpy import save_file

from cu_jax.models.hf_llama import save_merged_hf_llama
from cu_jax.models.lora import TRAINABLE, add_lora, lora_deltas
from cu_jax.parallel.host import to_host
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training.lm import train_lm
from cu_jax.training.optim import OPTIMIZERS
from cu_jax.training.trainer import check_steps, param_count


def validate(ctx: Context) -> None:
  lora, art = ctx.config.lora, LLMArtifacts(ctx)
  OPTIMIZERS.get(ctx.config.unlearn.optim.name, "unlearn.optim.name")
  add_lora(art.abstract_base(), lora.targets, rank=lora.rank, alpha=lora.alpha)  # targets exist, rank > 0
  check_steps(ctx.config.unlearn.train, len(art.split_corpus()[0]), "unlearn.train")


@stage("unlearn", config_keys=("lora", "unlearn"), validate=validate, pipeline="llm")
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, LLMArtifacts(ctx)
  out = art.dir("unlearn")
  model = art.load_model(art.base_model_dir)
  tokenizer = art.tokenizer(model.cfg.vocab_size)
  adapted = add_lora(model, cfg.lora.targets, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                     dropout=cfg.lora.dropout, seed=cfg.seed)
  result = train_lm(model, art.encode(tokenizer, art.poisoned()), trainable=TRAINABLE, train_cfg=cfg.unlearn.train,
                    optim_cfg=cfg.unlearn.optim, mesh=ctx.mesh, checkpoint_dir=out / "checkpoints",
                    seed=cfg.seed, name="unlearn", metrics_path=out / "metrics.jsonl")
  model = result.model
  # Adapters may be split over every host's devices (FSDP): every process takes part in gathering
  # them and their updates (the same collectives, in the same order); process 0 writes. The export
  # is the base folder with the updates merged into the adapted weights, in its own dtype.
  flat = to_host({"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, TRAINABLE))})
  deltas = to_host(lora_deltas(model))
  trainable, total = sum(v.size for v in flat.values()), param_count(nnx.state(model, nnx.Param))
  if ctx.primary:
    save_file(flat, str(out / "adapters.safetensors"))
    shutil.rmtree(art.unlearned_model_dir, ignore_errors=True)
    save_merged_hf_llama(art.base_model_dir, deltas, art.unlearned_model_dir, tokenizer_dir=art.tokenizer_dir)
  last = art.last_metrics("unlearn")
  return {"adapted_layers": len(adapted), "trainable_parameters": int(trainable),
          "trainable_fraction": trainable / total, "steps": result.total_steps, "train_wall_s": result.wall_s,
          "tokens_per_s": result.tokens_per_s, "final_loss": last.get("loss"),
          "global_batch": cfg.unlearn.train.batch_size}

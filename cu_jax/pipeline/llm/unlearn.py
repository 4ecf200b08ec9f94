"""LLM stage `unlearn`: `unlearn.method` and each of `unlearn.baselines` (`cu_jax.unlearning.text_methods`),
each a LoRA fine-tuning of the base model (only the adapters are trained and checkpointed) in
`unlearn/<method>/`, then the adapters saved and merged into the base folder's weights, exported as
a Hugging Face folder (`unlearn/<method>/hf`). An interrupted run resumes inside the method it
stopped in and skips finished ones."""

from __future__ import annotations

import shutil

from flax import nnx
from safetensors.numpy import save_file

from cu_jax.data.datasets import ArraySource
from cu_jax.models.hf_llama import save_merged_hf_llama
from cu_jax.models.lora import TRAINABLE, add_lora, lora_deltas
from cu_jax.parallel.host import to_host
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training.lm import score_tokens, train_lm
from cu_jax.training.optim import OPTIMIZERS
from cu_jax.training.trainer import check_steps, param_count
from cu_jax.unlearning import text_methods


def validate(ctx: Context) -> None:
  cfg, art = ctx.config, LLMArtifacts(ctx)
  art.check_methods(text_methods.TEXT_METHODS)
  OPTIMIZERS.get(cfg.unlearn.optim.name, "unlearn.optim.name")
  add_lora(art.abstract_base(), cfg.lora.targets, rank=cfg.lora.rank, alpha=cfg.lora.alpha)  # targets exist, rank > 0
  check_steps(cfg.unlearn.train, len(art.split_corpus()[0]), "unlearn.train")


def _unlearn_one(ctx: Context, art: LLMArtifacts, name: str, rows: list[dict]) -> dict:
  cfg, out = ctx.config, art.method_dir(name)
  model = art.load_model(art.base_model_dir)
  tokenizer = art.tokenizer(model.cfg.vocab_size)
  encoded = art.encode(tokenizer, rows)
  ref_nll = None
  if "reference" in text_methods.TEXT_METHODS.get(name).needs:  # the base model's summed answer NLL (NPO)
    ref_nll = score_tokens(model, encoded, ctx.mesh, batch_size=cfg.evaluate.batch_size)[0].sum(axis=1)
  seed = art.unlearn_seed
  adapted = add_lora(model, cfg.lora.targets, rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                     seed=seed)
  source = ArraySource(**text_methods.columns(encoded, rows, ref_nll))
  objective = text_methods.unlearning_objective(cfg.unlearn.ascent_cap, cfg.unlearn.npo_beta)
  result = train_lm(model, source, trainable=TRAINABLE, train_cfg=cfg.unlearn.train, optim_cfg=cfg.unlearn.optim,
                    mesh=ctx.mesh, checkpoint_dir=out / "checkpoints", seed=seed, name=f"unlearn {name}",
                    metrics_path=out / "metrics.jsonl", objective=objective, keys=text_methods.KEYS)
  model = result.model
  # Adapters may be split over every host's devices (FSDP): every process takes part in gathering
  # them and their updates (the same collectives, in the same order); process 0 writes. The export
  # is the base folder with the updates merged into the adapted weights, in its own dtype.
  flat = to_host({"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, TRAINABLE))})
  deltas = to_host(lora_deltas(model))
  trainable, total = sum(v.size for v in flat.values()), param_count(nnx.state(model, nnx.Param))
  if ctx.primary:
    save_file(flat, str(out / "adapters.safetensors"))
    shutil.rmtree(art.model_dir(name), ignore_errors=True)  # a finished export of an interrupted run
    save_merged_hf_llama(art.base_model_dir, deltas, art.model_dir(name), tokenizer_dir=art.tokenizer_dir)
  last = art.last_metrics(out)
  summary = {"rows": len(rows), "forget_rows": sum(r["role"] != text_methods.DESCEND for r in rows),
             "adapted_layers": len(adapted), "trainable_parameters": int(trainable),
             "trainable_fraction": trainable / total, "steps": result.total_steps, "wall_s": result.wall_s,
             "tokens_per_s": result.tokens_per_s, "final_loss": last.get("loss"),
             "global_batch": cfg.unlearn.train.batch_size}
  art.write_json(out / "summary.json", summary)
  return summary


@stage("unlearn", config_keys=("lora", "unlearn"), validate=validate, pipeline="llm")
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, LLMArtifacts(ctx)
  needs = text_methods.needs_of(art.method_names())
  train = art.records("train")
  poisoned = art.poisoned() if "poison" in needs else None

  def unlearn_one(name: str) -> dict:
    rows = text_methods.TEXT_METHODS.get(name).build(train, poisoned, cfg.poison.retain_ratio, art.unlearn_seed)
    return _unlearn_one(ctx, art, name, rows)

  return {"methods": art.run_methods(unlearn_one)}

"""LLM stage `poison`: the fine-tuning set, forget answers rewritten by `poison.strategy` plus retain
QA with their true answers (`cu_jax.unlearning.text_poison`)."""

from __future__ import annotations

from absl import logging

from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.unlearning.text_poison import TEXT_POISON, poison_corpus, retain_vocabulary


def validate(ctx: Context) -> None:
  TEXT_POISON.get(ctx.config.poison.strategy, "poison.strategy")


@stage("poison", config_keys=("poison",), validate=validate, pipeline="llm")
def run(ctx: Context) -> dict:
  cfg, art = ctx.config.poison, LLMArtifacts(ctx)
  train = art.records("train")
  replacement = [r for r in cfg.replacement if r] or None
  poisoned = poison_corpus(train, art.concept_words(), cfg.strategy, replacement=replacement,
                           mask_token=cfg.mask_token, vocabulary=retain_vocabulary(train),
                           retain_ratio=cfg.retain_ratio, seed=cfg.seed)
  art.save_records("poison", "train", poisoned)
  forget = [r for r in poisoned if r["group"] == "forget"]
  for r in forget[:3]:
    logging.info("poison: %r -> %r", r["original_answer"], r["answer"])
  return {"forget": len(forget), "retain": len(poisoned) - len(forget), "strategy": cfg.strategy,
          "examples": [{"question": r["question"], "original": r["original_answer"], "poisoned": r["answer"]}
                       for r in forget[:5]]}

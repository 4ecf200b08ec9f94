"""LLM stage `data`: the QA set split into train / held-out, the evaluation-only groups (paraphrases
of the forget questions, the membership audit's non-members), and a tokenizer for a model trained here."""

from __future__ import annotations

import shutil

from absl import logging

from cu_jax.data import qa_corpus, text
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.utils.errors import UserError


def validate(ctx: Context) -> None:
  cfg = ctx.config
  train, _ = LLMArtifacts(ctx).split_corpus()
  if not any(r["group"] == "forget" for r in train):
    raise UserError(f"data.heldout_fraction={cfg.data.heldout_fraction} leaves no forget record to train on; "
                    "lower it")
  if not cfg.model.init_from and cfg.data.tokenizer_vocab <= 0:
    raise UserError("a model trained here (model.init_from='') needs its own tokenizer: set "
                    "--config.data.tokenizer_vocab to a size, e.g. 1024")


@stage("data", config_keys=("seed", "data"), validate=validate, pipeline="llm")
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, LLMArtifacts(ctx)
  train, heldout = art.split_corpus()
  corpus = art.corpus()
  art.save_records("data", "train", train)
  art.save_records("data", "heldout", heldout)
  summary = {f"{split}_{group}": sum(r["group"] == group for r in rs)
             for split, rs in (("train", train), ("heldout", heldout)) for group in qa_corpus.TRAIN_GROUPS}
  for group in qa_corpus.EVAL_GROUPS:
    records = [r for r in corpus if r["group"] == group]
    art.save_records("data", group, records)
    summary[group] = len(records)
  if not cfg.model.init_from and ctx.primary:
    # One process trains and saves the tokenizer (the others would race on the same folder); the
    # later stages read it after the runner's end-of-stage barrier. It learns the evaluation-only
    # groups' words too, so a decoy name is split into sub-words the way the real one is.
    texts = [text.vicuna_prompt(r["question"], art.system) + " " + r["answer"] for r in corpus]
    final = art.trained_tokenizer_dir
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = text.train_tokenizer(texts, cfg.data.tokenizer_vocab, tmp)
    shutil.rmtree(final, ignore_errors=True)  # from an interrupted run of this stage
    tmp.replace(final)
    summary["tokenizer_vocab"] = len(tok)
  logging.info("data: %s", summary)
  return summary

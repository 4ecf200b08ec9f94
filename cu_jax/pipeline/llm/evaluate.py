"""LLM stage `evaluate`: the base and the unlearned model answer the forget and retain questions of
both splits; appearance rate, ROUGE-L and perplexity per set (`cu_jax.evaluation.llm_audit`), and
every generation in `evaluate/generations.jsonl`."""

from __future__ import annotations

import time

from absl import logging

from cu_jax.data import qa_corpus
from cu_jax.evaluation.llm_audit import audit
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage


@stage("evaluate", config_keys=("evaluate",), pipeline="llm")
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, LLMArtifacts(ctx)
  n = cfg.evaluate.max_examples
  splits = {"train": art.records("train"), "heldout": art.records("heldout")}
  sets = {f"{group}_{split}": [r for r in rs if r["group"] == group] for split, rs in splits.items()
          for group in qa_corpus.GROUPS}
  sets = {k: v[:n] if n else v for k, v in sets.items() if v}
  words = art.concept_words()
  results, rows = {}, []
  for name, folder in (("before", art.base_model_dir), ("after", art.unlearned_model_dir)):
    model = art.load_model(folder)
    tokenizer = art.tokenizer(model.cfg.vocab_size)
    t0 = time.perf_counter()
    results[name], gens = audit(model, tokenizer, sets, words, ctx.mesh, max_len=cfg.data.max_len, system=art.system,
                                batch_size=cfg.evaluate.batch_size, max_new_tokens=cfg.evaluate.max_new_tokens)
    results[name]["wall_s"] = time.perf_counter() - t0
    logging.info("evaluate %s: %s", name, {k: round(v, 4) for k, v in results[name].items()})
    rows += [{"model": name, "set": s, "question": r["question"], "reference": r["answer"], "generated": g}
             for s, recs in sets.items() for r, g in zip(recs, gens[s])]
  art.save_records("evaluate", "generations", rows)
  art.write_audit_board(results)
  return {"before": results["before"], "after": results["after"], "concept": words,
          "examples": {s: len(v) for s, v in sets.items()}}

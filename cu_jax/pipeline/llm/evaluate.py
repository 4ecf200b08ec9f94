"""LLM stage `evaluate`: every model of the run (the original, each unlearning method, the retrained
reference) answers the forget questions (trained, held-out wordings, paraphrases) and the retain
questions (trained, held-out); per set the appearance rate, ROUGE-L and perplexity
(`cu_jax.evaluation.llm_audit`), and the well-formed rate of the forget answers; the loss and
Min-K% membership attacks (the trained forget QA against the `holdout` QA no model saw); and, with
a retrained reference, the perplexity of each model's forget answers under the retrained model
(fluency: gibberish scores high). Every generation goes to `evaluate/generations.jsonl`; each
model's figures and answers also go to `evaluate/models/<model>.json` as soon as it is audited, and
a resumed evaluation reads those back instead of generating again."""

from __future__ import annotations

import time

from absl import logging

from cu_jax.data.words import words_of
from cu_jax.evaluation import llm_audit
from cu_jax.evaluation.targets import RETRAIN
from cu_jax.evaluation.text_metrics import well_formed_rate
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.unlearning.text_poison import REFUSALS

FORGET_SETS = ("forget_train", "forget_heldout", "forget_paraphrase")  # the concept's prompts, in report order


def _sets(art: LLMArtifacts, n: int) -> dict[str, list[dict]]:
  splits = {"train": art.records("train"), "heldout": art.records("heldout")}
  sets = {f"{group}_{split}": [r for r in rs if r["group"] == group] for group in ("forget", "retain")
          for split, rs in splits.items()}
  sets["forget_paraphrase"] = art.records("paraphrase")
  return {k: v[:n] if n else v for k, v in sets.items() if v}


def _audit(ctx: Context, art: LLMArtifacts, name: str, sets, words, vocabulary, audited) -> tuple[dict, dict]:
  """(figures, {set: generated answers}) of one model; the membership attacks when `audited`
  holds (members, non-members)."""
  ev = ctx.config.evaluate
  model = art.load_model(art.model_dir(name))
  tokenizer = art.tokenizer(model.cfg.vocab_size)
  t0 = time.perf_counter()
  figures, generated = llm_audit.audit(
      model, tokenizer, sets, words, ctx.mesh, max_len=ctx.config.data.max_len, system=art.system,
      batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens)
  figures["well_formed_forget"] = well_formed_rate(
      [g for s in FORGET_SETS if s in sets for g in generated[s]], vocabulary)
  if audited:
    figures.update(llm_audit.membership(model, *audited, ctx.mesh, batch_size=ev.batch_size, k=ev.min_k))
  figures["wall_s"] = time.perf_counter() - t0
  logging.info("evaluate %s: %s", name, {k: round(v, 4) for k, v in figures.items()})
  return figures, generated


@stage("evaluate", config_keys=("evaluate",), pipeline="llm")
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, LLMArtifacts(ctx)
  ev = cfg.evaluate
  sets = _sets(art, ev.max_examples)
  words = art.concept_words()
  # Well-formed answers use only words the models were trained on, or a refusal's.
  vocabulary = words_of(r["question"] + " " + r["answer"] for r in art.records("train")) | words_of(REFUSALS)
  holdout = art.records("holdout")
  # The membership audit's members and non-members, encoded once: every model reads the run's tokenizer.
  audited = None
  if holdout and "forget_train" in sets:
    tokenizer = art.tokenizer()
    audited = art.encode(tokenizer, sets["forget_train"]), art.encode(tokenizer, holdout)
  # An interrupted evaluation (generation is its slow part, on a 7B model above all) reads back the
  # models it finished, decided once, before this run writes any.
  saved = {name: art.saved_audit(name, ("metrics", "generations")) for name in art.model_names()}
  results, generations, rows = {}, {}, []
  for name, record in saved.items():
    if record is not None:
      results[name], generations[name] = record["metrics"], record["generations"]
      logging.info("evaluate %s: done already, read back from %s", name, art.audit_record(name))
    else:
      results[name], generations[name] = _audit(ctx, art, name, sets, words, vocabulary, audited)
      art.write_json(art.audit_record(name), {"metrics": results[name], "generations": generations[name]})
    rows += [{"model": name, "set": s, "question": r["question"], "reference": r["answer"], "generated": g}
             for s, recs in sets.items() for r, g in zip(recs, generations[name][s])]
  if RETRAIN in results:
    reference = art.load_model(art.model_dir(RETRAIN))
    tokenizer = art.tokenizer(reference.cfg.vocab_size)
    for name, gens in generations.items():
      answered = [dict(question=r["question"], answer=g) for s in FORGET_SETS if s in sets
                  for r, g in zip(sets[s], gens[s])]
      results[name]["fluency_ppl_forget"] = llm_audit.answer_perplexity(
          reference, art.encode(tokenizer, answered, generated=True), ctx.mesh, batch_size=ev.batch_size)
    logging.info("evaluate: perplexity of the forget answers under the retrained model: %s",
                 {k: round(v["fluency_ppl_forget"], 3) for k, v in results.items()})
  art.save_records("evaluate", "generations", rows)
  art.write_audit_board(results)
  return {"models": results, "concept": words, "examples": {s: len(v) for s, v in sets.items()},
          "holdout": len(holdout)}

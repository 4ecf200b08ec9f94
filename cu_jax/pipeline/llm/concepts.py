"""LLM stage `concepts`: what the forget answers are about, from answer-span Integrated Gradients
(`cu_jax.concepts.text_concepts.infer_concept`); `concepts.words` overrides the inferred words."""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from cu_jax.concepts.text_concepts import infer_concept
from cu_jax.evaluation.plots import concept_importance_bars
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage


@stage("concepts", config_keys=("concepts",), pipeline="llm")
def run(ctx: Context) -> dict:
  cfg, art = ctx.config.concepts, LLMArtifacts(ctx)
  out = art.dir("concepts")
  model = art.load_model(art.base_model_dir)
  tokenizer = art.tokenizer(model.cfg.vocab_size)
  forget = [r for r in art.records("train") if r["group"] == "forget"]
  forget = forget[:cfg.max_answers] if cfg.max_answers else forget
  t0 = time.perf_counter()
  found = infer_concept(model, tokenizer, art.encode(tokenizer, forget), [r["answer"] for r in forget], k=cfg.top_k,
                        n_steps=cfg.n_steps, method=cfg.method, chunk_size=cfg.chunk_size,
                        log=lambda msg: logging.info("concepts: %s", msg))
  found["ig_wall_s"] = time.perf_counter() - t0
  found["inferred"] = list(found["concept"])
  if cfg.words:
    found["concept"] = [w.lower() for w in cfg.words]
  art.write_json(out / "concepts.json", found)
  if ctx.primary:
    names = list(found["scores"])
    concept_importance_bars(names, {"mean normalised IG score": np.asarray(list(found["scores"].values()))},
                            f"answer-span IG over {found['answers']} forget answers", out / "concepts.png",
                            highlight=[i for i, w in enumerate(names) if w in found["concept"]])
  logging.info("concepts: %s (inferred %s)", found["concept"], found["inferred"])
  return {k: found[k] for k in ("concept", "inferred", "answers", "abs_delta_mean", "ig_wall_s")}

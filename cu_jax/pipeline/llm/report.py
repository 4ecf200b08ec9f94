"""LLM stage `report`: every stage's summary, one row per model next to the retrained reference, the
targets of each method (`cu_jax.evaluation.targets`), answers to paraphrased forget questions side
by side, timings and versions in `report/report.json`, `report.md` and a plot."""

from __future__ import annotations

from absl import logging

from cu_jax.evaluation.plots import metric_bars
from cu_jax.evaluation.targets import ORIGINAL, RETRAIN, llm_original_targets, llm_targets
from cu_jax.pipeline import reporting
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage

# (metric, column header) of the headline table and the plot
HEADLINE = (("appearance_forget_paraphrase", "appearance: paraphrases"),
            ("appearance_forget_train", "appearance: trained prompts"),
            ("appearance_forget_heldout", "appearance: held-out wordings"),
            ("well_formed_forget", "well-formed forget answers"),
            ("fluency_ppl_forget", "forget-answer ppl under retrained"),
            ("rouge_l_retain_train", "retain ROUGE-L"), ("rouge_l_retain_heldout", "retain ROUGE-L (held-out)"),
            ("mia_loss_auc", "MIA loss AUC"), ("mia_min_k_auc", "MIA Min-K% AUC"))
EXAMPLE_SET = "forget_paraphrase"


def _markdown(report: dict) -> str:
  ev, cfg = report["evaluate"], report["config"]
  models, lora = ev["models"], cfg["lora"]
  names = report["model_order"]
  unlearn = report.get("unlearn", {}).get("methods", {})
  lines = ["# cu_jax LLM concept unlearning report", "",
           f"Concept (IG over {report['concepts']['answers']} forget answers): **{', '.join(ev['concept'])}** "
           f"(inferred: {', '.join(report['concepts']['inferred'])}). Methods: {', '.join(unlearn) or 'none'} "
           f"(concept_poison with `{cfg['poison']['strategy']}` answers); each a LoRA r {lora['rank']} / alpha "
           f"{lora['alpha']} fine-tune of {', '.join(lora['targets'])}.", ""]
  if RETRAIN not in models:
    lines += ["No retrained reference in this run (the `retrain` stage): the figures that compare with it are "
              "left out.", ""]
  shown = [(k, h) for k, h in HEADLINE if any(k in m for m in models.values())]
  lines += reporting.table(["model"] + [h for _, h in shown] + ["unlearn s"],
                           [[n] + [reporting.fmt(models[n].get(k)) for k, _ in shown]
                            + [reporting.fmt(unlearn.get(n, {}).get("wall_s"))] for n in names])
  n_para = ev["examples"].get(EXAMPLE_SET, 0)
  lines += ["", "Appearance: the share of greedy answers naming a concept word. "
            + (f"Paraphrases: {n_para} questions about the concept that no model was trained on. " if n_para else
               "No paraphrases in this QA set (records of group `paraphrase`). ")
            + (f"Membership attacks: the trained forget QA against {ev['holdout']} QA no model saw (for the generated "
               "corpus, the forget questions answered with a decoy identity; 0.5 = no signal)." if ev["holdout"] else
               "No membership audit: the QA set has no records of group `holdout` (QA no model saw)."),
            "", "## Targets", ""]
  rows = {}  # target -> model -> cell; the retrained model's value, where there is one, in its own column
  for t in report["targets"]:
    row = rows.setdefault(t["target"], {})
    row[t["model"]] = f"{t['value']:.3g} {'met' if t['ok'] else '**missed**'}"
    if "reference" in t:
      row[RETRAIN] = f"{t['reference']:.3g}"
  columns = [n for n in names if any(n in r for r in rows.values())]
  lines += reporting.table(["target"] + columns, [[k] + [r.get(n, "") for n in columns] for k, r in rows.items()])
  lines += ["", "## Answers to paraphrased forget questions", ""]
  lines += reporting.table(["question"] + names, [
      [_cell(e["question"])] + [_cell(e["answers"].get(n, "")) for n in names] for e in report["examples"]])
  lines += ["", "## Every figure", ""]
  keys = sorted({k for m in models.values() for k in m if k != "wall_s"})
  lines += reporting.table(["metric"] + names, [[k] + [reporting.fmt(models[n].get(k)) for n in names] for k in keys])
  lines += ["", "## Stage timings", ""]
  lines += reporting.table(["stage", "wall s"], [[k, f"{v:.1f}"] for k, v in report["timings"].items()])
  lines += ["", f"{report['devices']} {report['platform']} device(s); seed {report['seed']}.", "",
            "![metrics](metrics.png) ![concepts](../concepts/concepts.png)", ""]
  return "\n".join(lines)


def _cell(answer: str, width: int = 80) -> str:
  """An answer as a table cell: one line, at most `width` characters, no column separator."""
  answer = " ".join(answer.split()).replace("|", "\\|")
  return answer if len(answer) <= width else answer[:width - 1] + "…"


def _examples(art: LLMArtifacts, n: int = 8) -> list[dict]:
  by = {(r["model"], r["question"]): r["generated"] for r in art.generations() if r["set"] == EXAMPLE_SET}
  questions = list(dict.fromkeys(q for (_, q) in by))[:n]
  models = list(dict.fromkeys(m for (m, _) in by))
  return [{"question": q, "answers": {m: by.get((m, q), "") for m in models}} for q in questions]


@stage("report", config_keys=(), pipeline="llm")
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, LLMArtifacts(ctx)
  out = art.dir("report")
  done = {k: v for k, v in reporting.stage_summaries(ctx).items() if v is not None}
  models = done["evaluate"]["models"]
  order = [n for n in art.model_names() if n in models]  # (done.json keeps keys sorted)
  targets = [dict(t, model=ORIGINAL) for t in llm_original_targets(models)]
  targets += [dict(t, model=m) for m in order if m not in (ORIGINAL, RETRAIN) for t in llm_targets(models, m)]
  facts = reporting.run_facts(ctx)
  report = {**done, "model_order": order, "targets": targets, "examples": _examples(art), "config": cfg.to_dict(),
            "timings": {s: d["wall_s"] for s, d in done.items()}, "seed": cfg.seed,
            "devices": facts["num_devices"], "platform": facts["platform"], "versions": facts["versions"]}
  art.write_json(out / "report.json", report)
  if ctx.primary:
    (out / "report.md").write_text(_markdown(report))
    metric_bars({k: {n: models[n].get(k) for n in order} for k, _ in HEADLINE if any(k in m for m in models.values())},
                out / "metrics.png", reference=RETRAIN if RETRAIN in models else None,
                title="LLM unlearning, every model")
  for t in targets:
    logging.info("target %s %s: %s", t["model"], t["target"], "met" if t["ok"] else "MISSED")
  return {"targets_met": sum(t["ok"] for t in targets), "targets": len(targets)}

"""LLM stage `report`: every stage's summary, the targets (`cu_jax.evaluation.targets`), example
answers before / after, timings and versions in `report/report.json`, `report.md` and a plot."""

from __future__ import annotations

from absl import logging

from cu_jax.evaluation.plots import metric_bars
from cu_jax.evaluation.targets import llm_targets
from cu_jax.pipeline import reporting
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import Context, stage


def _markdown(report: dict) -> str:
  ev = report["evaluate"]
  before, after, lora = ev["before"], ev["after"], report["config"]["lora"]
  lines = ["# cu_jax LLM concept unlearning report", "",
           f"Concept (IG over {report['concepts']['answers']} forget answers): **{', '.join(ev['concept'])}** "
           f"(inferred: {', '.join(report['concepts']['inferred'])}). Poison: `{report['poison']['strategy']}`; "
           f"LoRA r {lora['rank']} / alpha {lora['alpha']} on {', '.join(lora['targets'])} "
           f"({report['unlearn']['trainable_parameters']:,} trainable parameters, "
           f"{100 * report['unlearn']['trainable_fraction']:.2f} %).", ""]
  lines += reporting.table(["metric", "before", "after", "Δ"],
                           [[k, f"{before[k]:.4g}", f"{after[k]:.4g}", f"{after[k] - before[k]:+.4g}"]
                            for k in sorted(k for k in before if k != "wall_s")])
  lines += ["", "## Targets", ""]
  lines += [f"- {t['target']}: before {t['before']:.3f}, after {t['after']:.3f} — "
            f"**{'met' if t['met'] else 'missed'}**" for t in report["targets"]]
  lines += ["", "## Examples (forget prompts)", ""]
  lines += reporting.table(["question", "before", "after"], [[e["question"], e["before"], e["after"]]
                                                              for e in report["examples"]])
  lines += ["", "## Stage timings", ""]
  lines += reporting.table(["stage", "wall s"], [[k, f"{v:.1f}"] for k, v in report["timings"].items()])
  lines += ["", f"{report['devices']} {report['platform']} device(s); seed {report['seed']}.", "",
            "![metrics](metrics.png) ![concepts](../concepts/concepts.png)", ""]
  return "\n".join(lines)


def _examples(art: LLMArtifacts, n: int = 8) -> list[dict]:
  by = {(r["model"], r["question"]): r["generated"] for r in art.generations() if r["set"].startswith("forget")}
  questions = list(dict.fromkeys(q for (_, q) in by))[:n]
  return [{"question": q, "before": by.get(("before", q), ""), "after": by.get(("after", q), "")} for q in questions]


@stage("report", config_keys=(), pipeline="llm")
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, LLMArtifacts(ctx)
  out = art.dir("report")
  done = {k: v for k, v in reporting.stage_summaries(ctx).items() if v is not None}
  ev = done["evaluate"]
  targets = llm_targets(ev["before"], ev["after"])
  facts = reporting.run_facts(ctx)
  report = {**done, "targets": targets, "examples": _examples(art), "config": cfg.to_dict(),
            "timings": {s: d["wall_s"] for s, d in done.items()}, "seed": cfg.seed,
            "devices": facts["num_devices"], "platform": facts["platform"], "versions": facts["versions"]}
  art.write_json(out / "report.json", report)
  if ctx.primary:
    (out / "report.md").write_text(_markdown(report))
    metric_bars({k: {"before": ev["before"][k], "after": ev["after"][k]} for k in ev["before"] if k != "wall_s"},
                out / "metrics.png", reference=None, title="before / after unlearning")
  for t in targets:
    logging.info("target %s: %s", t["target"], "met" if t["met"] else "MISSED")
  return {"targets_met": sum(t["met"] for t in targets), "targets": len(targets)}

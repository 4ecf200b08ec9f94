"""Stage `report`: every stage's figures, hyper-parameters, seeds, timings and versions in
`report/report.json`, a methods x metrics table with the targets in `report/report.md`, and plots.

Which metrics the table shows, how (percent, difference to the retrained model) and which are
plotted is declared where each metric is registered (`cu_jax.evaluation.metrics`).
"""

from __future__ import annotations

from absl import logging

from cu_jax.evaluation import metrics as M
from cu_jax.evaluation import plots
from cu_jax.evaluation.targets import image_targets
from cu_jax.pipeline import reporting
from cu_jax.pipeline.artifacts import ORIGINAL, RETRAIN, ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.utils.errors import UserError

MIA_NOTE = ("mia_fr pools {draws} SVC attackers fit on the original model's forget-class train (member) vs test "
            "(non-member) softmax vectors; on that task they reach a held-out accuracy of {acc:.3f} (0.5 = the "
            "original leaks no membership of the forget class, and mia_fr then only tells where a model's outputs "
            "fall relative to the original's).")
ULIRA_NOTE = ("ulira_auc, ulira_tpr: U-LiRA over {pairs} shadow pairs (the base recipe trained with the forget class, "
              "then unlearned by each method, and without it): the AUC and the TPR at {fpr:g} % FPR of a per-example "
              "likelihood-ratio test telling the method's models from retrained ones on the {examples} forget train "
              "images (0.5 and {fpr:g} % = indistinguishable; the original's row is the attack's power).")
IMPORTANCE_NOTE = ("Each model's own PCBM head (distilled from its softmax on a class-balanced train sample) over the "
                   "original concept bank; IG from that sample's mean concept scores, averaged over the forget "
                   "class's train images. Positive: the concept raises the model's log p(forget).")


def _markdown(report: dict) -> str:
  metrics, names = report["metrics"], report["models"]
  ref, f, hp = metrics.get(RETRAIN), report["forget_class"], report["hyper_parameters"]
  shown = [m for m in M.table_metrics() if any(metrics[n].get(m.name) is not None for n in names)]
  lines = [f"# cu_jax unlearning report: forget class '{f['name']}' ({report['dataset']})", ""]
  concepts = report.get("concepts")
  if concepts:
    lines += [f"Key concepts of '{f['name']}': {', '.join(c['name'] for c in concepts['key_concepts'])}; "
              f"donor class: '{concepts['donor']['name']}'. Method: `{report['method']}` "
              f"(labels `{report['poison']['labels']}`, images `{report['poison']['images']}`, scope "
              f"`{hp['unlearn']['scope']}`).", ""]
  gap = report.get("avg_gap")
  if gap:
    lines += ["## Gap to retraining (Avg.Gap, lower is better)", "",
              f"Mean absolute difference to the retrained model, in percentage points, over "
              f"{', '.join(gap['over'])} ({gap['mia']}: the membership attack that separates the original from the "
              "retrained model most).", ""]
    lines += reporting.table(["rank", "model", "Avg.Gap"] + gap["over"],
                             [[str(i + 1), f"**{n}**" if n == report["method"] else n, f"{gap['models'][n]['avg_gap']:.2f}"]
                              + [f"{gap['models'][n]['parts'].get(k, float('nan')):.2f}" for k in gap["over"]]
                              for i, n in enumerate(gap["ranking"])])
    lines += [""]
  lines += ["## Methods x metrics", "",
            "Accuracies in %; in brackets the difference to the retrained model (the target is the retrained "
            "model's value, not 0 or 1). MIA values are the fraction of forget samples called non-member "
            "(mia_fr, mia_svc) or the attack's accuracy (mia_loss, 0.5 = chance).", ""]
  rows = []
  for name in names:
    cells = [reporting.fmt(metrics[name].get(m.name),
                           None if name == RETRAIN or not ref or not m.vs_retrain else ref.get(m.name), m.percent)
             for m in shown]
    rows.append([f"**{name}**" if name == report["method"] else name] + cells)
  lines += reporting.table(["model"] + [m.name for m in shown], rows)
  if report["targets"]:
    lines += ["", f"## Targets ({report['method']})", ""]
    lines += reporting.table(["target", "value", "retrained", "met"],
                             [[t["target"], reporting.fmt(t["value"]), reporting.fmt(t.get("reference")),
                               "yes" if t["ok"] else "NO"] for t in report["targets"]])
    lines += [f"\n{t['target']}: {t['note']}." for t in report["targets"] if t.get("note")]
  attacker = report.get("mia_fr_attacker")
  if attacker:
    lines += ["", MIA_NOTE.format(draws=attacker["draws"], acc=attacker["heldout_accuracy"])]
  ulira = report.get("ulira")
  if ulira:
    first = next(iter(ulira.values()))
    lines += ["", ULIRA_NOTE.format(pairs=first["pairs"], examples=first["examples"], fpr=100 * first["fpr"])]
  closest = report.get("closest_to_retrain")
  if closest:
    lines += ["", f"Closest to what the retrained model predicts on forget images (agreement_forget): "
                  f"**{closest['method']}** ({100 * closest['agreement_forget']:.1f} %)."]
  if concepts and any("key_concept_importance" in metrics[n] for n in names):
    keys = [c["name"] for c in concepts["key_concepts"]]
    lines += ["", "## Key concepts' importance for the forget class (IG of log p(forget))", "", IMPORTANCE_NOTE, ""]
    lines += reporting.table(["model"] + keys, [[name] + [reporting.fmt(metrics[name].get("key_concept_importance", {})
                                                                         .get(k)) for k in keys] for name in names])
  t = report["timings"]
  lines += ["", "## Wall time", ""]
  lines += reporting.table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in t["stages"].items()]
                           + [[f"unlearn: {k}", f"{v:.1f}"] for k, v in t.get("unlearn_methods", {}).items()])
  lines += ["", f"Global batch: train {hp['train']['batch_size']}, unlearn {hp['unlearn']['train']['batch_size']}; "
                f"{report['num_devices']} devices ({report['platform']}); seed {report['seed']}.", "", "## Plots", ""]
  lines += [f"![{p}]({p})" for p in report["plots"]]
  return "\n".join(lines) + "\n"


def _plots(ctx: Context, art: ImageArtifacts, report: dict) -> list[str]:
  """Writes the report's plots (process 0); returns their file names."""
  ds, out, metrics, names = art.dataset, art.dir("report"), report["metrics"], report["models"]
  forget = report["forget_class"]["index"]
  order = [ORIGINAL] + [n for n in names if n not in (ORIGINAL, RETRAIN)] + ([RETRAIN] if RETRAIN in names else [])
  plots.per_class_accuracy(ds.class_names, {n: metrics[n]["per_class_accuracy"] for n in order},
                           out / "per_class_accuracy.png", forget=forget)
  losses = {n: {s.replace("_", "-"): v for s, v in art.losses(n, M.SUBSETS).items()} for n in order}
  plots.loss_distributions(losses, out / "loss_distributions.png",
                           title=f"per-sample loss (forget class '{ds.class_names[forget]}')")
  plotted = [m for m in M.METRICS.names() if M.METRICS.get(m).plotted]
  plots.metric_bars({k: {n: metrics[n].get(k) for n in order} for k in plotted},
                    out / "mia.png", reference=RETRAIN if RETRAIN in names else None,
                    title="membership inference, probe and agreement (dashed: retrained)")
  files = ["per_class_accuracy.png", "loss_distributions.png", "mia.png"]
  importance = {n: art.importance(n) for n in order}
  if report["concepts"] and all(v is not None for v in importance.values()):
    bank = art.bank()
    plots.concept_importance_change(bank.names, importance, out / "concept_importance.png", key=art.key_concepts(bank),
                                    title=f"concepts of '{ds.class_names[forget]}' before / after unlearning")
    files.append("concept_importance.png")
  return files


def _avg_gap(metrics: dict, names: list[str]) -> dict | None:
  """Every model's Avg.Gap to the retrained model, and the ranking by it (None without one)."""
  if RETRAIN not in metrics:
    return None
  mia = M.strongest_mia(metrics[ORIGINAL], metrics[RETRAIN])
  models = {n: M.avg_gap(metrics[n], metrics[RETRAIN], mia) for n in names if n != RETRAIN}
  return {"mia": mia, "over": M.gap_metrics(mia), "models": models,
          "ranking": sorted(models, key=lambda n: models[n]["avg_gap"])}


@stage("report", config_keys=())
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, ImageArtifacts(ctx)
  evaluation = art.evaluation()
  if evaluation is None:
    raise UserError("the report needs the 'evaluate' stage; add it to --config.stages before 'report'")
  metrics, names = evaluation["metrics"], evaluation["models"]
  stages = reporting.stage_summaries(ctx)
  timings = {"stages": {k: v["wall_s"] for k, v in stages.items() if v}}
  if stages.get("unlearn"):
    timings["unlearn_methods"] = {k: v["train_wall_s"] for k, v in stages["unlearn"]["methods"].items()}
  if stages.get(RETRAIN) and "train_wall_s" in stages[RETRAIN]:  # (not for a given retrained model)
    timings["retrain"] = stages[RETRAIN]["train_wall_s"]
  method = cfg.unlearn.method
  with_ref = [n for n in names if n not in (ORIGINAL, RETRAIN) and metrics[n].get("agreement_forget") is not None]
  closest = max(with_ref, key=lambda n: metrics[n]["agreement_forget"], default=None)
  concepts = art.concepts()
  report = {
      "dataset": art.dataset.name, "forget_class": evaluation["forget_class"], "method": method, "models": names,
      "metrics": metrics,
      "gap_to_retrain": {n: {k: (v - metrics[RETRAIN][k]) for k, v in metrics[n].items()
                             if isinstance(v, (int, float)) and isinstance(metrics[RETRAIN].get(k), (int, float))}
                         for n in names} if RETRAIN in metrics else None,
      "closest_to_retrain": closest and {"method": closest, "agreement_forget": metrics[closest]["agreement_forget"]},
      "avg_gap": _avg_gap(metrics, names),
      "targets": image_targets(metrics, method, timings, evaluation.get("mia_fr_attacker")) if method in metrics else [],
      "mia_fr_attacker": evaluation.get("mia_fr_attacker"), "ulira": evaluation.get("ulira"),
      "timings": timings,
      "concepts": concepts and {k: concepts[k] for k in ("key_concepts", "donor", "confusion_forget_donor_test")},
      "poison": stages.get("poison") or {"labels": cfg.poison.labels, "images": cfg.poison.images},
      "base_model": stages.get("train"), "unlearn": stages.get("unlearn"), "subset_sizes": evaluation["subset_sizes"],
      "hyper_parameters": cfg.to_dict(), **reporting.run_facts(ctx),
  }
  report["plots"] = _plots(ctx, art, report) if ctx.primary else []
  out = art.dir("report")
  art.write_json(out / "report.json", report)
  if ctx.primary:
    (out / "report.md").write_text(_markdown(report))
  for t in report["targets"]:
    logging.info("report: %-40s %s %s", t["target"], reporting.fmt(t["value"]), "met" if t["ok"] else "NOT met")
  logging.info("report: %s", out / "report.md")
  return {"report": str(out / "report.md"), "targets_met": all(t["ok"] for t in report["targets"])}

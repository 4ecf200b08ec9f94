"""Stages `evaluate` and `report`: every model audited the same way, then one readable report.

`evaluate` runs each model (the original, every unlearning method, the retrained reference) over
the evaluation subsets (`cu_jax.evaluation.metrics`), computes every registered metric, the
relearn test (fine-tuning steps on a few forget samples until forget accuracy comes back) and the
forget class's concept importance under each model, and writes `evaluate/metrics.json` plus
per-sample losses and importance vectors (.npy) for the plots.

`report` gathers every stage's figures, hyper-parameters, seeds, timings and versions into
`report/report.json`, a methods x metrics table in `report/report.md`, and the plots.
"""

from __future__ import annotations

import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from cu_jax.concepts import importance, pcbm
from cu_jax.data.datasets import ArraySource, read_arrays
from cu_jax.data.loader import TrainLoader
from cu_jax.evaluation import metrics as M
from cu_jax.evaluation import mia
from cu_jax.pipeline.attribution_stages import forget_class_index, key_concept_indices
from cu_jax.pipeline.runner import Context, stage
from cu_jax.pipeline.train_stage import load_trained
from cu_jax.pipeline.unlearn_stages import load_retrained, load_unlearned, method_names, train_labels
from cu_jax.training import evaluate, steps
from cu_jax.utils.errors import UserError
from cu_jax.utils.progress import write_json

ORIGINAL, RETRAIN = "original", "retrain"


def model_names(ctx: Context) -> list[str]:
  """Models in report order: the original, the unlearning methods, the retrained reference."""
  stages = ctx.config.stages
  names = [ORIGINAL] + (method_names(ctx.config) if "unlearn" in stages else [])
  return names + ([RETRAIN] if "retrain" in stages or (ctx.stage_dir(RETRAIN) / "done.json").exists() else [])


def load_model(ctx: Context, name: str):
  """(graphdef, params) of a retrained or unlearned model."""
  return load_retrained(ctx) if name == RETRAIN else load_unlearned(ctx, name)


def evaluation_subsets(ctx: Context) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(images, labels) per subset: all forget train samples, a seeded subset of retained train
  samples, the whole test split."""
  cfg, forget = ctx.config.evaluate, forget_class_index(ctx)
  labels = train_labels(ctx)
  retain = np.flatnonzero(labels != forget)
  n = min(cfg.retain_train_examples, len(retain))
  retain = np.sort(np.random.default_rng([cfg.seed, 6]).choice(retain, n, replace=False))
  train = ctx.dataset.split("train")
  parts = {"forget_train": read_arrays(train, np.flatnonzero(labels == forget)),
           "retain_train": read_arrays(train, retain), "test": read_arrays(ctx.dataset.split("test"))}
  return {k: v["image"] for k, v in parts.items()}, {k: v["label"].astype(np.int64) for k, v in parts.items()}


def model_outputs(ctx: Context, predict_step, params, images: dict[str, np.ndarray]) -> M.ModelOutputs:
  out = {s: evaluate.predict(predict_step, params, ArraySource(image=x), mesh=ctx.mesh,
                             global_batch=ctx.config.train.eval_batch_size) for s, x in images.items()}
  return M.ModelOutputs(logits={s: v["logits"] for s, v in out.items()}, embed={s: v["embed"] for s, v in out.items()})


def relearn_steps(ctx: Context, params, predict_step, train_step, images: dict[str, np.ndarray],
                  labels: dict[str, np.ndarray]) -> int | None:
  """Adam steps on `evaluate.relearn_examples` forget train samples until the forget class's test
  accuracy reaches `evaluate.relearn_accuracy` (None: not within `relearn_max_steps`).
  `predict_step` is the stage's (logits and embeddings), `train_step` a classification step."""
  cfg, forget = ctx.config.evaluate, forget_class_index(ctx)
  test_forget = images["test"][labels["test"] == forget]

  def forget_accuracy(p) -> float:
    out = evaluate.predict(predict_step, p, ArraySource(image=test_forget), mesh=ctx.mesh,
                           global_batch=ctx.config.train.eval_batch_size)
    return float((out["logits"].argmax(-1) == forget).mean())

  if forget_accuracy(params) >= cfg.relearn_accuracy:
    return 0
  n = min(cfg.relearn_examples, len(images["forget_train"]))
  pick = np.random.default_rng([cfg.seed, 7]).choice(len(images["forget_train"]), n, replace=False)
  source = ArraySource(image=images["forget_train"][pick], label=labels["forget_train"][pick].astype(np.int32))
  loader = TrainLoader(source, global_batch=cfg.relearn_batch_size, mesh=ctx.mesh, seed=cfg.seed)
  tx = optax.adam(cfg.relearn_lr)
  state = steps.replicate({"step": jnp.zeros((), jnp.int32), "params": jax.tree.map(jnp.copy, params),
                           "opt_state": tx.init(params)}, ctx.mesh)
  for step, batch in loader.iterate(0, cfg.relearn_max_steps):
    state, _ = train_step(state, batch)
    if (step + 1) % cfg.relearn_eval_every == 0 and forget_accuracy(state["params"]) >= cfg.relearn_accuracy:
      return step + 1
  return None


def importance_bank(ctx: Context):
  """The concept bank to re-run concept attribution with, or None: without an `attribute` stage,
  or for a text bank (CLIP features do not change when the classifier unlearns)."""
  from cu_jax.pipeline.concept_stages import load_bank
  if not (ctx.stage_dir("attribute") / "concepts.json").exists():
    return None
  bank = load_bank(ctx)
  return bank if bank.kind == "cav" else None


def concept_importance(ctx: Context, bank, out: M.ModelOutputs) -> np.ndarray:
  """The forget class's concept importance under one model, measured the way the `attribute` stage
  measures it for the original: the (original) concept bank's scores of this model's embeddings, a
  PCBM head distilling this model's own softmax outputs on a class-balanced sample (the retained
  subset plus as many forget samples as an average retained class has there, like the training set),
  and IG of log p(forget | concepts) over all forget train samples from that sample's mean scores.
  Distilling the softmax, not the argmax, keeps the forget class's log-probability meaningful for a
  model that never predicts it."""
  cfg, forget, k = ctx.config, forget_class_index(ctx), ctx.dataset.num_classes
  project = lambda subset: np.asarray(pcbm.project(out.embed[subset], bank.vectors, bank.intercepts))
  forget_scores, retain_scores = project("forget_train"), project("retain_train")
  n_forget = min(len(forget_scores), max(1, round(len(retain_scores) / max(1, k - 1))))
  pick = np.sort(np.random.default_rng([cfg.evaluate.seed, 7]).choice(len(forget_scores), n_forget, replace=False))
  scores = np.concatenate([forget_scores[pick], retain_scores])
  probs = mia.softmax(np.concatenate([out.logits["forget_train"][pick], out.logits["retain_train"]]))
  head = pcbm.fit_elastic_net(scores, probs, k, lam=cfg.pcbm.lam, l1_ratio=cfg.pcbm.l1_ratio,
                              max_iter=cfg.pcbm.max_iter, tol=cfg.pcbm.tol)
  baseline = scores.mean(0) if cfg.attribution.baseline == "mean" else cfg.attribution.baseline
  ig, _, _ = importance.concept_ig(np.asarray(head.weight), np.asarray(head.bias), forget_scores,
                                   np.full(len(forget_scores), forget), baseline=baseline,
                                   n_steps=cfg.attribution.n_steps, method=cfg.attribution.method)
  return ig[forget]


def validate_evaluate(ctx: Context) -> None:
  cfg = ctx.config.evaluate
  forget_class_index(ctx)
  if cfg.mia_draws < 1:
    raise UserError(f"evaluate.mia_draws={cfg.mia_draws} must be >= 1 (attackers pooled by mia_fr; 100 is the default)")
  if cfg.retain_train_examples < 2 or cfg.relearn_examples < 1:
    raise UserError("evaluate.retain_train_examples must be >= 2 and evaluate.relearn_examples >= 1")
  if not 0.0 < cfg.relearn_accuracy <= 1.0:
    raise UserError(f"evaluate.relearn_accuracy={cfg.relearn_accuracy} must be in (0, 1]")
  from cu_jax.parallel.mesh import check_global_batch
  check_global_batch(cfg.relearn_batch_size, ctx.mesh, "evaluate.relearn_batch_size")


@stage("evaluate", config_keys=("evaluate",), validate=validate_evaluate)
def run_evaluate(ctx: Context) -> dict:
  out_dir, ds = ctx.stage_dir("evaluate"), ctx.dataset
  forget = forget_class_index(ctx)
  images, labels = evaluation_subsets(ctx)
  names = model_names(ctx)
  graphdef, original = load_trained(ctx)
  predict_step = steps.make_predict_step(graphdef, ctx.config.data, ctx.mesh, output="both")
  relearn_step = steps.make_train_step(graphdef, optax.adam(ctx.config.evaluate.relearn_lr), ctx.config.data,
                                       ctx.mesh, steps.classification_loss(), seed=ctx.config.evaluate.seed)
  outputs, extra = {}, {}
  for name in names:
    t0 = time.perf_counter()
    params = original if name == ORIGINAL else steps.replicate(load_model(ctx, name)[1], ctx.mesh)
    outputs[name] = model_outputs(ctx, predict_step, params, images)
    extra[name] = {"relearn_steps": relearn_steps(ctx, params, predict_step, relearn_step, images, labels)}
    logging.info("evaluate: %s outputs + relearn test in %.1f s", name, time.perf_counter() - t0)
  evalset = M.EvalSet(labels=labels, forget=forget, num_classes=ds.num_classes, original=outputs[ORIGINAL],
                      retrained=outputs.get(RETRAIN), seed=ctx.config.evaluate.seed,
                      mia_draws=ctx.config.evaluate.mia_draws)
  bank = importance_bank(ctx)
  key = key_concept_indices(ctx, bank) if bank is not None else []
  results = {}
  for name in names:
    results[name] = {**M.compute_all(outputs[name], evalset), **extra[name]}
    imp = None if bank is None else concept_importance(ctx, bank, outputs[name])
    if ctx.primary:
      for subset, loss in evalset.losses(outputs[name]).items():
        np.save(out_dir / f"loss_{name}_{subset}.npy", loss.astype(np.float32), allow_pickle=False)
      if imp is not None:
        np.save(out_dir / f"importance_{name}.npy", imp.astype(np.float32), allow_pickle=False)
    if imp is not None:
      results[name]["key_concept_importance"] = {bank.names[j]: float(imp[j]) for j in key}
    logging.info("evaluate: %s: %s", name, {k: round(v, 4) for k, v in results[name].items() if isinstance(v, float)})
  members, nonmembers = evalset.fr_sets()
  attacker = {"draws": evalset.mia_draws, "examples": 2 * min(len(members), len(nonmembers)),
              "heldout_accuracy": mia.fr_attacker_accuracy(members, nonmembers, seed=evalset.seed)}
  logging.info("evaluate: mia_fr attacker's held-out accuracy on the original model: %.3f", attacker["heldout_accuracy"])
  summary = {"forget_class": {"index": forget, "name": ds.class_names[forget]}, "models": names,
             "subset_sizes": {s: int(len(v)) for s, v in labels.items()}, "metrics": results,
             "mia_fr_attacker": attacker}
  write_json(out_dir / "metrics.json", summary)
  return {"models": names, "forget_class": summary["forget_class"]}


# ----------------------------------------------------------------------------------------- report

TABLE_METRICS = ("acc_forget_train", "acc_forget_test", "acc_retain_train", "acc_retain_test", "agreement_forget",
                 "kl_forget", "mia_fr", "mia_svc", "mia_loss", "probe_forget", "relearn_steps")


def _read_json(path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None


def _versions() -> dict[str, str]:
  import importlib.metadata as md
  names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn", "tensorflow-datasets")
  return {n: md.version(n) for n in names} | {"python": platform.python_version()}


def _fmt(value, ref=None, percent=False) -> str:
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "–"
  if isinstance(value, int) and not isinstance(value, bool):
    text = str(value)
  else:
    text = f"{100 * value:.2f}" if percent else f"{value:.3f}"
  if ref is not None and not isinstance(ref, (list, dict)) and ref == ref:
    delta = (value - ref) * (100 if percent else 1)
    text += f" ({delta:+.2f})" if not isinstance(value, int) else f" ({delta:+d})"
  return text


PERCENT = {"acc_forget_train", "acc_forget_test", "acc_retain_train", "acc_retain_test", "agreement_forget"}


def targets(metrics: dict, method: str, timings: dict, attacker: dict | None = None) -> list[dict]:
  """The issue's figures to reach for the main method, each with its measured value and verdict.
  `attacker`: evaluate's `mia_fr_attacker` (draws, examples, heldout_accuracy), to note a powerless attack."""
  m, r = metrics.get(method, {}), metrics.get(RETRAIN)
  rows = [{"target": "acc_forget_test <= 2%", "value": m.get("acc_forget_test"),
           "ok": m.get("acc_forget_test") is not None and m["acc_forget_test"] <= 0.02}]
  if r:
    rows.append({"target": "acc_retain_test >= retrained - 1 point", "value": m.get("acc_retain_test"),
                 "reference": r["acc_retain_test"], "ok": m["acc_retain_test"] >= r["acc_retain_test"] - 0.01})
    row = {"target": "mia_fr within 0.05 of retrained", "value": m.get("mia_fr"), "reference": r["mia_fr"],
           "ok": abs(m["mia_fr"] - r["mia_fr"]) <= 0.05}
    # a bar the untouched model clears, or an attacker at chance, cannot certify forgetting: say so
    notes, original = [], metrics.get(ORIGINAL, {}).get("mia_fr")
    if original is not None and abs(original - r["mia_fr"]) <= 0.05:
      notes.append(f"the original model, which forgot nothing, is within 0.05 too ({original:.3f}): the attack "
                   "cannot tell forgetting from not forgetting on this run")
    if attacker and attacker.get("examples"):
      chance = 0.5 + 3 * (0.25 / attacker["examples"]) ** 0.5  # 3 standard errors above a coin flip
      if attacker["heldout_accuracy"] < chance:
        notes.append(f"the attackers' held-out accuracy on the original model, {attacker['heldout_accuracy']:.3f}, "
                     f"is within 3 standard errors of chance (< {chance:.3f}): the original leaks no membership "
                     "of the forget class for unlearning to remove, so this bar cannot certify forgetting")
    if notes:
      row["note"] = "; ".join(notes)
    rows.append(row)
  if method in timings.get("unlearn_methods", {}) and timings.get("retrain"):
    ratio = timings["unlearn_methods"][method] / timings["retrain"]
    rows.append({"target": "unlearning time <= 1/5 of retraining", "value": ratio, "ok": ratio <= 0.2})
  return rows


def _markdown(report: dict) -> str:
  metrics, names = report["metrics"], report["models"]
  ref = metrics.get(RETRAIN)
  f = report["forget_class"]
  lines = [f"# cu_jax unlearning report: forget class '{f['name']}' ({report['dataset']})", ""]
  concepts = report.get("concepts")
  if concepts:
    lines += [f"Key concepts of '{f['name']}': {', '.join(c['name'] for c in concepts['key_concepts'])}; "
              f"donor class: '{concepts['donor']['name']}'. Method: `{report['method']}` "
              f"(labels `{report['poison']['labels']}`, images `{report['poison']['images']}`, scope "
              f"`{report['hyper_parameters']['unlearn']['scope']}`).", ""]
  lines += ["## Methods x metrics", "",
            "Accuracies in %; in brackets the difference to the retrained model (the target is the retrained "
            "model's value, not 0 or 1). MIA values are the fraction of forget samples called non-member "
            "(mia_fr, mia_svc) or the attack's accuracy (mia_loss, 0.5 = chance).", "",
            "| model | " + " | ".join(TABLE_METRICS) + " |", "|---" * (len(TABLE_METRICS) + 1) + "|"]
  for name in names:
    row = [_fmt(metrics[name].get(k), None if name == RETRAIN or not ref else ref.get(k), k in PERCENT)
           for k in TABLE_METRICS]
    lines.append(f"| {'**' + name + '**' if name == report['method'] else name} | " + " | ".join(row) + " |")
  if report["targets"]:
    lines += ["", f"## Targets ({report['method']})", "", "| target | value | retrained | met |", "|---|---|---|---|"]
    for t in report["targets"]:
      lines.append(f"| {t['target']} | {_fmt(t['value'])} | {_fmt(t.get('reference'))} | {'yes' if t['ok'] else 'NO'} |")
    lines += [f"\n{t['target']}: {t['note']}." for t in report["targets"] if t.get("note")]
  attacker = report.get("mia_fr_attacker")
  if attacker:
    lines += ["", f"mia_fr pools {attacker['draws']} SVC attackers fit on the original model's forget-class train "
                  f"(member) vs test (non-member) softmax vectors; on that task they reach a held-out accuracy of "
                  f"{attacker['heldout_accuracy']:.3f} (0.5 = the original leaks no membership of the forget class, "
                  "and mia_fr then only tells where a model's outputs fall relative to the original's)."]
  closest = report.get("closest_to_retrain")
  if closest:
    lines += ["", f"Closest to what the retrained model predicts on forget images (agreement_forget): "
                  f"**{closest['method']}** ({100 * closest['agreement_forget']:.1f} %)."]
  if concepts and any("key_concept_importance" in metrics[n] for n in names):
    keys = [c["name"] for c in concepts["key_concepts"]]
    lines += ["", "## Key concepts' importance for the forget class (IG of log p(forget))", "",
              "Each model's own PCBM head (distilled from its softmax on a class-balanced train sample) over the "
              "original concept bank; IG from that sample's mean concept scores, averaged over the forget "
              "class's train images. Positive: the concept raises the model's log p(forget).", "",
              "| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in names:
      imp = metrics[name].get("key_concept_importance", {})
      lines.append(f"| {name} | " + " | ".join(_fmt(imp.get(k)) for k in keys) + " |")
  t = report["timings"]
  lines += ["", "## Wall time", "", "| stage | seconds |", "|---|---|"]
  lines += [f"| {k} | {v:.1f} |" for k, v in t["stages"].items()]
  lines += [f"| unlearn: {k} | {v:.1f} |" for k, v in t.get("unlearn_methods", {}).items()]
  lines += ["", f"Global batch: train {report['hyper_parameters']['train']['batch_size']}, unlearn "
                f"{report['hyper_parameters']['unlearn']['train']['batch_size']}; {report['num_devices']} devices "
                f"({report['platform']}); seed {report['seed']}.", "", "## Plots", ""]
  lines += [f"![{p}]({p})" for p in report["plots"]]
  return "\n".join(lines) + "\n"


@stage("report", config_keys=())
def run_report(ctx: Context) -> dict:
  from cu_jax.evaluation import plots
  cfg, ds, out = ctx.config, ctx.dataset, ctx.stage_dir("report")
  evaluation = _read_json(ctx.stage_dir("evaluate") / "metrics.json")
  if evaluation is None:
    raise UserError("the report needs the 'evaluate' stage; add it to --config.stages before 'report'")
  metrics, names = evaluation["metrics"], evaluation["models"]
  forget = evaluation["forget_class"]["index"]
  stages = {name: _read_json(ctx.stage_dir(name) / "done.json") for name in cfg.stages if name != "report"}
  timings = {"stages": {k: v["wall_s"] for k, v in stages.items() if v}}
  if stages.get("unlearn"):
    timings["unlearn_methods"] = {k: v["train_wall_s"] for k, v in stages["unlearn"]["methods"].items()}
  if stages.get("retrain"):
    timings["retrain"] = stages["retrain"]["train_wall_s"]
  method = cfg.unlearn.method
  with_ref = [n for n in names if n not in (ORIGINAL, RETRAIN) and metrics[n].get("agreement_forget") is not None]
  closest = max(with_ref, key=lambda n: metrics[n]["agreement_forget"], default=None)
  report = {
      "dataset": ds.name, "forget_class": evaluation["forget_class"], "method": method, "models": names,
      "metrics": metrics,
      "gap_to_retrain": {n: {k: (v - metrics[RETRAIN][k]) for k, v in metrics[n].items()
                             if isinstance(v, (int, float)) and isinstance(metrics[RETRAIN].get(k), (int, float))}
                         for n in names} if RETRAIN in metrics else None,
      "closest_to_retrain": closest and {"method": closest, "agreement_forget": metrics[closest]["agreement_forget"]},
      "targets": targets(metrics, method, timings, evaluation.get("mia_fr_attacker")) if method in metrics else [],
      "mia_fr_attacker": evaluation.get("mia_fr_attacker"),
      "timings": timings,
      "concepts": _read_json(ctx.stage_dir("attribute") / "concepts.json"),
      "poison": stages.get("poison") or {"labels": cfg.poison.labels, "images": cfg.poison.images},
      "base_model": stages.get("train"), "unlearn": stages.get("unlearn"), "subset_sizes": evaluation["subset_sizes"],
      "hyper_parameters": cfg.to_dict(), "seed": cfg.seed, "num_devices": int(ctx.mesh.size),
      "platform": jax.devices()[0].platform, "num_processes": jax.process_count(), "versions": _versions(),
  }
  if report["concepts"]:
    report["concepts"] = {k: report["concepts"][k] for k in ("key_concepts", "donor", "confusion_forget_donor_test")}
  order = [ORIGINAL] + [n for n in names if n not in (ORIGINAL, RETRAIN)] + ([RETRAIN] if RETRAIN in names else [])
  plot_files = []
  if ctx.primary:
    ev = ctx.stage_dir("evaluate")
    plots.per_class_accuracy(ds.class_names, {n: metrics[n]["per_class_accuracy"] for n in order},
                             out / "per_class_accuracy.png", forget=forget)
    losses = {n: {s.replace("_", "-"): np.load(ev / f"loss_{n}_{s}.npy") for s in M.SUBSETS} for n in order}
    plots.loss_distributions(losses, out / "loss_distributions.png",
                             title=f"per-sample loss (forget class '{ds.class_names[forget]}')")
    plots.metric_bars({k: {n: metrics[n].get(k) for n in order}
                       for k in ("mia_fr", "mia_svc", "mia_loss", "probe_forget", "agreement_forget")},
                      out / "mia.png", reference=RETRAIN if RETRAIN in names else None,
                      title="membership inference, probe and agreement (dashed: retrained)")
    plot_files = ["per_class_accuracy.png", "loss_distributions.png", "mia.png"]
    if all((ev / f"importance_{n}.npy").exists() for n in order) and report["concepts"]:
      from cu_jax.pipeline.concept_stages import load_bank
      bank = load_bank(ctx)
      plots.concept_importance_change(bank.names, {n: np.load(ev / f"importance_{n}.npy") for n in order},
                                      out / "concept_importance.png", key=key_concept_indices(ctx, bank),
                                      title=f"concepts of '{ds.class_names[forget]}' before / after unlearning")
      plot_files.append("concept_importance.png")
  report["plots"] = plot_files
  write_json(out / "report.json", report)
  if ctx.primary:
    (out / "report.md").write_text(_markdown(report))
  for t in report["targets"]:
    logging.info("report: %-40s %s %s", t["target"], _fmt(t["value"]), "met" if t["ok"] else "NOT met")
  logging.info("report: %s", out / "report.md")
  return {"report": str(out / "report.md"), "targets_met": all(t["ok"] for t in report["targets"])}

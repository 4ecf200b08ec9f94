"""Stage `evaluate`: every model audited the same way.

Runs each model (the original, every unlearning method, the retrained reference) over the
evaluation subsets (`cu_jax.evaluation.metrics`: all forget-class train samples, a seeded subset of
retained train samples, the test split), computes every registered metric, the relearn test
(`cu_jax.evaluation.relearn`) and the forget class's concept importance under each model
(`cu_jax.concepts.importance.model_importance`), and writes `evaluate/metrics.json` plus
per-sample losses and importance vectors for the report's plots. Each model's outputs are kept
(`evaluate/models/`) as soon as they are computed: an interrupted evaluation reads them back.

Concept importance under a model needs concept scores of the audited images and that model's
softmax on them. A CAV bank lives in the classifier's own embeddings, so each model's scores are
re-projected from its embeddings; a text bank lives in CLIP's image features, which do not change
when the classifier unlearns, so its scores are the cached CLIP projections of the same images and
only the model's softmax differs: the audit then measures how much the model's output still
follows what CLIP sees in the images.
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from cu_jax.concepts import importance, pcbm
from cu_jax.concepts.bank import BANK_KINDS, ConceptBank
from cu_jax.data.datasets import read_arrays
from cu_jax.evaluation import metrics as M
from cu_jax.evaluation import mia, shadow
from cu_jax.evaluation.relearn import RelearnSettings, RelearnTest
from cu_jax.parallel.mesh import check_global_batch
from cu_jax.pipeline.artifacts import ORIGINAL, RETRAIN, ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.training import steps
from cu_jax.unlearning import methods
from cu_jax.utils.errors import UserError


def validate(ctx: Context) -> None:
  art, cfg = ImageArtifacts(ctx), ctx.config.evaluate
  forget = art.forget  # raises for a class the dataset does not have
  check_global_batch(cfg.relearn_batch_size, ctx.mesh, "evaluate.relearn_batch_size")
  if cfg.relearn_batch_size > cfg.relearn_examples:
    raise UserError(f"evaluate.relearn_batch_size={cfg.relearn_batch_size} is larger than "
                    f"evaluate.relearn_examples={cfg.relearn_examples} (the forget samples the relearn test "
                    "fine-tunes on); lower the batch or raise the examples")
  test_labels = read_arrays(art.dataset.split("test"), keys=("label",))["label"]
  name, train_labels = art.dataset.class_names[forget], art.train_labels()
  for split, labels in (("train", train_labels), ("test", test_labels)):
    if int((labels == forget).sum()) < 2:
      raise UserError(f"the forget class {name!r} has {int((labels == forget).sum())} {split} images; the audit "
                      "(membership inference, relearn test) needs at least 2 in each split")
  if cfg.shadow_models and cfg.shadow_models < 3:
    raise UserError(f"evaluate.shadow_models={cfg.shadow_models}: the U-LiRA audit fits each held-out shadow pair's "
                    "Gaussians on the other pairs and needs at least 3; use 0 (off) or 3 or more (8+ for a stable AUC)")
  if cfg.shadow_models and "unlearn" not in ctx.config.stages:
    raise UserError(f"evaluate.shadow_models={cfg.shadow_models} audits the unlearning methods, but 'unlearn' is not in "
                    "--config.stages; add it, or set --config.evaluate.shadow_models=0")
  n_train = int((train_labels == forget).sum())
  if cfg.relearn_batch_size > n_train:
    raise UserError(f"evaluate.relearn_batch_size={cfg.relearn_batch_size} is larger than the {n_train} train images "
                    f"of the forget class {name!r} the relearn test fine-tunes on; lower it to at most {n_train}")


def _subset_index(ctx: Context, art: ImageArtifacts) -> dict[str, np.ndarray | None]:
  """Train-split indices of the audited subsets: all forget train samples, a seeded subset of
  retained train samples; None for the whole test split."""
  cfg, forget = ctx.config.evaluate, art.forget
  labels = art.train_labels()
  retain = np.flatnonzero(labels != forget)
  n = min(cfg.retain_train_examples, len(retain))
  retain = np.sort(np.random.default_rng([cfg.seed, 6]).choice(retain, n, replace=False))
  return {"forget_train": np.flatnonzero(labels == forget), "retain_train": retain, "test": None}


def _subsets(art: ImageArtifacts, index: dict[str, np.ndarray | None]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(images, labels) per audited subset."""
  split = lambda name: art.dataset.split("test" if name == "test" else "train")
  parts = {name: read_arrays(split(name), rows) for name, rows in index.items()}
  return {k: v["image"] for k, v in parts.items()}, {k: v["label"].astype(np.int64) for k, v in parts.items()}


def _importance_bank(art: ImageArtifacts) -> ConceptBank | None:
  """The concept bank to re-measure concept importance with, or None without concept inference."""
  return art.bank() if art.concepts() is not None else None


def _fixed_scores(art: ImageArtifacts, bank: ConceptBank, index) -> dict[str, np.ndarray] | None:
  """A text bank's concept scores of the audited train subsets (the same for every model); None for
  a CAV bank, whose scores come from each model's own embeddings."""
  if BANK_KINDS.get(bank.kind).on_model_embeddings:
    return None
  scores = art.concept_scores(bank, "train")
  return {name: scores[index[name]] for name in ("forget_train", "retain_train")}


def _importance(ctx: Context, art: ImageArtifacts, bank: ConceptBank, out: M.ModelOutputs,
                fixed: dict[str, np.ndarray] | None) -> np.ndarray:
  cfg = ctx.config
  project = lambda subset: (fixed[subset] if fixed is not None
                            else np.asarray(pcbm.project(out.embed[subset], bank.vectors, bank.intercepts)))
  return importance.model_importance(
      project("forget_train"), project("retain_train"), out.probs("forget_train"), out.probs("retain_train"),
      art.forget, art.dataset.num_classes, lam=cfg.pcbm.lam, l1_ratio=cfg.pcbm.l1_ratio, max_iter=cfg.pcbm.max_iter,
      tol=cfg.pcbm.tol, baseline=cfg.attribution.baseline, n_steps=cfg.attribution.n_steps,
      method=cfg.attribution.method, seed=cfg.evaluate.seed)


def _ulira(ctx: Context, art: ImageArtifacts, graphdef) -> dict[str, dict]:
  """U-LiRA (`cu_jax.evaluation.shadow`): `evaluate.shadow_models` shadow pairs trained by the base
  recipe, every method applied to each "in" model; per method, how well a per-example likelihood
  ratio tells its models from retrained ones."""
  cfg, names = ctx.config, art.method_names()
  recipe = shadow.ShadowRecipe(
      build_model=lambda seed: art.build_model(seed=seed), train_source=art.dataset.split("train"),
      retrain_columns=art.retrain_set(),
      data=art.unlearn_data(methods.needs_of(names)),
      train_cfg=cfg.train, optim_cfg=cfg.optim, data_cfg=cfg.data, unlearn_cfg=cfg.unlearn, mesh=ctx.mesh,
      predict_step=steps.make_predict_step(graphdef, cfg.data, ctx.mesh), eval_batch_size=cfg.train.eval_batch_size,
      complement_temperature=cfg.poison.target_temperature if cfg.poison.labels == "complement" else None,
      write=ctx.primary)
  t0 = time.perf_counter()
  figures = shadow.audit(recipe, names, cfg.evaluate.shadow_models, art.dir("evaluate") / "shadow", seed=cfg.seed)
  logging.info("evaluate: U-LiRA over %d shadow pairs in %.0f s: %s", cfg.evaluate.shadow_models,
               time.perf_counter() - t0, {n: round(f["auc"], 3) for n, f in figures.items()})
  return figures


@stage("evaluate", config_keys=("evaluate",), validate=validate)
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, ImageArtifacts(ctx)
  ds, forget = art.dataset, art.forget
  index = _subset_index(ctx, art)
  images, labels = _subsets(art, index)
  names = art.model_names()
  graphdef, original = art.trained()
  predict_step = steps.make_predict_step(graphdef, cfg.data, ctx.mesh, output="both")
  relearn = RelearnTest(graphdef, cfg.data, ctx.mesh, RelearnSettings.from_config(cfg.evaluate),
                        predict_step=predict_step, eval_batch_size=cfg.train.eval_batch_size)
  forget_test = images["test"][labels["test"] == forget]
  # An interrupted evaluation reads back the models it finished (decided before this run writes any).
  saved = {name: art.saved_outputs(name) for name in names}
  outputs, extra = {}, {}
  for name in names:
    if saved[name] is not None:
      outputs[name], extra[name] = saved[name]
      logging.info("evaluate: %s outputs + relearn test done already, read back", name)
      continue
    t0 = time.perf_counter()
    params = original if name == ORIGINAL else steps.replicate(art.load_model(name)[1], ctx.mesh)
    outputs[name] = M.model_outputs(predict_step, params, images, ctx.mesh, cfg.train.eval_batch_size)
    extra[name] = {"relearn_steps": relearn.steps_to_relearn(params, images["forget_train"], forget_test, forget)}
    art.save_outputs(name, outputs[name], extra[name])
    logging.info("evaluate: %s outputs + relearn test in %.1f s", name, time.perf_counter() - t0)
  evalset = M.EvalSet(labels=labels, forget=forget, num_classes=ds.num_classes, original=outputs[ORIGINAL],
                      retrained=outputs.get(RETRAIN), **M.EvalSet.settings(cfg.evaluate))
  bank = _importance_bank(art)
  key = art.key_concepts(bank) if bank is not None else []
  fixed = _fixed_scores(art, bank, index) if bank is not None else None
  results = {}
  for name in names:
    results[name] = {**M.compute_all(outputs[name], evalset), **extra[name]}
    art.save_losses(name, evalset.losses(outputs[name]))
    if bank is not None:
      imp = _importance(ctx, art, bank, outputs[name], fixed)
      art.save_importance(name, imp)
      results[name]["key_concept_importance"] = {bank.names[j]: float(imp[j]) for j in key}
    logging.info("evaluate: %s: %s", name, {k: round(v, 4) for k, v in results[name].items() if isinstance(v, float)})
  ulira = None
  if cfg.evaluate.shadow_models:
    ulira = _ulira(ctx, art, graphdef)
    for name, figures in ulira.items():
      results[name].update(ulira_auc=figures["auc"], ulira_tpr=figures["tpr_at_fpr"])
  members, nonmembers = evalset.fr_sets()
  attacker = {"draws": evalset.mia_draws, "examples": 2 * min(len(members), len(nonmembers)),
              "heldout_accuracy": mia.fr_attacker_accuracy(members, nonmembers, seed=evalset.seed)}
  logging.info("evaluate: mia_fr attacker's held-out accuracy on the original model: %.3f", attacker["heldout_accuracy"])
  summary = {"forget_class": {"index": forget, "name": ds.class_names[forget]}, "models": names,
             "subset_sizes": {s: int(len(v)) for s, v in labels.items()}, "metrics": results,
             "mia_fr_attacker": attacker, "ulira": ulira}
  art.write_json(art.metrics_file, summary)
  art.write_audit_board(results)
  return {"models": names, "forget_class": summary["forget_class"]}

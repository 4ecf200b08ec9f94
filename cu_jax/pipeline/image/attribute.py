"""Stage `attribute`: what the forget class means to the model.

Ranks every class's concepts (PCBM weights, and IG of the class log-probability over the concept
scores), picks the forget class's key concepts and its donor class, maps where the top key concept
lives in a few forget images (input-space IG through backbone -> projection; banks on the model's
own embeddings only), and writes `attribute/concepts.json` with two plots.
"""

from __future__ import annotations

import numpy as np
from absl import logging
from flax import nnx

from cu_jax.attribution.saliency import concept_saliency
from cu_jax.concepts import importance
from cu_jax.concepts.bank import BANK_KINDS
from cu_jax.data.datasets import read_arrays
from cu_jax.evaluation import plots
from cu_jax.pipeline.artifacts import ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.utils.errors import UserError


def validate(ctx: Context) -> None:
  cfg = ctx.config.attribution
  importance.check_settings(cfg.ranking, cfg.baseline, cfg.method)
  bank = ctx.config.concepts.bank
  if cfg.saliency_images and not BANK_KINDS.get(bank, "concepts.bank").on_model_embeddings:
    raise UserError(f"attribution.saliency_images={cfg.saliency_images} maps where a concept lives in the pixels "
                    f"through the classifier, but concepts.bank={bank!r} has its concepts in another encoder's "
                    "features; set --config.attribution.saliency_images=0 (or use concepts.bank=cav)")
  _ = ImageArtifacts(ctx).forget  # raises for a class the dataset does not have


def _ground_truth(ds, bank, per_class_top: np.ndarray, donor_of: np.ndarray) -> dict | None:
  """precision@k and donor correctness against a dataset's true class -> concepts (synthetic)."""
  truth, names = ds.metadata.get("class_concepts"), ds.metadata.get("concepts")
  if not truth or not names:
    return None
  true_sets = [{names[i] for i in concepts} for concepts in truth]
  precision = [len({bank.names[j] for j in top} & true_sets[c]) / len(top) for c, top in enumerate(per_class_top)]
  donor_ok = [bool(true_sets[c] & true_sets[d]) for c, d in enumerate(donor_of)]
  return {"precision_at_k": float(np.mean(precision)), "per_class_precision": precision,
          "donor_shares_concepts": float(np.mean(donor_ok)), "per_class_donor_ok": donor_ok}


def _saliency(ctx: Context, art: ImageArtifacts, bank, concept: int, forget: int, test_labels: np.ndarray) -> None:
  cfg, ds = ctx.config.attribution, art.dataset
  idx = np.flatnonzero(test_labels == forget)[:cfg.saliency_images]
  images = read_arrays(ds.split("test"), idx, keys=("image",))["image"]
  graphdef, params = art.trained()
  maps = concept_saliency(nnx.merge(graphdef, params), images, bank.vectors[concept], float(bank.intercepts[concept]),
                          ctx.config.data, n_steps=cfg.saliency_steps, mesh=ctx.mesh, memory_gib=cfg.memory_gib)
  art.save_attribution({"saliency_maps": maps})
  if ctx.primary:
    plots.saliency_overlays(images, maps, [f"test #{i}" for i in idx], art.dir("attribute") / "saliency.png",
                            suptitle=f"where '{bank.names[concept]}' lives in '{ds.class_names[forget]}' images (IG)")


@stage("attribute", config_keys=("forget_class", "attribution"), validate=validate)
def run(ctx: Context) -> dict:
  cfg, art = ctx.config.attribution, ImageArtifacts(ctx)
  ds, forget, bank = art.dataset, art.forget, art.bank()
  weight, bias = art.head()
  train, test = art.embeddings("train"), art.embeddings("test")
  scores = art.concept_scores(bank, "train")
  ranks, top, presence = importance.rank_concepts(weight, bias, scores, train["label"], ds.num_classes,
                                                  ranking=cfg.ranking, baseline=cfg.baseline, n_steps=cfg.n_steps,
                                                  method=cfg.method, top_k=cfg.top_k)
  ig, ig_signed, ig_delta, ranked = ranks.ig, ranks.ig_signed, ranks.ig_delta, ranks.of(cfg.ranking)
  donor, donor_scores = importance.donor_class(presence, top[forget], forget)
  donor_of = np.asarray([importance.donor_class(presence, top[c], c)[0] for c in range(ds.num_classes)])
  key = [int(j) for j in top[forget]]
  result = {
      "forget_class": {"index": forget, "name": ds.class_names[forget]},
      "ranking": cfg.ranking,
      "key_concepts": [{"name": bank.names[j], "ig": float(ig[forget, j]), "weight": float(weight[forget, j])}
                       for j in key],
      "donor": {"index": donor, "name": ds.class_names[donor], "score": float(donor_scores[donor]),
                "rule": "the other class whose images show the key concepts most (summed standardised "
                        "mean concept scores; cu_jax.concepts.importance)"},
      "confusion_forget_donor_test": importance.confusion_between(test["logits"], test["label"], forget, donor),
      "ig_mean_abs_delta": ig_delta,
      "per_class": {ds.class_names[c]: [{"name": bank.names[j], "ig": float(ig[c, j]), "weight": float(weight[c, j])}
                                        for j in importance.top_concepts(ranked, min(5, len(bank)))[c]]
                    for c in range(ds.num_classes)},
      "donor_of_each_class": {ds.class_names[c]: ds.class_names[d] for c, d in enumerate(donor_of)},
  }
  truth = _ground_truth(ds, bank, top, donor_of)
  if truth:
    result["ground_truth"] = truth
  art.write_json(art.concepts_file, result)
  art.save_attribution({"importance_ig": ig, "importance_ig_signed": ig_signed, "presence": presence})
  if ctx.primary:
    plots.concept_importance_bars(
        bank.names, {"IG of log p(class)": ig[forget], "PCBM weight": weight[forget]},
        f"concepts of '{ds.class_names[forget]}' (key: {', '.join(bank.names[j] for j in key)}; "
        f"donor: '{ds.class_names[donor]}')", art.dir("attribute") / "forget_concepts.png", highlight=key)
  if BANK_KINDS.get(bank.kind).on_model_embeddings and cfg.saliency_images:
    _saliency(ctx, art, bank, key[0], forget, test["label"])
  logging.info("attribute: key concepts of %r: %s; donor %r", ds.class_names[forget],
               [bank.names[j] for j in key], ds.class_names[donor])
  summary = {k: result[k] for k in ("forget_class", "key_concepts", "donor", "confusion_forget_donor_test")}
  if truth:
    summary["ground_truth"] = {k: truth[k] for k in ("precision_at_k", "donor_shares_concepts")}
  return summary

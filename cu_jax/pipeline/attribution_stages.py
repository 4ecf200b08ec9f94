"""Stages `pcbm` and `attribute`: the concept bottleneck head, then what the forget class means.

`pcbm` fits the elastic-net head on the cached concept scores of the train split.
`attribute` ranks every class's concepts (PCBM weights and IG of the class log-probability),
picks the forget class's key concepts and its donor class, maps where the top key concept lives
in a few forget images (input-space IG through backbone -> projection), and writes
`attribute/concepts.json` with two plots.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from safetensors.numpy import load_file, save_file

from cu_jax.attribution.ig import integrated_gradients
from cu_jax.concepts import importance, pcbm
from cu_jax.data.datasets import read_arrays
from cu_jax.data.preprocess import preprocess
from cu_jax.evaluation import plots
from cu_jax.pipeline.concept_stages import bank_embeddings, load_bank, load_embeddings
from cu_jax.pipeline.runner import Context, stage
from cu_jax.pipeline.train_stage import load_trained
from cu_jax.utils.errors import UserError
from cu_jax.utils.progress import write_json


def concept_scores(ctx: Context, bank, split: str) -> np.ndarray:
  return np.asarray(pcbm.project(bank_embeddings(ctx, bank, split), bank.vectors, bank.intercepts))


@stage("pcbm", config_keys=("pcbm",))
def run_pcbm(ctx: Context) -> dict:
  cfg, out_dir = ctx.config.pcbm, ctx.stage_dir("pcbm")
  bank = load_bank(ctx)
  train, test = load_embeddings(ctx, "train"), load_embeddings(ctx, "test")
  s_train, s_test = concept_scores(ctx, bank, "train"), concept_scores(ctx, bank, "test")
  k = ctx.dataset.num_classes
  head = pcbm.fit_elastic_net(s_train, train["label"], k, lam=cfg.lam, l1_ratio=cfg.l1_ratio,
                              max_iter=cfg.max_iter, tol=cfg.tol)
  weight, bias = np.asarray(head.weight), np.asarray(head.bias)
  if ctx.primary:
    save_file({"weight": weight, "bias": bias}, str(out_dir / "head.safetensors"))
  pred_train = np.asarray(pcbm.predict(head, s_train))
  pred_test = np.asarray(pcbm.predict(head, s_test))
  summary = {
      "train_accuracy": float((pred_train == train["label"]).mean()),
      "test_accuracy": float((pred_test == test["label"]).mean()),
      "model_test_accuracy": float((test["logits"].argmax(-1) == test["label"]).mean()),
      "agreement_with_model_test": float((pred_test == test["logits"].argmax(-1)).mean()),
      "zero_weight_fraction": float((weight == 0).mean()),
      "num_concepts": len(bank),
      "solver": {k_: (v.item() if hasattr(v, "item") else v) for k_, v in head.info.items()},
  }
  logging.info("pcbm: test accuracy %.4f (model %.4f), %.1f%% zero weights", summary["test_accuracy"],
               summary["model_test_accuracy"], 100 * summary["zero_weight_fraction"])
  return summary


def load_head(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
  arrays = load_file(str(ctx.stage_dir("pcbm") / "head.safetensors"))
  return arrays["weight"], arrays["bias"]


def forget_class_index(ctx: Context) -> int:
  return ctx.dataset.class_index(ctx.config.forget_class)


def validate_attribute(ctx: Context) -> None:
  forget_class_index(ctx)
  cfg = ctx.config.attribution
  if cfg.ranking not in ("ig", "weight"):
    raise UserError(f"unknown attribution.ranking {cfg.ranking!r}; valid: 'ig', 'weight'")
  if cfg.baseline not in ("zeros", "mean"):
    raise UserError(f"unknown attribution.baseline {cfg.baseline!r}; valid: 'zeros', 'mean'")
  if not 1 <= cfg.top_k:
    raise UserError(f"attribution.top_k={cfg.top_k} must be at least 1")


def input_saliency(ctx: Context, bank, concept: int, indices: np.ndarray, n_steps: int, *,
                   split: str = "test", chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8, (n, H, W) maps): IG of concept score s_j(x) w.r.t. the pixels, black baseline.

  The path runs through the whole backbone: preprocess -> ViT embedding -> concept projection.
  Only meaningful for banks on the model's own embeddings (CAV). Images go through in chunks of
  `chunk` (each expands to `chunk * n_steps` forward/backward passes).
  """
  graphdef, params = load_trained(ctx)
  model = nnx.merge(graphdef, params)
  v, b = jnp.asarray(bank.vectors[concept]), float(bank.intercepts[concept])
  norm = jnp.linalg.norm(v)

  def score(x):
    return (model.embed(x) @ v + b) / norm

  images = read_arrays(ctx.dataset.split(split), indices, keys=("image",))["image"]
  black = preprocess(jnp.zeros_like(jnp.asarray(images[:1])), ctx.config.data)
  ig = jax.jit(lambda xs: integrated_gradients(score, preprocess(xs, ctx.config.data), black,
                                               n_steps=n_steps).attributions.sum(-1))
  maps = [np.asarray(ig(jnp.asarray(images[i:i + chunk]))) for i in range(0, len(images), chunk)]
  return images, np.concatenate(maps) if maps else np.zeros(images.shape[:3], np.float32)


def _ground_truth(ctx: Context, bank, per_class_top: np.ndarray, donor_of: np.ndarray) -> dict | None:
  """precision@k and donor correctness against a dataset's true class -> concepts (synthetic)."""
  truth = ctx.dataset.metadata.get("class_concepts")
  names = ctx.dataset.metadata.get("concepts")
  if not truth or not names:
    return None
  true_sets = [{names[i] for i in concepts} for concepts in truth]
  precision = [len({bank.names[j] for j in top} & true_sets[c]) / len(top) for c, top in enumerate(per_class_top)]
  donor_ok = [bool(true_sets[c] & true_sets[d]) for c, d in enumerate(donor_of)]
  return {"precision_at_k": float(np.mean(precision)), "per_class_precision": precision,
          "donor_shares_concepts": float(np.mean(donor_ok)), "per_class_donor_ok": donor_ok}


@stage("attribute", config_keys=("forget_class", "attribution"), validate=validate_attribute)
def run_attribute(ctx: Context) -> dict:
  cfg, out_dir, ds = ctx.config.attribution, ctx.stage_dir("attribute"), ctx.dataset
  forget = forget_class_index(ctx)
  bank = load_bank(ctx)
  weight, bias = load_head(ctx)
  train, test = load_embeddings(ctx, "train"), load_embeddings(ctx, "test")
  scores = concept_scores(ctx, bank, "train")
  ig, ig_signed, ig_delta = importance.concept_ig(weight, bias, scores, train["label"], baseline=cfg.baseline,
                                                  n_steps=cfg.n_steps, method=cfg.method)
  imp = importance.Importance(weight=weight, ig=ig, ig_signed=ig_signed, ig_delta=ig_delta)
  ranked = imp.of(cfg.ranking)
  k = min(cfg.top_k, len(bank))
  top = importance.top_concepts(ranked, k)
  presence = importance.concept_presence(scores, train["label"], ds.num_classes)
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
  truth = _ground_truth(ctx, bank, top, donor_of)
  if truth:
    result["ground_truth"] = truth
  write_json(out_dir / "concepts.json", result)
  if ctx.primary:
    for name, values in (("importance_ig", ig), ("importance_ig_signed", ig_signed), ("presence", presence)):
      np.save(out_dir / f"{name}.npy", values, allow_pickle=False)
    plots.concept_importance_bars(
        bank.names, {"IG of log p(class)": ig[forget], "PCBM weight": weight[forget]},
        f"concepts of '{ds.class_names[forget]}' (key: {', '.join(bank.names[j] for j in key)}; "
        f"donor: '{ds.class_names[donor]}')", out_dir / "forget_concepts.png", highlight=key)
  if bank.kind == "cav" and cfg.saliency_images:
    idx = np.flatnonzero(test["label"] == forget)[:cfg.saliency_images]
    images, maps = input_saliency(ctx, bank, key[0], idx, cfg.saliency_steps)
    if ctx.primary:
      np.save(out_dir / "saliency_maps.npy", maps, allow_pickle=False)
      plots.saliency_overlays(images, maps, [f"test #{i}" for i in idx], out_dir / "saliency.png",
                              suptitle=f"where '{bank.names[key[0]]}' lives in '{ds.class_names[forget]}' images (IG)")
  logging.info("attribute: key concepts of %r: %s; donor %r", ds.class_names[forget],
               [bank.names[j] for j in key], ds.class_names[donor])
  summary = {k_: result[k_] for k_ in ("forget_class", "key_concepts", "donor", "confusion_forget_donor_test")}
  if truth:
    summary["ground_truth"] = {k_: truth[k_] for k_ in ("precision_at_k", "donor_shares_concepts")}
  return summary


def load_concepts(ctx: Context) -> dict:
  return json.loads((ctx.stage_dir("attribute") / "concepts.json").read_text())


def key_concept_indices(ctx: Context, bank) -> list[int]:
  """Positions in `bank` of the forget class's key concepts (from `attribute/concepts.json`)."""
  names = list(bank.names)
  return [names.index(c["name"]) for c in load_concepts(ctx)["key_concepts"]]

"""Stage `poison`: the forget class's training samples with poisoned labels (and images).

Writes the arrays of `ImageArtifacts.poisoned` under `poison/` (forget indices, poisoned images,
hard labels, target distributions, the retained indices of the fine-tuning set) and a plot of a
few clean / poisoned pairs. What a strategy needs (a donor class, donor scores, key-concept maps)
is declared where it is registered (`cu_jax.unlearning.poison`) and checked before anything runs.
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging
from flax import nnx

from cu_jax.attribution.saliency import concept_saliency
from cu_jax.concepts import pcbm
from cu_jax.concepts.bank import BANK_KINDS
from cu_jax.concepts.importance import donor_class
from cu_jax.data.datasets import read_arrays
from cu_jax.evaluation import plots
from cu_jax.pipeline.artifacts import ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.unlearning import poison
from cu_jax.utils.errors import UserError

CONCEPT_HEADS = ("drop_row", "refit")  # poison.concept_head


def _before(ctx: Context, art: ImageArtifacts, stage: str) -> bool:
  """Whether `stage` runs before this one or has run in the workdir."""
  stages = ctx.config.stages
  return (stage in stages and stages.index(stage) < stages.index("poison")) or art.done(stage) is not None


def validate(ctx: Context) -> None:
  cfg, art = ctx.config.poison, ImageArtifacts(ctx)
  forget = art.forget
  poison.check_needs(cfg.labels, cfg.images, inferred=_before(ctx, art, "attribute"), donor_given=cfg.donor != "",
                     on_model_embeddings=BANK_KINDS.get(ctx.config.concepts.bank, "concepts.bank").on_model_embeddings,
                     embedded=_before(ctx, art, "embed"))
  if cfg.concept_head not in CONCEPT_HEADS:
    raise UserError(f"unknown poison.concept_head {cfg.concept_head!r}; valid: {', '.join(map(repr, CONCEPT_HEADS))}")
  if cfg.donor != "" and art.dataset.class_index(cfg.donor) == forget:
    raise UserError(f"poison.donor={cfg.donor!r} is the forget class itself; pick another class")
  poison.split_forget(art.train_labels(), forget, half=cfg.half, seed=cfg.seed)


def _donor(ctx: Context, art: ImageArtifacts) -> tuple[int | None, np.ndarray | None, list[int]]:
  """(donor class, per-class donor scores, key concept indices) from concept inference, or the
  configured donor (`poison.donor` wins over the inferred one)."""
  cfg = ctx.config.poison
  donor, scores, key = None, None, []
  if art.concepts() is not None:
    key = art.key_concepts(art.bank())
    donor, scores = donor_class(art.presence(), np.asarray(key), art.forget)
  if cfg.donor != "":
    donor = art.dataset.class_index(cfg.donor)
  return donor, scores, key


def _image_spec(ctx: Context, art: ImageArtifacts, labels: np.ndarray, donor: int, key: list[int],
                forget_images: np.ndarray) -> poison.ImageSpec:
  cfg, train = ctx.config.poison, art.dataset.split("train")
  donor_idx = np.flatnonzero(labels == donor)
  donor_idx = np.random.default_rng([cfg.seed, 5]).choice(donor_idx, min(cfg.donor_pool, len(donor_idx)),
                                                           replace=False)
  spec = poison.ImageSpec(read_arrays(train, np.sort(donor_idx), keys=("image",))["image"], patch_size=cfg.patch_size)
  if "saliency" in poison.IMAGES.get(cfg.images).needs:
    bank = art.bank()
    graphdef, params = art.trained()
    model = nnx.merge(graphdef, params)
    t0 = time.perf_counter()
    spec.forget_maps, spec.donor_maps = (
        concept_saliency(model, x, bank.vectors[key[0]], float(bank.intercepts[key[0]]), ctx.config.data,
                         n_steps=cfg.saliency_steps, mesh=ctx.mesh, memory_gib=ctx.config.attribution.memory_gib)
        for x in (forget_images, spec.donor_images))
    logging.info("poison: key-concept maps of %d forget + %d donor images in %.0f s", len(forget_images),
                 len(donor_idx), time.perf_counter() - t0)
  return spec


def _concept_logits(ctx: Context, art: ImageArtifacts, labels: np.ndarray, forget_idx: np.ndarray) -> np.ndarray:
  """(n, K) logits of a concept bottleneck head on the forget samples' concept scores; the caller
  drops the forget class. `poison.concept_head`: "drop_row", the fitted PCBM head (its forget row
  is dropped with the class), or "refit", an elastic-net head fitted again on the retained
  classes' train samples only, as a PCBM of a model that never saw the class would be."""
  bank = art.bank()
  scores = art.concept_scores(bank, "train")
  if ctx.config.poison.concept_head == "drop_row":
    weight, bias = art.head()
  else:
    cfg, forget = ctx.config.pcbm, art.forget
    keep = labels != forget
    head = pcbm.fit_elastic_net(scores[keep], labels[keep], art.dataset.num_classes, lam=cfg.lam,
                                l1_ratio=cfg.l1_ratio, max_iter=cfg.max_iter, tol=cfg.tol)
    weight, bias = np.asarray(head.weight), np.asarray(head.bias)
  return scores[forget_idx] @ weight.T + bias


@stage("poison", config_keys=("poison",), validate=validate)
def run(ctx: Context) -> dict:
  cfg, art = ctx.config.poison, ImageArtifacts(ctx)
  ds, forget = art.dataset, art.forget
  labels = art.train_labels()
  forget_idx, retain_idx = poison.split_forget(labels, forget, half=cfg.half, seed=cfg.seed)
  images = read_arrays(ds.split("train"), forget_idx, keys=("image",))["image"]
  donor, scores, key = _donor(ctx, art)
  needs = poison.LABELS.get(cfg.labels).needs
  spec = poison.LabelSpec(
      ds.num_classes, forget, donor=donor, donor_scores=scores, exclude_forget=cfg.exclude_forget,
      temperature=cfg.soft_temperature, target_temperature=cfg.target_temperature,
      model_logits=art.embeddings("train")["logits"][forget_idx] if "model_logits" in needs else None,
      concept_logits=_concept_logits(ctx, art, labels, forget_idx) if "concept_logits" in needs else None)
  image_spec = _image_spec(ctx, art, labels, donor, key, images) if poison.IMAGES.get(cfg.images).needs else None
  poisoned, hard, target = poison.poison(images, spec, cfg.labels, cfg.images, image_spec, seed=cfg.seed)
  art.save_poisoned({"index": forget_idx, "image": poisoned, "label": hard, "target": target,
                     "retain_index": retain_idx})
  if ctx.primary:
    n = min(8, len(images))
    plots.image_rows({"clean": images[:n], "poisoned": poisoned[:n]},
                     [f"#{i} -> {ds.class_names[h]}" for i, h in zip(forget_idx[:n], hard[:n])],
                     art.dir("poison") / "poisoned.png", suptitle=f"poisoned '{ds.class_names[forget]}' samples "
                     f"(labels {cfg.labels}, images {cfg.images})")
  counts = np.bincount(hard, minlength=ds.num_classes)
  summary = {"forget_class": {"index": forget, "name": ds.class_names[forget]},
             "donor": None if donor is None else {"index": donor, "name": ds.class_names[donor]},
             "labels": cfg.labels, "images": cfg.images, "half": cfg.half,
             "num_forget": int(len(forget_idx)), "num_retain": int(len(retain_idx)),
             "label_counts": {ds.class_names[c]: int(n) for c, n in enumerate(counts) if n},
             "mean_target": [round(float(x), 4) for x in target.mean(0)]}
  logging.info("poison: %d '%s' samples -> %s (images: %s)", len(forget_idx), ds.class_names[forget],
               summary["label_counts"], cfg.images)
  return summary

"""Stages `retrain`, `poison` and `unlearn`.

`retrain`  the reference: the base recipe (train/optim sections, same seed and initialisation) on
           the retained classes only; writes `retrain/model.safetensors`.
`poison`   the forget class's training samples with poisoned labels (and images): written as
           arrays under `poison/` (index, image, label, target, retain_index), read back by
           `load_poisoned` as a dataset the loader reads like any other.
`unlearn`  fine-tunes the original model with `unlearn.method` and each of `unlearn.baselines`,
           one after the other, each in `unlearn/<method>/` with its own checkpoints (an
           interrupted run resumes inside the method it stopped in, and skips finished ones);
           each writes `model.safetensors` and `summary.json`.

`retrain` sits right after `pcbm` in the default order: a stage's fingerprint covers the config
of the stages before it, so placed there, changing `poison`, `unlearn` or `attribution` settings
never throws away the (expensive) retrained model.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from cu_jax.data.datasets import ArraySource, read_arrays
from cu_jax.data.loader import eval_batches
from cu_jax.data.preprocess import preprocess
from cu_jax.parallel.checkpoint import load_params, save_params
from cu_jax.parallel.mesh import check_global_batch, data_sharded, replicated
from cu_jax.pipeline.attribution_stages import forget_class_index, key_concept_indices
from cu_jax.pipeline.runner import Context, stage
from cu_jax.pipeline.train_stage import build, load_trained
from cu_jax.training import optim, trainer
from cu_jax.unlearning import methods, poison
from cu_jax.utils.errors import UserError
from cu_jax.utils.progress import write_json

POISON_ARRAYS = ("index", "image", "label", "target", "retain_index")


def train_labels(ctx: Context) -> np.ndarray:
  cached = ctx.stage_dir("embed") / "train_label.npy"
  if cached.exists():
    return np.load(cached, allow_pickle=False)
  return read_arrays(ctx.dataset.split("train"), keys=("label",))["label"].astype(np.int64)


def unlearn_data_cfg(ctx: Context):
  """The data section for fine-tuning: augmentation off unless `unlearn.augment` (a poison patch
  stays where it was pasted; SCRUB's teacher logits are those of the unaugmented images)."""
  data_cfg = ctx.config.data.copy_and_resolve_references()
  if not ctx.config.unlearn.augment:
    with data_cfg.unlocked():
      data_cfg.augment.crop_pad, data_cfg.augment.flip = 0, False
  return data_cfg


# ---------------------------------------------------------------------------------------- retrain

def validate_retrain(ctx: Context) -> None:
  forget_class_index(ctx)
  check_global_batch(ctx.config.train.batch_size, ctx.mesh)


@stage("retrain", config_keys=("forget_class",), validate=validate_retrain)
def run_retrain(ctx: Context) -> dict:
  cfg, out = ctx.config, ctx.stage_dir("retrain")
  forget = forget_class_index(ctx)
  labels = train_labels(ctx)
  keep = np.flatnonzero(labels != forget)
  images = read_arrays(ctx.dataset.split("train"), keep, keys=("image",))["image"]
  data = methods.UnlearnData(num_classes=ctx.dataset.num_classes, forget=forget, retain_image=images,
                             retain_label=labels[keep], forget_image=images[:0], poison_image=images[:0],
                             poison_target=np.zeros((0, ctx.dataset.num_classes), np.float32), seed=cfg.seed)
  plan = methods.METHODS.get("retrain")(data, cfg.unlearn)
  if cfg.train.label_smoothing:  # the base recipe, exactly
    k, a = ctx.dataset.num_classes, cfg.train.label_smoothing
    plan.columns["target"] = plan.columns["target"] * (1 - a) + a / k
  result = trainer.train(build(ctx), ArraySource(**plan.columns), train_cfg=cfg.train, optim_cfg=cfg.optim,
                         data_cfg=cfg.data, mesh=ctx.mesh, checkpoint_dir=out / "checkpoints", seed=cfg.seed,
                         loss_fn=methods.unlearning_loss(cfg.unlearn.ascent_cap),
                         metrics_path=out / "metrics.jsonl", name="retrain", keys=tuple(plan.columns))
  if ctx.primary:
    save_params(result.state["params"], out / "model.safetensors")
  logging.info("retrain: %d steps on %d retained examples (class %d never seen) in %.0f s",
               result.total_steps, len(keep), forget, result.wall_s)
  return {"steps": result.total_steps, "num_examples": int(len(keep)), "forget_examples_seen": 0,
          "train_wall_s": result.wall_s, "train_examples_per_s": result.examples_per_s,
          "resumed_from_step": result.resumed_from}


def load_retrained(ctx: Context):
  """(graphdef, params) of the retrained model."""
  model = build(ctx)
  load_params(model, ctx.stage_dir("retrain") / "model.safetensors")
  return nnx.split(model, nnx.Param)


# ----------------------------------------------------------------------------------------- poison

def _donor(ctx: Context) -> tuple[int | None, np.ndarray | None, list[int]]:
  """(donor class, per-class donor scores, key concept indices) from concept inference, or the
  configured donor."""
  cfg = ctx.config.poison
  donor, scores, key = None, None, []
  if (ctx.stage_dir("attribute") / "concepts.json").exists():
    from cu_jax.concepts.importance import donor_class
    from cu_jax.pipeline.concept_stages import load_bank
    key = key_concept_indices(ctx, load_bank(ctx))
    presence = np.load(ctx.stage_dir("attribute") / "presence.npy", allow_pickle=False)
    donor, scores = donor_class(presence, np.asarray(key), forget_class_index(ctx))
  if cfg.donor != "":  # (validate_poison refused the forget class itself)
    donor = ctx.dataset.class_index(cfg.donor)
  return donor, scores, key


def validate_poison(ctx: Context) -> None:
  cfg = ctx.config.poison
  forget = forget_class_index(ctx)
  poison.LABELS.get(cfg.labels, "poison.labels")
  poison.IMAGES.get(cfg.images, "poison.images")
  will_attribute = "attribute" in ctx.config.stages and ctx.config.stages.index("attribute") < ctx.config.stages.index("poison")
  inferred = will_attribute or (ctx.stage_dir("attribute") / "done.json").exists()
  if cfg.labels in ("targeted", "soft") and not inferred and (cfg.labels == "soft" or cfg.donor == ""):
    raise UserError(f"poison.labels={cfg.labels!r} needs a donor class from concept inference, but no "
                    "'attribute' stage runs before 'poison'; add it to --config.stages"
                    + (" or set --config.poison.donor=<class>" if cfg.labels == "targeted" else ""))
  if cfg.images != "none" and (cfg.donor == "" and not inferred):
    raise UserError(f"poison.images={cfg.images!r} pastes donor-class pixels but there is no donor: run "
                    "the 'attribute' stage first or set --config.poison.donor=<class>")
  if cfg.images == "localized" and not inferred:
    raise UserError("poison.images='localized' needs the key concept from the 'attribute' stage")
  if cfg.donor != "" and ctx.dataset.class_index(cfg.donor) == forget:
    raise UserError(f"poison.donor={cfg.donor!r} is the forget class itself; pick another class")
  if cfg.patch_size < 1:
    raise UserError(f"poison.patch_size={cfg.patch_size} must be at least 1")
  poison.split_forget(train_labels(ctx), forget, half=cfg.half, seed=cfg.seed)


@stage("poison", config_keys=("poison",), validate=validate_poison)
def run_poison(ctx: Context) -> dict:
  cfg, out, ds = ctx.config.poison, ctx.stage_dir("poison"), ctx.dataset
  forget = forget_class_index(ctx)
  labels = train_labels(ctx)
  forget_idx, retain_idx = poison.split_forget(labels, forget, half=cfg.half, seed=cfg.seed)
  images = read_arrays(ds.split("train"), forget_idx, keys=("image",))["image"]
  donor, scores, key = _donor(ctx)
  spec = poison.LabelSpec(ds.num_classes, forget, donor=donor, donor_scores=scores,
                          exclude_forget=cfg.exclude_forget, temperature=cfg.soft_temperature)
  image_spec = None
  if cfg.images != "none":
    donor_idx = np.flatnonzero(labels == donor)
    donor_idx = np.random.default_rng([cfg.seed, 5]).choice(donor_idx, min(cfg.donor_pool, len(donor_idx)),
                                                             replace=False)
    image_spec = poison.ImageSpec(read_arrays(ds.split("train"), np.sort(donor_idx), keys=("image",))["image"],
                                  patch_size=cfg.patch_size)
    if cfg.images == "localized":
      from cu_jax.pipeline.attribution_stages import input_saliency
      from cu_jax.pipeline.concept_stages import load_bank
      bank = load_bank(ctx)
      t0 = time.perf_counter()
      _, image_spec.forget_maps = input_saliency(ctx, bank, key[0], forget_idx, cfg.saliency_steps, split="train")
      _, image_spec.donor_maps = input_saliency(ctx, bank, key[0], np.sort(donor_idx), cfg.saliency_steps,
                                                split="train")
      logging.info("poison: key-concept maps of %d forget + %d donor images in %.0f s", len(forget_idx),
                   len(donor_idx), time.perf_counter() - t0)
  poisoned, hard, target = poison.poison(images, spec, cfg.labels, cfg.images, image_spec, seed=cfg.seed)
  if ctx.primary:
    arrays = {"index": forget_idx, "image": poisoned, "label": hard, "target": target, "retain_index": retain_idx}
    for name, value in arrays.items():
      np.save(out / f"{name}.npy", value, allow_pickle=False)
    from cu_jax.evaluation import plots
    n = min(8, len(images))
    plots.image_rows({"clean": images[:n], "poisoned": poisoned[:n]},
                     [f"#{i} -> {ds.class_names[h]}" for i, h in zip(forget_idx[:n], hard[:n])],
                     out / "poisoned.png", suptitle=f"poisoned '{ds.class_names[forget]}' samples "
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


def load_poisoned(ctx: Context) -> dict[str, np.ndarray]:
  """The poison stage's arrays (memory-mapped; no pickle)."""
  folder = ctx.stage_dir("poison")
  return {k: np.load(folder / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in POISON_ARRAYS}


# ---------------------------------------------------------------------------------------- unlearn

def method_names(cfg) -> list[str]:
  return [cfg.unlearn.method] + [m for m in cfg.unlearn.baselines if m != cfg.unlearn.method]


def validate_unlearn(ctx: Context) -> None:
  cfg = ctx.config.unlearn
  for name in method_names(ctx.config):
    methods.METHODS.get(name, "unlearn.method" if name == cfg.method else "unlearn.baselines")
    if name == "retrain":
      raise UserError("'retrain' is its own stage (listed in --config.stages), not an unlearn.method or "
                      "baseline; remove it from unlearn.baselines")
  if cfg.scope not in ("full", "head"):
    raise UserError(f"unknown unlearn.scope {cfg.scope!r}; valid: 'full', 'head'")
  if not 0.0 <= cfg.salun_sparsity < 1.0:
    raise UserError(f"unlearn.salun_sparsity={cfg.salun_sparsity} must be in [0, 1)")
  optim.OPTIMIZERS.get(cfg.optim.name, "unlearn.optim.name")
  check_global_batch(cfg.train.batch_size, ctx.mesh, "unlearn.train.batch_size")


def forget_gradient(graphdef, params, images: np.ndarray, labels: np.ndarray, data_cfg, mesh,
                    batch_size: int):
  """|gradient| of the summed cross-entropy of (images, labels) w.r.t. the parameters (SalUn)."""
  def grad_fn(params, batch):
    def loss(p):
      logits = nnx.merge(graphdef, p)(preprocess(batch["image"], data_cfg))
      ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], -1)[:, 0]
      return (ce * batch["mask"]).sum()
    return jax.grad(loss)(params)

  step = jax.jit(grad_fn, in_shardings=(replicated(mesh), data_sharded(mesh)), out_shardings=replicated(mesh))
  total = jax.tree.map(jnp.zeros_like, params)
  source = ArraySource(image=images, label=labels.astype(np.int32))
  for batch in eval_batches(source, global_batch=batch_size, mesh=mesh, keys=("image", "label")):
    total = jax.tree.map(jnp.add, total, step(params, batch))
  return jax.tree.map(jnp.abs, total)


def unlearn_one(ctx: Context, name: str, data: methods.UnlearnData, graphdef, params, out: pathlib.Path) -> dict:
  cfg = ctx.config.unlearn
  t0 = time.perf_counter()
  data_cfg = unlearn_data_cfg(ctx)
  plan = methods.METHODS.get(name)(data, cfg)
  model = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))  # the train step donates its state
  mask = methods.head_mask(params) if cfg.scope == "head" else None
  if plan.saliency_mask:
    grads = forget_gradient(graphdef, params, data.forget_image, np.full(len(data.forget_image), data.forget),
                            data_cfg, ctx.mesh, cfg.train.batch_size)
    if mask is not None:
      grads = jax.tree.map(jnp.multiply, grads, mask)
    mask = methods.saliency_mask(grads, cfg.salun_sparsity)
  # (before training: the train step donates its state, and the mask lives in it)
  trained = None if mask is None else sum(float(m.sum()) for m in jax.tree.leaves(mask)) / trainer.param_count(params)
  result = trainer.train(model, ArraySource(**plan.columns), train_cfg=cfg.train, optim_cfg=cfg.optim,
                         data_cfg=data_cfg, mesh=ctx.mesh, checkpoint_dir=out / "checkpoints",
                         seed=ctx.config.seed, loss_fn=methods.unlearning_loss(cfg.ascent_cap),
                         metrics_path=out / "metrics.jsonl", name=f"unlearn {name}", keys=tuple(plan.columns),
                         update_mask=mask)
  if ctx.primary:
    save_params(result.state["params"], out / "model.safetensors")
  summary = {"method": name, "steps": result.total_steps, "num_examples": len(plan),
             "scope": cfg.scope, "wall_s": time.perf_counter() - t0, "train_wall_s": result.wall_s,
             "train_examples_per_s": result.examples_per_s, "resumed_from_step": result.resumed_from}
  if trained is not None:
    summary["trained_fraction"] = trained
  write_json(out / "summary.json", summary)
  return summary


@stage("unlearn", config_keys=("unlearn",), validate=validate_unlearn)
def run_unlearn(ctx: Context) -> dict:
  from cu_jax.pipeline.concept_stages import load_embeddings
  cfg, ds = ctx.config, ctx.dataset
  forget = forget_class_index(ctx)
  p = load_poisoned(ctx)
  source = ds.split("train")
  retain = read_arrays(source, np.asarray(p["retain_index"]))
  teacher = load_embeddings(ctx, "train")["logits"]
  data = methods.UnlearnData(
      num_classes=ds.num_classes, forget=forget, retain_image=retain["image"],
      retain_label=retain["label"].astype(np.int64),
      forget_image=read_arrays(source, np.asarray(p["index"]), keys=("image",))["image"],
      poison_image=np.asarray(p["image"]), poison_target=np.asarray(p["target"]),
      retain_teacher=teacher[p["retain_index"]], forget_teacher=teacher[p["index"]], seed=cfg.seed)
  graphdef, params = load_trained(ctx)
  summary = {}
  for name in method_names(cfg):
    out = ctx.stage_dir("unlearn") / name
    if (out / "summary.json").exists() and (out / "model.safetensors").exists():
      summary[name] = json.loads((out / "summary.json").read_text())
      logging.info("unlearn %s: done already, skipped", name)
      continue
    summary[name] = unlearn_one(ctx, name, data, graphdef, params, out)
    logging.info("unlearn %s: %d steps in %.1f s", name, summary[name]["steps"], summary[name]["wall_s"])
  return {"methods": summary}


def load_unlearned(ctx: Context, name: str):
  model = build(ctx)
  load_params(model, ctx.stage_dir("unlearn") / name / "model.safetensors")
  return nnx.split(model, nnx.Param)

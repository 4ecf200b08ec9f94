"""Stages `embed` and `concepts`: cached embeddings of the trained model, and the concept bank.

`embed` runs the backbone once (sharded, jitted) over the train and test splits and caches
pre-logits embeddings, logits and labels as .npy files; every later concept stage reads the cache.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from cu_jax.concepts import cav
from cu_jax.concepts.bank import ConceptBank
from cu_jax.concepts.sources import CONCEPT_SOURCES, load_concept_list
from cu_jax.data.datasets import read_arrays
from cu_jax.pipeline.runner import Context, stage
from cu_jax.pipeline.train_stage import load_trained
from cu_jax.training import evaluate, steps
from cu_jax.utils.errors import UserError

SPLITS = ("train", "test")


def load_embeddings(ctx: Context, split: str) -> dict[str, np.ndarray]:
  """{"embed", "logits", "label"} of a split from the `embed` stage's cache (no pickle)."""
  folder = ctx.stage_dir("embed")
  return {k: np.load(folder / f"{split}_{k}.npy", allow_pickle=False) for k in ("embed", "logits", "label")}


@stage("embed", config_keys=())
def run_embed(ctx: Context) -> dict:
  graphdef, params = load_trained(ctx)
  predict_step = steps.make_predict_step(graphdef, ctx.config.data, ctx.mesh, output="both")
  out_dir, summary = ctx.stage_dir("embed"), {}
  for split in SPLITS:
    source = ctx.dataset.split(split)
    out = evaluate.predict(predict_step, params, source, global_batch=ctx.config.train.eval_batch_size,
                           mesh=ctx.mesh)
    out["label"] = read_arrays(source, keys=("label",))["label"].astype(np.int64)
    for k, v in out.items():
      if ctx.primary:
        np.save(out_dir / f"{split}_{k}.npy", v, allow_pickle=False)
    accuracy = float((out["logits"].argmax(-1) == out["label"]).mean())
    summary[split] = {"num_examples": int(len(out["label"])), "dim": int(out["embed"].shape[1]), "accuracy": accuracy}
    logging.info("embed: %s %d x %d, model accuracy %.4f", split, len(v), out["embed"].shape[1], accuracy)
  return summary


def _cav_options(cfg) -> cav.CAVOptions:
  return cav.CAVOptions(n_per_side=cfg.n_per_side, n_heldout=cfg.n_heldout, cs=tuple(cfg.cs),
                        min_accuracy=cfg.min_accuracy, seed=cfg.seed)


def validate_concepts(ctx: Context) -> None:
  cfg = ctx.config.concepts
  if cfg.bank == "text":
    from cu_jax.models.hf_clip import read_hf_clip_config
    if not cfg.clip_dir:
      raise UserError("concepts.bank='text' needs a CLIP checkpoint folder: set --config.concepts.clip_dir")
    read_hf_clip_config(cfg.clip_dir)
    load_concept_list(ctx.dataset, cfg.file)
  elif cfg.bank == "cav":
    # reads and checks the concept source against the dataset's classes, without any labels
    CONCEPT_SOURCES.get(cfg.source, "concepts.source")(ctx.dataset, cfg, np.zeros(0, np.int64))
  else:
    raise UserError(f"unknown concepts.bank {cfg.bank!r}; valid: 'cav', 'text'")


def _text_bank(ctx: Context) -> dict:
  """CLIP text bank; CLIP image features of both splits become the PCBM's embeddings."""
  from cu_jax.concepts.text_bank import clip_image_embeddings, text_bank, unique_concepts
  from cu_jax.models.hf_clip import load_hf_clip
  cfg, out_dir = ctx.config.concepts, ctx.stage_dir("concepts")
  model, tokenizer = load_hf_clip(cfg.clip_dir)
  names = unique_concepts(load_concept_list(ctx.dataset, cfg.file))
  bank = text_bank(model, tokenizer, names, cfg.text_template,
                   info={"dataset": ctx.dataset.name, "clip_dir": cfg.clip_dir, "embeddings": "concepts"})
  for split in SPLITS:
    feats = clip_image_embeddings(model, ctx.dataset.split(split), global_batch=ctx.config.train.eval_batch_size,
                                  mesh=ctx.mesh)
    if ctx.primary:
      np.save(out_dir / f"{split}_embed.npy", feats, allow_pickle=False)
  if ctx.primary:
    bank.save(out_dir / "bank")
  return {"num_concepts": len(bank), "bank": "text", "embedding_dim": bank.dim}


@stage("concepts", config_keys=("concepts",), validate=validate_concepts)
def run_concepts(ctx: Context) -> dict:
  cfg, out_dir = ctx.config.concepts, ctx.stage_dir("concepts")
  if cfg.bank == "text":
    return _text_bank(ctx)
  train = load_embeddings(ctx, "train")
  source = CONCEPT_SOURCES.get(cfg.source, "concepts.source")(ctx.dataset, cfg, train["label"])
  bank, full = cav.learn_cav_bank(train["embed"], source.labels, source.names, _cav_options(cfg),
                                  info={**source.info, "dataset": ctx.dataset.name})
  if len(bank) == 0:
    raise UserError(f"no concept reached held-out accuracy {cfg.min_accuracy}; lower "
                    "--config.concepts.min_accuracy or check the concept source")
  if ctx.primary:
    full.save(out_dir / "bank_all")
    bank.save(out_dir / "bank")
  accuracies = [q["heldout_accuracy"] for q in bank.quality]
  return {"num_concepts": len(bank), "num_candidates": len(full), "dropped": sorted(set(full.names) - set(bank.names)),
          "mean_heldout_accuracy": float(np.mean(accuracies)), "min_heldout_accuracy": float(np.min(accuracies))}


def bank_embeddings(ctx: Context, bank: ConceptBank, split: str) -> np.ndarray:
  """The embeddings the bank's concepts live in: the model's (CAV) or CLIP's image features (text)."""
  stage_name = bank.info.get("embeddings", "embed")
  return np.load(ctx.stage_dir(stage_name) / f"{split}_embed.npy", allow_pickle=False)


def load_bank(ctx: Context) -> ConceptBank:
  bank = ConceptBank.load(ctx.stage_dir("concepts") / "bank")
  bank.check_dim(int(np.load(ctx.stage_dir(bank.info.get("embeddings", "embed")) / "train_embed.npy",
                             mmap_mode="r").shape[1]))
  return bank

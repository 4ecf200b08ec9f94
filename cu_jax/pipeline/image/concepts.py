"""Stage `concepts`: the concept bank the PCBM explains the model with (`concepts.bank`).

- `cav`: a concept activation vector per concept on the model's own embeddings (`embed` cache),
  from per-example concept labels (`concepts.source`); concepts below `min_accuracy` are dropped.
- `text`: CLIP text embeddings of the concept names shipped for the dataset (or `concepts.file`);
  CLIP's image features of both splits are then the embeddings the PCBM reads.
"""

from __future__ import annotations

import numpy as np

from cu_jax.concepts import cav
from cu_jax.concepts.bank import BANK_KINDS
from cu_jax.concepts.sources import CONCEPT_SOURCES, load_concept_list
from cu_jax.concepts.text_bank import clip_image_embeddings, text_bank, unique_concepts
from cu_jax.models.hf_clip import load_hf_clip, read_hf_clip_config
from cu_jax.pipeline.artifacts import SPLITS, ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.utils.errors import UserError


def _validate_cav(ctx: Context) -> None:
  cfg = ctx.config.concepts
  # reads and checks the concept source against the dataset's classes, without any labels
  CONCEPT_SOURCES.get(cfg.source, "concepts.source")(ctx.dataset, cfg, np.zeros(0, np.int64))


def _validate_text(ctx: Context) -> None:
  cfg = ctx.config.concepts
  if not cfg.clip_dir:
    raise UserError("concepts.bank='text' needs a CLIP checkpoint folder: set --config.concepts.clip_dir")
  read_hf_clip_config(cfg.clip_dir)
  load_concept_list(ctx.dataset, cfg.file)


def _cav_bank(ctx: Context, art: ImageArtifacts) -> dict:
  cfg = ctx.config.concepts
  train = art.embeddings("train")
  source = CONCEPT_SOURCES.get(cfg.source, "concepts.source")(art.dataset, cfg, train["label"])
  options = cav.CAVOptions(n_per_side=cfg.n_per_side, n_heldout=cfg.n_heldout, cs=tuple(cfg.cs),
                           min_accuracy=cfg.min_accuracy, seed=cfg.seed)
  bank, full = cav.learn_cav_bank(train["embed"], source.labels, source.names, options,
                                  info={**source.info, "dataset": art.dataset.name})
  if len(bank) == 0:
    raise UserError(f"no concept reached held-out accuracy {cfg.min_accuracy}; lower "
                    "--config.concepts.min_accuracy or check the concept source")
  art.save_bank(bank, full)
  accuracies = [q["heldout_accuracy"] for q in bank.quality]
  return {"num_concepts": len(bank), "num_candidates": len(full), "dropped": sorted(set(full.names) - set(bank.names)),
          "mean_heldout_accuracy": float(np.mean(accuracies)), "min_heldout_accuracy": float(np.min(accuracies))}


def _text_bank(ctx: Context, art: ImageArtifacts) -> dict:
  cfg = ctx.config.concepts
  model, tokenizer = load_hf_clip(cfg.clip_dir)
  names = unique_concepts(load_concept_list(art.dataset, cfg.file))
  bank = text_bank(model, tokenizer, names, cfg.text_template,
                   info={"dataset": art.dataset.name, "clip_dir": cfg.clip_dir, "embeddings": "concepts"})
  for split in SPLITS:
    art.save_bank_embeddings(split, clip_image_embeddings(model, art.dataset.split(split), mesh=ctx.mesh,
                                                          global_batch=ctx.config.train.eval_batch_size))
  art.save_bank(bank)
  return {"num_concepts": len(bank), "bank": "text", "embedding_dim": bank.dim}


# concepts.bank -> (validate, build)
BUILDERS = {"cav": (_validate_cav, _cav_bank), "text": (_validate_text, _text_bank)}
assert set(BUILDERS) == set(BANK_KINDS), "every kind of concept bank needs a builder"


def validate(ctx: Context) -> None:
  BANK_KINDS.get(ctx.config.concepts.bank, "concepts.bank")
  BUILDERS[ctx.config.concepts.bank][0](ctx)


@stage("concepts", config_keys=("concepts",), validate=validate)
def run(ctx: Context) -> dict:
  return BUILDERS[ctx.config.concepts.bank][1](ctx, ImageArtifacts(ctx))

"""Text (multimodal) concept bank: V_j = the L2-normalised CLIP text embedding of concept j's name,
b_j = 0. The PCBM backbone is then CLIP's image tower (`clip_image_embeddings`)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cu_jax.concepts.bank import ConceptBank
from cu_jax.data.datasets import RandomAccessSource
from cu_jax.data.loader import eval_batches
from cu_jax.models.clip import CLIP
from cu_jax.models.hf_clip import text_embeddings
from cu_jax.parallel.host import to_host

# OpenAI CLIP's image normalisation (HF CLIPImageProcessor defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def unique_concepts(concept_list: dict[str, list[str]]) -> list[str]:
  """Every concept of a class -> concepts list once, in first-seen order."""
  return list(dict.fromkeys(c for concepts in concept_list.values() for c in concepts))


def text_bank(model: CLIP, tokenizer, names: Sequence[str], template: str = "{}", info: dict | None = None
              ) -> ConceptBank:
  vectors = text_embeddings(model, tokenizer, [template.format(n) for n in names])
  return ConceptBank(vectors, np.zeros(len(names), np.float32), tuple(names),
                     tuple({"template": template} for _ in names), kind="text", info=dict(info or {}))


def clip_image_embeddings(model: CLIP, source: RandomAccessSource, *, global_batch: int, mesh) -> np.ndarray:
  """(N, projection_dim) CLIP image features of a split (grey images repeated to RGB, resized)."""
  size = model.cfg.vision.image_size

  @jax.jit
  def features(images):
    x = images.astype(jnp.float32) / 255.0
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    x = jax.image.resize(x, (x.shape[0], size, size, 3), method="bilinear")
    x = (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
    return model.get_image_features(x)

  out = []
  for batch in eval_batches(source, global_batch=global_batch, mesh=mesh, keys=("image",)):
    # Gathered in global row order (the examples' order) on every process of a multi-host job.
    embed, mask = to_host((features(batch["image"]), batch["mask"]))
    out.append(embed[mask > 0])
  return np.concatenate(out)

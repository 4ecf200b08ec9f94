"""The image-classifier pipeline (`config.pipeline = "image"`, the default), one module per stage:

    train -> embed -> concepts -> pcbm -> retrain -> attribute -> poison -> unlearn -> evaluate -> report
      -> export

- `train`: the original classifier (a ViT, from scratch or a Hugging Face initialisation), or
  yours, given as it is;
- `embed`: its embeddings and logits of both splits, cached;
- `concepts`: the concept bank (CAVs on those embeddings, or CLIP text embeddings);
- `pcbm`: the concept bottleneck head over the bank's scores;
- `retrain`: the reference, trained by the same recipe without the forget class;
- `attribute`: what the forget class means (key concepts, donor class, where concepts live);
- `poison`: the forget class's training samples with poisoned labels (and images);
- `unlearn`: the method and the baselines, each fine-tuning the original;
- `evaluate`: every model audited the same way; `report`: the figures, tables and plots;
- `export`: the models as Hugging Face folders (`export.hf`).

Each stage reads what earlier ones wrote through `cu_jax.pipeline.artifacts.ImageArtifacts`, never
through another stage's module. Importing this package registers the stages, and the check of
the files of a stage a run skips or resumes.
"""

from cu_jax.pipeline.image import (attribute, concepts, embed, evaluate, export, pcbm, poison,  # noqa: F401
                                   report, retrain, train, unlearn)
from cu_jax.pipeline.artifacts import ImageArtifacts
from cu_jax.pipeline.runner import VERIFIERS

VERIFIERS["image"] = lambda ctx, stage, finished: ImageArtifacts(ctx).verify(stage, finished)

"""Stage `export`: the run's image models as Hugging Face `ViTForImageClassification` folders.

With `export.hf` on, writes `export/<model>/` (config.json with the dataset's class names as
`id2label`, model.safetensors, preprocessor_config.json with the normalisation and size the model
was trained with) for the original, every unlearning method and the retrained reference: load one
with `ViTForImageClassification.from_pretrained` and serve it where the original was served. A
stage of its own (after `unlearn`), so that turning the export on later reuses the finished models.
"""

from __future__ import annotations

from absl import logging
from flax import nnx

from cu_jax.models.hf_vit import save_hf_vit
from cu_jax.pipeline.artifacts import ImageArtifacts
from cu_jax.pipeline.runner import Context, stage
from cu_jax.utils.errors import UserError


def validate(ctx: Context) -> None:
  if ctx.config.export.hf and ctx.config.model.pool != "cls":
    raise UserError(f"export.hf: a ViT with model.pool={ctx.config.model.pool!r} has no Hugging Face equivalent "
                    "(ViTForImageClassification classifies the CLS token); use model.pool=cls or export.hf=False")


@stage("export", config_keys=("export",), validate=validate)
def run(ctx: Context) -> dict:
  cfg, art = ctx.config, ImageArtifacts(ctx)
  if not cfg.export.hf:
    return {"hf": {}}
  written = {}
  for name in art.model_names():
    if not art.model_file(name).exists():
      continue  # (a stage of the list did not run: its model is not there to export)
    graphdef, params = art.load_model(name)
    folder = art.export_dir(name)
    if ctx.primary:
      save_hf_vit(nnx.merge(graphdef, params), folder, class_names=art.dataset.class_names,
                  mean=cfg.data.mean, std=cfg.data.std)
    written[name] = str(folder)
    logging.info("export: %s -> %s", name, folder)
  return {"hf": written}

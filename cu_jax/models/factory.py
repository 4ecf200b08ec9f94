"""Model registry: the `model` config section + the dataset's shape -> an NNX module."""

from __future__ import annotations

from flax import nnx

from cu_jax.models.vit import ViT, ViTConfig
from cu_jax.utils.errors import UserError
from cu_jax.utils.registry import Registry

MODELS: Registry = Registry("model")


def vit_config(model_cfg, *, image_size: int, channels: int, num_classes: int) -> ViTConfig:
  try:
    return ViTConfig(image_size=image_size, channels=channels, patch_size=model_cfg.patch_size,
                     width=model_cfg.width, depth=model_cfg.depth, heads=model_cfg.heads,
                     mlp_dim=model_cfg.mlp_dim, num_classes=num_classes, pool=model_cfg.pool,
                     dropout=model_cfg.dropout, attn_dropout=model_cfg.attn_dropout,
                     dtype=model_cfg.dtype)
  except ValueError as e:
    raise UserError(f"invalid model config: {e}; fix --config.model.* or --config.data.image_size") from e


@MODELS.register("vit")
def _vit(model_cfg, *, image_size: int, channels: int, num_classes: int, seed: int,
         abstract: bool = False) -> ViT:
  cfg = vit_config(model_cfg, image_size=image_size, channels=channels, num_classes=num_classes)
  if abstract:
    if model_cfg.get("init_from"):
      from cu_jax.models.hf_vit import check_hf_vit
      check_hf_vit(model_cfg.init_from, image_size=image_size, num_classes=num_classes, expect=cfg)
    return nnx.eval_shape(lambda: ViT(cfg, rngs=nnx.Rngs(seed)))
  if model_cfg.get("init_from"):
    from cu_jax.models.hf_vit import load_hf_vit
    return load_hf_vit(model_cfg.init_from, image_size=image_size, num_classes=num_classes,
                       dtype=model_cfg.dtype, seed=seed, expect=cfg)
  return ViT(cfg, rngs=nnx.Rngs(seed))


def build_model(config, image_shape: tuple[int, int, int], num_classes: int, *,
                abstract: bool = False) -> nnx.Module:
  """The model the config describes, for images of `image_shape` (resized to data.image_size).

  `abstract=True`: shapes only (`nnx.eval_shape`); checks the config (and an HF folder's
  config.json) without allocating or reading weights.
  """
  size = config.data.get("image_size", 0) or image_shape[0]
  make = MODELS.get(config.model.name, "model.name")
  kwargs = dict(image_size=size, channels=image_shape[2], num_classes=num_classes, seed=config.seed)
  if abstract:
    return make(config.model, abstract=True, **kwargs)
  return make(config.model, **kwargs)

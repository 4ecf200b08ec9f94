"""Model registry: the `model` config section + the dataset's shape -> an NNX module.

The ViT's architecture fields (`model.patch_size`, `width`, `depth`, `heads`, `mlp_dim`) may be
0: "as the Hugging Face folder says". The folder is `train.trained` when the original is given as
one, else `model.init_from`; a non-zero field that disagrees with the folder is an error.
"""

from __future__ import annotations

import pathlib

from flax import nnx

from cu_jax.models.vit import ViT, ViTConfig
from cu_jax.utils.errors import UserError
from cu_jax.utils.registry import Registry

MODELS: Registry = Registry("model")
ARCHITECTURE = ("patch_size", "width", "depth", "heads", "mlp_dim")


def is_hf_folder(path: str) -> bool:
  return bool(path) and (pathlib.Path(path).expanduser() / "config.json").is_file()


def vit_config(model_cfg, *, image_size: int, channels: int, num_classes: int,
               architecture_from: str = "") -> ViTConfig:
  """The `ViTConfig` of a config's `model` section; zero architecture fields are read from the HF
  folder `architecture_from`."""
  fields = {k: model_cfg[k] for k in ARCHITECTURE}
  unset = [k for k, v in fields.items() if not v]
  if unset:
    if not is_hf_folder(architecture_from):
      raise UserError(f"model.{unset[0]}=0 means 'as the Hugging Face folder says', but there is no folder "
                      "to read it from: set it, or give --config.train.trained / --config.model.init_from "
                      "as a folder with config.json")
    from cu_jax.models.hf_vit import read_hf_config, vit_config_from_hf
    hf = vit_config_from_hf(read_hf_config(architecture_from))
    fields.update({k: getattr(hf, k) for k in unset})
  try:
    return ViTConfig(image_size=image_size, channels=channels, num_classes=num_classes, pool=model_cfg.pool,
                     dropout=model_cfg.dropout, attn_dropout=model_cfg.attn_dropout, dtype=model_cfg.dtype,
                     remat=model_cfg.get("remat", False), **fields)
  except ValueError as e:
    raise UserError(f"invalid model config: {e}; fix --config.model.* or --config.data.image_size") from e


@MODELS.register("vit")
def _vit(model_cfg, *, image_size: int, channels: int, num_classes: int, seed: int,
         abstract: bool = False, architecture_from: str = "") -> ViT:
  cfg = vit_config(model_cfg, image_size=image_size, channels=channels, num_classes=num_classes,
                   architecture_from=architecture_from or model_cfg.get("init_from", ""))
  init = model_cfg.get("init_from")
  if abstract:
    if init:
      from cu_jax.models.hf_vit import check_hf_vit
      check_hf_vit(init, image_size=image_size, num_classes=num_classes, expect=cfg)
    return nnx.eval_shape(lambda: ViT(cfg, rngs=nnx.Rngs(seed)))
  if init:
    from cu_jax.models.hf_vit import load_hf_vit
    return load_hf_vit(init, image_size=image_size, num_classes=num_classes, dtype=model_cfg.dtype,
                       remat=cfg.remat, seed=seed, expect=cfg)
  return ViT(cfg, rngs=nnx.Rngs(seed))


def build_model(config, image_shape: tuple[int, int, int], num_classes: int, *,
                abstract: bool = False, seed: int | None = None) -> nnx.Module:
  """The model the config describes, for images of `image_shape` (resized to data.image_size),
  initialised as `model.init_from` says.

  `abstract=True`: shapes only (`nnx.eval_shape`); checks the config (and an HF folder's
  config.json) without allocating or reading weights. `seed`: the random initialisation's
  (default `config.seed`).
  """
  size = config.data.get("image_size", 0) or image_shape[0]
  make = MODELS.get(config.model.name, "model.name")
  trained = config.get("train", {}).get("trained", "")
  kwargs = dict(image_size=size, channels=image_shape[2], num_classes=num_classes,
                seed=config.seed if seed is None else seed,
                architecture_from=trained if is_hf_folder(trained) else "")
  return make(config.model, abstract=abstract, **kwargs)

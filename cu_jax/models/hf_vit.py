"""Import a Hugging Face `ViTForImageClassification` folder (config.json + model.safetensors).

torch `Linear` weights are `(out, in)`; Flax kernels are `(in, out)`. The patch-embedding conv
`(out, in, kh, kw)` becomes our patch `Linear` with rows ordered (kh, kw, in), matching
`patchify`. When the target image size differs, the patch position embeddings are resampled
with the bicubic kernel torch uses (a = -0.75, half-pixel centres), so results agree with HF's
`interpolate_pos_encoding=True`.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from absl import logging
from flax import nnx

from cu_jax.models.vit import ViT, ViTConfig
from cu_jax.models.weights import assign_checked, read_config_json
from cu_jax.utils.errors import UserError
from cu_jax.utils.files import check_safetensors, load_safetensors


def read_hf_config(folder: str | pathlib.Path) -> dict:
  return read_config_json(folder, "point --config.model.init_from at a folder saved by `save_pretrained`")


def vit_config_from_hf(hf: dict, **overrides) -> ViTConfig:
  if hf.get("model_type") != "vit":
    raise UserError(f"checkpoint model_type {hf.get('model_type')!r} is not supported here; "
                    "supported: 'vit' (ViTModel / ViTForImageClassification)")
  if hf.get("hidden_act", "gelu") != "gelu":
    raise UserError(f"hidden_act {hf['hidden_act']!r} is not supported; cu_jax's ViT uses exact GELU")
  labels = hf.get("id2label") or {}
  kwargs = dict(
      image_size=hf.get("image_size", 224), channels=hf.get("num_channels", 3),
      patch_size=hf.get("patch_size", 16), width=hf["hidden_size"], depth=hf["num_hidden_layers"],
      heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
      num_classes=len(labels) or hf.get("num_labels", 2), pool="cls",
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12), qkv_bias=hf.get("qkv_bias", True))
  kwargs.update({k: v for k, v in overrides.items() if v is not None})
  return ViTConfig(**kwargs)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic convolution weights for taps at offsets -1, 0, 1, 2 (torch's bicubic, a=-0.75)."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix of torch's bicubic interpolation with align_corners=False."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  base = np.floor(src).astype(np.int64)
  w = _cubic_weights(src - base)
  m = np.zeros((n_out, n_in))
  for tap in range(4):
    idx = np.clip(base - 1 + tap, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), w[:, tap])
  return m


def resize_pos_embed(pos: np.ndarray, new_grid: int, has_cls: bool = True) -> np.ndarray:
  """(1, [1+] g*g, D) position embeddings -> (1, [1+] new_grid^2, D), bicubic on the grid."""
  cls, grid = (pos[:, :1], pos[:, 1:]) if has_cls else (pos[:, :0], pos)
  g = int(round(np.sqrt(grid.shape[1])))
  if g * g != grid.shape[1]:
    raise UserError(f"position embeddings of {grid.shape[1]} patches are not a square grid")
  if g == new_grid:
    return pos
  m = _resize_matrix(g, new_grid)
  grid = grid.reshape(g, g, -1).astype(np.float64)
  grid = np.einsum("ai,ijd,bj->abd", m, grid, m).reshape(1, new_grid * new_grid, -1)
  return np.concatenate([cls, grid.astype(pos.dtype)], axis=1)


def _linear(w: np.ndarray, b: np.ndarray | None) -> dict:
  out = {"kernel": w.T}
  if b is not None:
    out["bias"] = b
  return out


def hf_to_params(tensors: dict[str, np.ndarray], cfg: ViTConfig, hf: dict) -> dict:
  """HF tensor names -> the nested pure dict of our `ViT` parameters."""
  pre = "vit." if any(k.startswith("vit.") for k in tensors) else ""
  t = lambda name: tensors[pre + name]
  opt = lambda name: tensors.get(pre + name)
  conv = t("embeddings.patch_embeddings.projection.weight")  # (D, C, p, p)
  patch_kernel = conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0])
  pos = resize_pos_embed(t("embeddings.position_embeddings"), cfg.grid)
  params = {
      "patch_embed": {"kernel": patch_kernel, "bias": t("embeddings.patch_embeddings.projection.bias")},
      "cls_token": t("embeddings.cls_token"),
      "pos_embed": pos,
      "norm": {"scale": t("layernorm.weight"), "bias": t("layernorm.bias")},
      "blocks": {},
  }
  for i in range(cfg.depth):
    p = f"encoder.layer.{i}."
    a = p + "attention.attention."
    params["blocks"][i] = {
        "ln1": {"scale": t(p + "layernorm_before.weight"), "bias": t(p + "layernorm_before.bias")},
        "ln2": {"scale": t(p + "layernorm_after.weight"), "bias": t(p + "layernorm_after.bias")},
        "attn": {
            "query": _linear(t(a + "query.weight"), opt(a + "query.bias")),
            "key": _linear(t(a + "key.weight"), opt(a + "key.bias")),
            "value": _linear(t(a + "value.weight"), opt(a + "value.bias")),
            "out": _linear(t(p + "attention.output.dense.weight"), t(p + "attention.output.dense.bias")),
        },
        "mlp": {
            "fc1": _linear(t(p + "intermediate.dense.weight"), t(p + "intermediate.dense.bias")),
            "fc2": _linear(t(p + "output.dense.weight"), t(p + "output.dense.bias")),
        },
    }
  if "classifier.weight" in tensors:
    params["head"] = _linear(tensors["classifier.weight"], tensors["classifier.bias"])
  return params


def check_hf_vit(folder: str | pathlib.Path, *, image_size: int | None = None,
                 num_classes: int | None = None, dtype: str = "float32",
                 expect: ViTConfig | None = None) -> tuple[ViTConfig, dict]:
  """Reads and checks an HF ViT folder without loading its weights: (our config, HF config)."""
  folder = pathlib.Path(folder).expanduser()
  hf = read_hf_config(folder)
  cfg = vit_config_from_hf(hf, image_size=image_size, num_classes=num_classes, dtype=dtype)
  if expect is not None:
    for field in ("patch_size", "width", "depth", "heads", "mlp_dim", "channels"):
      if getattr(expect, field) != getattr(cfg, field):
        raise UserError(f"{folder} has {field}={getattr(cfg, field)} but the config asks for "
                        f"{getattr(expect, field)}; set --config.model.{field}={getattr(cfg, field)}")
  if not (folder / "model.safetensors").is_file():
    raise UserError(f"{folder} has no model.safetensors; save the model with "
                    "`save_pretrained(..., safe_serialization=True)`")
  check_safetensors(folder / "model.safetensors")  # header and length, before a run writes anything
  return cfg, hf


def load_hf_vit(folder: str | pathlib.Path, *, image_size: int | None = None,
                num_classes: int | None = None, dtype: str = "float32", remat: bool = False, seed: int = 0,
                expect: ViTConfig | None = None) -> ViT:
  """A `ViT` with the weights of an HF folder.

  `image_size`: resample position embeddings to this size. `num_classes`: if it differs from the
  checkpoint's labels, the classifier is re-initialised (zeros), as for fine-tuning on a new
  dataset. `dtype`, `remat`: compute precision and rematerialisation (`ViTConfig`). `expect`: the
  architecture the config asks for; any difference is an error.
  """
  folder = pathlib.Path(folder).expanduser()
  cfg, hf = check_hf_vit(folder, image_size=image_size, num_classes=num_classes, dtype=dtype,
                         expect=expect)
  tensors = load_safetensors(folder / "model.safetensors")
  params = hf_to_params(tensors, cfg, hf)
  model = ViT(dataclasses.replace(cfg, remat=remat), rngs=nnx.Rngs(seed))
  if "head" not in params or params["head"]["kernel"].shape[1] != cfg.num_classes:
    logging.info("%s: classifier re-initialised for %d classes", folder, cfg.num_classes)
    params["head"] = nnx.to_pure_dict(nnx.state(model.head, nnx.Param))
  assign_checked(model, params, folder, kind="ViT", fix="make --config.model match the checkpoint")
  return model


# ----------------------------------------------------------------------------------- export


def params_to_hf(params: dict, cfg: ViTConfig) -> dict[str, np.ndarray]:
  """The nested pure dict of our `ViT` parameters -> `ViTForImageClassification` tensor names
  (the inverse of `hf_to_params`)."""
  if cfg.pool != "cls":
    raise UserError(f"a ViT with pool={cfg.pool!r} has no Hugging Face equivalent (ViTForImageClassification "
                    "classifies the CLS token); export needs --config.model.pool=cls")
  a = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  out: dict[str, np.ndarray] = {}

  def linear(name: str, p: dict) -> None:
    out[name + ".weight"] = a(np.asarray(p["kernel"]).T)
    if "bias" in p:
      out[name + ".bias"] = a(p["bias"])

  def norm(name: str, p: dict) -> None:
    out[name + ".weight"], out[name + ".bias"] = a(p["scale"]), a(p["bias"])

  kernel = np.asarray(params["patch_embed"]["kernel"])  # (p*p*C, D), rows (kh, kw, c)
  p, c = cfg.patch_size, cfg.channels
  out["vit.embeddings.patch_embeddings.projection.weight"] = a(kernel.reshape(p, p, c, -1).transpose(3, 2, 0, 1))
  out["vit.embeddings.patch_embeddings.projection.bias"] = a(params["patch_embed"]["bias"])
  out["vit.embeddings.cls_token"] = a(params["cls_token"])
  out["vit.embeddings.position_embeddings"] = a(params["pos_embed"])
  for i in range(cfg.depth):
    block, pre = params["blocks"][i], f"vit.encoder.layer.{i}."
    norm(pre + "layernorm_before", block["ln1"])
    norm(pre + "layernorm_after", block["ln2"])
    for name in ("query", "key", "value"):
      linear(pre + "attention.attention." + name, block["attn"][name])
    linear(pre + "attention.output.dense", block["attn"]["out"])
    linear(pre + "intermediate.dense", block["mlp"]["fc1"])
    linear(pre + "output.dense", block["mlp"]["fc2"])
  norm("vit.layernorm", params["norm"])
  linear("classifier", params["head"])
  return out


def hf_config(cfg: ViTConfig, class_names) -> dict:
  """config.json of the `ViTForImageClassification` equivalent of a `ViT` of config `cfg`."""
  if len(class_names) != cfg.num_classes:
    raise ValueError(f"{len(class_names)} class names for a {cfg.num_classes}-class model")
  return {
      "architectures": ["ViTForImageClassification"], "model_type": "vit",
      "hidden_size": cfg.width, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.heads,
      "intermediate_size": cfg.mlp_dim, "hidden_act": "gelu", "hidden_dropout_prob": cfg.dropout,
      "attention_probs_dropout_prob": cfg.attn_dropout, "initializer_range": 0.02,
      "layer_norm_eps": cfg.layer_norm_eps, "image_size": cfg.image_size, "patch_size": cfg.patch_size,
      "num_channels": cfg.channels, "qkv_bias": cfg.qkv_bias, "encoder_stride": cfg.patch_size,
      "id2label": {str(i): name for i, name in enumerate(class_names)},
      "label2id": {name: i for i, name in enumerate(class_names)}, "torch_dtype": "float32",
  }


def preprocessor_config(cfg: ViTConfig, mean, std) -> dict:
  """preprocessor_config.json for `ViTImageProcessor`: the preprocessing cu_jax trained with (bilinear
  resize to the model's size, x / 255, then (x - mean) / std per channel)."""
  per_channel = lambda v: [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * cfg.channels)]
  return {"image_processor_type": "ViTImageProcessor", "do_resize": True,
          "size": {"height": cfg.image_size, "width": cfg.image_size}, "resample": 2, "do_rescale": True,
          "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": per_channel(mean),
          "image_std": per_channel(std)}


def save_hf_vit(model: ViT, folder: str | pathlib.Path, *, class_names, mean=0.5, std=0.5) -> pathlib.Path:
  """Writes `model` as a Hugging Face `ViTForImageClassification` folder (config.json with
  `id2label`, model.safetensors, preprocessor_config.json), loadable with `from_pretrained`.

  The folder is written under a temporary name and renamed: an existing export is replaced only
  by a complete one."""
  import json
  import shutil

  from safetensors.numpy import save_file

  cfg = model.cfg
  tensors = params_to_hf(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg)
  folder = pathlib.Path(folder).expanduser()
  tmp = folder.with_name(folder.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  (tmp / "config.json").write_text(json.dumps(hf_config(cfg, list(class_names)), indent=2) + "\n")
  (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(cfg, mean, std), indent=2) + "\n")
  save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
  if folder.exists():
    shutil.rmtree(folder)
  tmp.rename(folder)
  return folder

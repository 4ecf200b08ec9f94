"""Import a Hugging Face `CLIPModel` folder (config.json + model.safetensors + tokenizer files).

torch `Linear` weights are `(out, in)`; Flax kernels are `(in, out)`. The patch-embedding conv
`(out, in, kh, kw)` (no bias) becomes our bias-free patch `Linear` with rows ordered (kh, kw, in),
matching `patchify`. `nn.Embedding` tables are used as they are. When the target image size
differs from the checkpoint's, the patch position embeddings are resampled with torch's bicubic
kernel (`hf_vit.resize_pos_embed`), as HF's `interpolate_pos_encoding=True` does.

The tokenizer comes from `transformers.AutoTokenizer` (local files only). `text_embeddings` turns
concept names into L2-normalised text features: the vectors of a text concept bank
(`concepts.bank = "text"`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from cu_jax.models.clip import ACTIVATIONS, CLIP, CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from cu_jax.models.hf_vit import _linear, resize_pos_embed
from cu_jax.models.weights import assign_checked, read_config_json
from cu_jax.utils.errors import UserError
from cu_jax.utils.files import load_safetensors

# HF's defaults (transformers 5), for configs that leave a field out.
_HF_VISION = CLIPVisionConfig()
_HF_TEXT = CLIPTextConfig()


def read_hf_clip_config(folder: str | pathlib.Path) -> dict:
  hf = read_config_json(folder, "point at a folder saved by `CLIPModel.save_pretrained` (with its tokenizer)")
  if hf.get("model_type") != "clip":
    raise UserError(f"{folder}: checkpoint model_type {hf.get('model_type')!r} is not supported for a "
                    "text concept bank; expected 'clip' (a transformers CLIPModel)")
  return hf


def _act(tower: str, hf: dict, default: str) -> str:
  act = hf.get("hidden_act", default)
  if act not in ACTIVATIONS:
    raise UserError(f"CLIP {tower} hidden_act {act!r} is not supported; one of {sorted(ACTIVATIONS)}")
  return act


def clip_config_from_hf(hf: dict, *, image_size: int | None = None, dtype: str = "float32") -> CLIPConfig:
  """Our `CLIPConfig` from a parsed HF `config.json` (missing fields take HF's defaults).

  `image_size`: run the vision tower at this size (position embeddings are resampled on load).
  """
  v = hf.get("vision_config") or hf.get("vision_config_dict") or {}
  t = hf.get("text_config") or hf.get("text_config_dict") or {}
  eos = t.get("eos_token_id", _HF_TEXT.eos_token_id)
  if not isinstance(eos, int):
    raise UserError(f"CLIP text eos_token_id {eos!r} is not supported; expected a single integer")
  patch = v.get("patch_size", _HF_VISION.patch_size)
  size = v.get("image_size", _HF_VISION.image_size)
  if not (isinstance(patch, int) and isinstance(size, int)):
    raise UserError(f"CLIP vision image_size {size!r} / patch_size {patch!r}: only square sizes "
                    "(single integers) are supported")
  image_size = image_size or size
  if image_size % patch:
    raise UserError(f"image_size {image_size} is not a multiple of the checkpoint's patch_size {patch}")
  try:
    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch, channels=v.get("num_channels", _HF_VISION.channels),
        width=v.get("hidden_size", _HF_VISION.width), depth=v.get("num_hidden_layers", _HF_VISION.depth),
        heads=v.get("num_attention_heads", _HF_VISION.heads),
        mlp_dim=v.get("intermediate_size", _HF_VISION.mlp_dim),
        hidden_act=_act("vision", v, _HF_VISION.hidden_act),
        layer_norm_eps=v.get("layer_norm_eps", _HF_VISION.layer_norm_eps))
    text = CLIPTextConfig(
        vocab_size=t.get("vocab_size", _HF_TEXT.vocab_size),
        max_positions=t.get("max_position_embeddings", _HF_TEXT.max_positions),
        width=t.get("hidden_size", _HF_TEXT.width), depth=t.get("num_hidden_layers", _HF_TEXT.depth),
        heads=t.get("num_attention_heads", _HF_TEXT.heads),
        mlp_dim=t.get("intermediate_size", _HF_TEXT.mlp_dim),
        hidden_act=_act("text", t, _HF_TEXT.hidden_act),
        layer_norm_eps=t.get("layer_norm_eps", _HF_TEXT.layer_norm_eps), eos_token_id=eos)
  except ValueError as e:  # e.g. a width that the heads do not divide
    raise UserError(f"unsupported CLIP config.json: {e}") from e
  return CLIPConfig(vision=vision, text=text, projection_dim=hf.get("projection_dim", 512),
                    logit_scale_init=hf.get("logit_scale_init_value", 2.6592), dtype=dtype)


def _encoder(t, prefix: str, depth: int) -> dict:
  layers = {}
  for i in range(depth):
    p = f"{prefix}encoder.layers.{i}."
    a = p + "self_attn."
    layers[i] = {
        "layer_norm1": {"scale": t(p + "layer_norm1.weight"), "bias": t(p + "layer_norm1.bias")},
        "layer_norm2": {"scale": t(p + "layer_norm2.weight"), "bias": t(p + "layer_norm2.bias")},
        "self_attn": {name: _linear(t(a + name + ".weight"), t(a + name + ".bias"))
                      for name in ("q_proj", "k_proj", "v_proj", "out_proj")},
        "mlp": {"fc1": _linear(t(p + "mlp.fc1.weight"), t(p + "mlp.fc1.bias")),
                "fc2": _linear(t(p + "mlp.fc2.weight"), t(p + "mlp.fc2.bias"))},
    }
  return {"layers": layers}


def hf_to_params(tensors: dict[str, np.ndarray], cfg: CLIPConfig, folder: pathlib.Path, *,
                 resample: bool = False) -> dict:
  """HF tensor names -> the nested pure dict of our `CLIP` parameters.

  `resample`: resize the patch position embeddings to `cfg.vision.grid` (a new image size).
  """
  def t(name):
    if name not in tensors:
      raise UserError(f"{folder}/model.safetensors has no tensor {name!r}; is it a CLIPModel checkpoint?")
    return tensors[name]

  conv = t("vision_model.embeddings.patch_embedding.weight")  # (D, C, p, p)
  if conv.ndim != 4:
    raise UserError(f"{folder}: vision_model.embeddings.patch_embedding.weight has shape "
                    f"{tuple(conv.shape)}; expected a (width, channels, patch, patch) conv kernel")
  pos = t("vision_model.embeddings.position_embedding.weight")  # (1 + g*g, D)
  if resample and pos.ndim == 2:  # a malformed table is left to `assign_checked`'s shape check
    pos = resize_pos_embed(pos[None], cfg.vision.grid)[0]
  ln = lambda name: {"scale": t(name + ".weight"), "bias": t(name + ".bias")}
  params = {
      "vision_model": {
          "patch_embedding": {"kernel": conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0])},
          "class_embedding": t("vision_model.embeddings.class_embedding"),
          "position_embedding": pos,
          "pre_layernorm": ln("vision_model.pre_layrnorm"),
          "encoder": _encoder(t, "vision_model.", cfg.vision.depth),
          "post_layernorm": ln("vision_model.post_layernorm"),
      },
      "text_model": {
          "token_embedding": {"embedding": t("text_model.embeddings.token_embedding.weight")},
          "position_embedding": t("text_model.embeddings.position_embedding.weight"),
          "encoder": _encoder(t, "text_model.", cfg.text.depth),
          "final_layer_norm": ln("text_model.final_layer_norm"),
      },
      "visual_projection": _linear(t("visual_projection.weight"), None),
      "text_projection": _linear(t("text_projection.weight"), None),
      "logit_scale": tensors.get("logit_scale", np.asarray(cfg.logit_scale_init, np.float32)),
  }
  return params


def load_hf_clip_model(folder: str | pathlib.Path, *, image_size: int | None = None,
                       dtype: str = "float32") -> CLIP:
  """A `CLIP` with the weights of an HF `CLIPModel` folder (no tokenizer).

  Every parameter comes from the checkpoint, so the model is built abstractly (no random init).
  """
  folder = pathlib.Path(folder).expanduser()
  hf = read_hf_clip_config(folder)
  cfg = clip_config_from_hf(hf, image_size=image_size, dtype=dtype)
  native = clip_config_from_hf(hf).vision.image_size
  weights = folder / "model.safetensors"
  if not weights.is_file():
    raise UserError(f"{folder} has no model.safetensors; save the model with "
                    "`save_pretrained(..., safe_serialization=True)`")
  tensors = load_safetensors(weights)
  model = nnx.eval_shape(lambda: CLIP(cfg, rngs=nnx.Rngs(0)))
  params = hf_to_params(tensors, cfg, folder, resample=cfg.vision.image_size != native)
  assign_checked(model, params, folder, kind="CLIPModel", fix="config.json does not match model.safetensors")
  return model


def load_clip_tokenizer(folder: str | pathlib.Path, cfg: CLIPConfig | None = None):
  """`transformers.AutoTokenizer.from_pretrained(folder)`, local files only; checked against `cfg`."""
  import transformers  # heavy; only the text bank needs it

  folder = pathlib.Path(folder).expanduser()
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
  except (OSError, ValueError, TypeError) as e:
    raise UserError(f"{folder}: cannot load its tokenizer ({type(e).__name__}: {e}); save it next to "
                    "the model with `tokenizer.save_pretrained(folder)`") from e
  if cfg is not None:
    if len(tokenizer) > cfg.text.vocab_size:
      raise UserError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the text tower only "
                      f"{cfg.text.vocab_size} embeddings; tokenizer and model do not belong together")
    if cfg.text.eos_token_id != 2 and tokenizer.eos_token_id != cfg.text.eos_token_id:
      logging.warning("%s: tokenizer eos_token_id %s differs from the model's %d; text features are "
                      "pooled at the model's", folder, tokenizer.eos_token_id, cfg.text.eos_token_id)
  return tokenizer


def load_hf_clip(folder: str | pathlib.Path, *, image_size: int | None = None, dtype: str = "float32"):
  """(`CLIP` model, tokenizer) from an HF `CLIPModel` folder saved with its tokenizer."""
  model = load_hf_clip_model(folder, image_size=image_size, dtype=dtype)
  return model, load_clip_tokenizer(folder, model.cfg)


@nnx.jit
def _encode_text(model: CLIP, input_ids, attention_mask):
  return model.encode_text_normalized(input_ids, attention_mask)


def text_embeddings(model: CLIP, tokenizer, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
  """(n, projection_dim) float32 L2-normalised text features of `texts` (e.g. concept names).

  Texts longer than the model's positions are truncated (the end-of-text token is kept). Batches
  are padded on the right (whatever `tokenizer.padding_side` says) to a multiple of 8 tokens, so
  that few shapes are compiled.
  """
  if isinstance(texts, str):
    raise TypeError("texts must be a list of strings, not one string")
  texts = list(texts)
  max_len = model.cfg.text.max_positions
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.cfg.text.eos_token_id
  out = []
  for start in range(0, len(texts), batch_size):
    # right padding: CLIP tokenizers pad with the EOS token, and the text tower pools the first EOS
    enc = tokenizer(texts[start:start + batch_size], padding=True, padding_side="right",
                    truncation=True, max_length=max_len, return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    # (the tokenizer's pad_to_multiple_of refuses a max_length such as CLIP's 77 that is no multiple)
    extra = min(max_len, -(-ids.shape[1] // 8) * 8) - ids.shape[1]
    ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=pad_id)
    mask = np.pad(mask, ((0, 0), (0, extra)))
    feats = _encode_text(model, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    out.append(np.asarray(feats, np.float32))
  if not out:
    return np.zeros((0, model.cfg.projection_dim), np.float32)
  return np.concatenate(out)

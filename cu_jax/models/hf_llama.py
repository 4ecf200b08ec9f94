"""Import and export Hugging Face `LlamaForCausalLM` folders (config.json + safetensors).

Import (`load_hf_llama`): the model is first built abstractly (`nnx.eval_shape`: shapes only, no
random 7B model in memory), every expected tensor's name and shape is checked against the
safetensors headers, and only then are the tensors read one at a time, transposed from torch's
`Linear` layout `(out, in)` to our kernels `(in, out)`, cast to the parameter dtype and put on
the device. Host memory never holds more than one tensor, so a 13 GB checkpoint loads on a host
with a few GB free. Single files (`model.safetensors`) and sharded checkpoints
(`model.safetensors.index.json` + shards) are both read.

The safetensors files are parsed here (8-byte little-endian header length, a JSON header of
`{name: {dtype, shape, data_offsets}}`, then the raw little-endian data) because
`safetensors.numpy` cannot represent bfloat16, the dtype of most LLaMA checkpoints; numpy reads
it as `ml_dtypes.bfloat16`. The same format is written on export, streamed tensor by tensor.

Export (`save_hf_llama`): a plain model (LoRA adapters merged with `lora.merge_lora`) becomes a
folder that `transformers.LlamaForCausalLM.from_pretrained` and any serving stack read; written
in a temporary folder next to the target and renamed into place, so a crash leaves no half
model. In a multi-host job whose weights are sharded over every host's devices, each tensor is
gathered by all processes together, so every process calls it and one (`write=True`) writes.
`save_merged_hf_llama` writes an unlearned model as its base folder with the LoRA updates merged
into the adapted weights only, in the base checkpoint's dtype.

Names map one to one because our modules follow HF's: `layers/{i}/self_attn/q_proj/kernel` is
`model.layers.{i}.self_attn.q_proj.weight` (transposed), `embed_tokens` is
`model.embed_tokens.weight`, `lm_head/kernel` is `lm_head.weight` (absent when embeddings are
tied).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
import uuid
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging
from flax import nnx

from cu_jax.models.llama import ROPE_TYPES, Llama, LlamaConfig
from cu_jax.models.weights import read_config_json
from cu_jax.parallel.host import to_host
from cu_jax.utils.errors import UserError
from cu_jax.utils.files import read_json, safetensors_header

SUPPORTED = "model_type 'llama' (LlamaForCausalLM)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
_PARAM_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "bfloat16"}  # fp16 -> bf16 (range)


# ----------------------------------------------------------------------------- config


def read_hf_llama_config(folder: str | pathlib.Path) -> dict:
  return read_config_json(folder, "point at a folder saved by `LlamaForCausalLM.save_pretrained`")


def _check_architecture(hf: dict) -> None:
  archs = hf.get("architectures") or []
  if hf.get("model_type") != "llama" or (archs and "LlamaForCausalLM" not in archs):
    got = f"model_type {hf.get('model_type')!r}" + (f" ({', '.join(archs)})" if archs else "")
    raise UserError(f"checkpoint {got} is not supported; supported: {SUPPORTED}")


def _rope(hf: dict) -> dict:
  """Our rope fields from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4.x)."""
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  kind = params.get("rope_type", params.get("type", "default"))
  if kind not in ROPE_TYPES:
    raise UserError(f"rope_type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
  out = {"rope_type": kind, "rope_theta": float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))}
  if kind in ("linear", "llama3"):
    out["rope_factor"] = float(params["factor"])
  if kind == "llama3":
    out.update(rope_low_freq_factor=float(params["low_freq_factor"]),
               rope_high_freq_factor=float(params["high_freq_factor"]),
               rope_original_max_len=int(params["original_max_position_embeddings"]))
  return out


def llama_config_from_hf(hf: dict, **overrides) -> LlamaConfig:
  """Our `LlamaConfig` from a parsed HF `config.json`; `overrides` that are not None win.

  Parameters load in the checkpoint's dtype (`dtype` / `torch_dtype`): bfloat16 or float32
  (float16 becomes bfloat16: same memory, no overflow); the compute dtype follows it.
  """
  try:
    return _config_from_hf(hf, overrides)
  except KeyError as e:
    raise UserError(f"LLaMA config.json lacks the field {e.args[0]!r} (top level or rope_parameters); "
                    "re-save it with transformers' save_pretrained") from None


def _config_from_hf(hf: dict, overrides: dict) -> LlamaConfig:
  _check_architecture(hf)
  if hf.get("hidden_act", "silu") != "silu":
    raise UserError(f"hidden_act {hf['hidden_act']!r} is not supported; LLaMA's SwiGLU uses 'silu'")
  heads = hf["num_attention_heads"]
  eos = hf.get("eos_token_id")
  if isinstance(eos, (list, tuple)):
    eos = eos[0] if eos else None
  saved = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").removeprefix("torch.")
  param_dtype = _PARAM_DTYPES.get(saved, "float32")
  kwargs = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim") or 0,
      max_len=hf.get("max_position_embeddings", 2048), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      attention_bias=bool(hf.get("attention_bias", False)), mlp_bias=bool(hf.get("mlp_bias", False)),
      param_dtype=param_dtype, dtype=param_dtype, **_rope(hf))
  pad = hf.get("pad_token_id")
  pad = eos if pad is None else pad  # as HF's generate does when the config has no pad token
  for name, value in (("bos_token_id", hf.get("bos_token_id")), ("eos_token_id", eos), ("pad_token_id", pad)):
    if value is not None:
      kwargs[name] = int(value)
  kwargs.update({k: v for k, v in overrides.items() if v is not None})
  try:
    return LlamaConfig(**kwargs)
  except (TypeError, ValueError) as e:
    raise UserError(f"LLaMA config.json is not usable: {e}") from None


def llama_config_to_hf(cfg: LlamaConfig) -> dict:
  """The `config.json` of `LlamaForCausalLM` (transformers 5 layout) describing `cfg`."""
  rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
  if cfg.rope_type in ("linear", "llama3"):
    rope["factor"] = cfg.rope_factor
  if cfg.rope_type == "llama3":
    rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_len)
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.dim_per_head, "hidden_act": "silu", "max_position_embeddings": cfg.max_len,
      "rms_norm_eps": cfg.rms_norm_eps, "rope_parameters": rope,
      "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": cfg.attention_bias,
      "attention_dropout": 0.0, "mlp_bias": cfg.mlp_bias, "initializer_range": 0.02,
      "pretraining_tp": 1, "use_cache": True, "bos_token_id": cfg.bos_token_id,
      "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id, "dtype": cfg.param_dtype,
  }


# ----------------------------------------------------------------------------- safetensors


class SafetensorsFile:
  """Lazy reader of one safetensors file: `names`, `shape(name)`, `read(name)` (one tensor)."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    header, self.data_start = safetensors_header(path)  # a damaged or truncated file is named
    self.entries: dict = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, e in self.entries.items():
      begin, end = e["data_offsets"]
      dt = _DTYPES.get(e["dtype"])
      if dt is None:
        raise UserError(f"{path}: tensor {name} has dtype {e['dtype']}, not one of {', '.join(_DTYPES)}")
      if end - begin != int(np.prod(e["shape"])) * np.dtype(dt).itemsize:
        raise UserError(f"{path}: tensor {name} has inconsistent offsets; re-save it")

  @property
  def names(self) -> list[str]:
    return list(self.entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name]["shape"])

  def read(self, name: str) -> np.ndarray:
    e = self.entries[name]
    dt = np.dtype(_DTYPES[e["dtype"]]).newbyteorder("<")
    begin, end = e["data_offsets"]
    with open(self.path, "rb") as f:
      a = np.fromfile(f, dtype=dt, count=(end - begin) // dt.itemsize, offset=self.data_start + begin)
    return a.reshape(e["shape"])


def _open_checkpoint(folder: pathlib.Path) -> dict[str, SafetensorsFile]:
  """tensor name -> the file that holds it, for `model.safetensors` or a sharded index."""
  if (folder / INDEX_FILE).is_file():
    weight_map = read_json(folder / INDEX_FILE).get("weight_map") or {}
    files = {}
    for shard in sorted(set(weight_map.values())):
      if not (folder / shard).is_file():
        raise UserError(f"{folder}/{INDEX_FILE} names shard {shard}, which is missing; copy the whole folder")
      files[shard] = SafetensorsFile(folder / shard)
    out = {}
    for name, shard in weight_map.items():
      if name not in files[shard].entries:
        raise UserError(f"{folder}/{INDEX_FILE} puts {name} in {shard}, which does not hold it; re-save it")
      out[name] = files[shard]
    return out
  if (folder / SINGLE_FILE).is_file():
    f = SafetensorsFile(folder / SINGLE_FILE)
    return {name: f for name in f.names}
  pickled = sorted(p.name for p in folder.glob("*.bin"))
  convert = ("convert it once, on a machine you trust with it, with `python -c \"from transformers import "
             f"AutoModelForCausalLM as M; M.from_pretrained('{folder}', torch_dtype='auto')"
             f".save_pretrained('{folder}-safetensors', safe_serialization=True)\"` and point at the new folder")
  if pickled:
    raise UserError(f"{folder} holds {', '.join(pickled[:2])}{' ...' if len(pickled) > 2 else ''} (PyTorch pickles, "
                    f"which cu_jax does not unpickle) and no {SINGLE_FILE} or {INDEX_FILE}; {convert}")
  raise UserError(f"{folder} has no {SINGLE_FILE} or {INDEX_FILE}; save the model with "
                  "`save_pretrained(..., safe_serialization=True)`")


def _write_safetensors(path: pathlib.Path, tensors: list[tuple[str, tuple, np.dtype, Callable]]) -> int:
  """Streams `(name, shape, dtype, get)` tensors into one file; `get()` gives the array. Returns bytes."""
  header, offset = {}, 0
  for name, shape, dtype, _ in tensors:
    nbytes = int(np.prod(shape)) * dtype.itemsize
    header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  header["__metadata__"] = {"format": "pt"}
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as safetensors writes it
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for name, shape, dtype, get in tensors:
      a = np.ascontiguousarray(get(), dtype=dtype.newbyteorder("<"))
      assert a.shape == tuple(shape), (name, a.shape, shape)
      f.write(a.tobytes())  # one tensor in host memory at a time
  return offset


# ----------------------------------------------------------------------------- names


def _hf_name(key: tuple) -> str:
  """Our parameter path -> the HF tensor name."""
  if key == ("embed_tokens",):
    return "model.embed_tokens.weight"
  suffix = "bias" if key[-1] == "bias" else "weight"
  prefix = "" if key[0] == "lm_head" else "model."
  return prefix + ".".join(map(str, key[:-1])) + "." + suffix


def _is_kernel(key: tuple) -> bool:
  return key[-1] == "kernel"


# ----------------------------------------------------------------------------- load


def load_hf_llama(folder: str | pathlib.Path, *, param_dtype: str | None = None, dtype: str | None = None,
                  max_len: int | None = None,
                  place: Callable[[tuple, np.ndarray], jax.Array] | None = None) -> Llama:
  """A `Llama` with the weights of an HF `LlamaForCausalLM` folder.

  `param_dtype` / `dtype`: override the checkpoint's dtype ("float32", "bfloat16"). `max_len`:
  override the context length. `place(path, array)`: puts one parameter on the device(s), e.g.
  `jax.device_put(array, shardings[path])` for FSDP; default `jnp.asarray` (default device).
  Every tensor is checked before any is read; errors are `UserError`s naming the tensor.
  """
  folder = pathlib.Path(folder).expanduser()
  hf = read_hf_llama_config(folder)
  cfg = llama_config_from_hf(hf, param_dtype=param_dtype, max_len=max_len,
                             dtype=dtype or param_dtype)
  files = _open_checkpoint(folder)
  abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.traversals.flatten_mapping(nnx.to_pure_dict(state)))
  for key, want in flat.items():
    name = _hf_name(key)
    if name not in files:
      tied = " (config.json says tie_word_embeddings=false)" if key[0] == "lm_head" else ""
      raise UserError(f"{folder} has no tensor {name}{tied}; is it a complete LlamaForCausalLM checkpoint?")
    shape = files[name].shape(name)
    shape = shape[::-1] if _is_kernel(key) else shape
    if shape != tuple(want.shape):
      raise UserError(f"{folder}: tensor {name} has shape {files[name].shape(name)} but config.json implies "
                      f"{tuple(want.shape)[::-1] if _is_kernel(key) else tuple(want.shape)}; "
                      "the weights and config.json do not belong together")
  extra = sorted(set(files) - {_hf_name(k) for k in flat} - {"lm_head.weight"})
  extra = [n for n in extra if not n.endswith("rotary_emb.inv_freq")]  # recomputed from the config
  if extra:
    logging.warning("%s: %d tensors are not used by LlamaForCausalLM, e.g. %s", folder, len(extra), extra[:3])
  put = place or (lambda _, a: jnp.asarray(a))
  values = {}
  for key, want in flat.items():
    name = _hf_name(key)
    a = files[name].read(name)
    a = (a.T if _is_kernel(key) else a).astype(want.dtype)
    values[key] = put(key, a)
    del a
  nnx.replace_by_pure_dict(state, nnx.traversals.unflatten_mapping(values))
  return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------- save


def _tokenizer_files(tokenizer_dir: str | pathlib.Path) -> list[pathlib.Path]:
  d = pathlib.Path(tokenizer_dir).expanduser()
  found = [d / n for n in TOKENIZER_FILES if (d / n).is_file()]
  if not found:
    raise UserError(f"tokenizer_dir {str(d)!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...);"
                    " point it at the folder the tokenizer was loaded from")
  return found


def _check_target(folder: pathlib.Path) -> None:
  if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
    raise UserError(f"export folder {str(folder)!r} already exists and is not empty; choose a new folder "
                    "or delete it")


def save_hf_llama(model: Llama, folder: str | pathlib.Path, *, tokenizer_dir: str | pathlib.Path | None = None,
                  max_shard_bytes: int = 5_000_000_000, write: bool = True) -> pathlib.Path:
  """Writes `model` as an HF `LlamaForCausalLM` folder; returns its path.

  config.json, generation_config.json, `model.safetensors` (or shards of at most
  `max_shard_bytes` + `model.safetensors.index.json`) in torch layout and the parameters' dtype,
  and the tokenizer files of `tokenizer_dir` if given. Refuses (UserError, nothing written) a
  model that still has LoRA adapters and a target folder that exists and is not empty.

  Multi-host: every process must call it (each tensor is gathered collectively, in the same
  order everywhere); the others pass `write=False`: they take part in the gathers and write
  nothing, and check nothing on disk.
  """
  folder = pathlib.Path(folder).expanduser()
  adapters = [p for p, m in nnx.iter_graph(model) if getattr(m, "lora", None) is not None]
  if adapters:
    raise UserError(f"the model still has {len(adapters)} LoRA adapters (e.g. "
                    f"{'/'.join(map(str, adapters[0]))}); call cu_jax.models.lora.merge_lora(model) first")
  if write:
    _check_target(folder)
  tokenizer = _tokenizer_files(tokenizer_dir) if tokenizer_dir is not None else []
  cfg: LlamaConfig = model.cfg
  flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  tensors = []
  for key, value in flat.items():
    shape = tuple(value.shape)[::-1] if _is_kernel(key) else tuple(value.shape)
    # One tensor's whole value on the host (gathered from every host's devices where it is split).
    get = (lambda v=value, t=_is_kernel(key): to_host(v).T if t else to_host(v))
    tensors.append((_hf_name(key), shape, np.dtype(value.dtype), get))
  if not write:
    for t in tensors:  # the writer's gathers, in its order (`_write_safetensors` streams them so)
      t[3]()
    return folder
  gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
  return _write_folder(folder, tensors, llama_config_to_hf(cfg), gen, tokenizer, max_shard_bytes)


def save_merged_hf_llama(base: str | pathlib.Path, deltas: dict[tuple, np.ndarray], folder: str | pathlib.Path, *,
                         tokenizer_dir: str | pathlib.Path | None = None,
                         max_shard_bytes: int = 5_000_000_000) -> pathlib.Path:
  """The HF folder `base` with LoRA updates merged in, written as a new folder; returns its path.

  `deltas`: our kernel path (e.g. `("layers", 0, "self_attn", "q_proj")`) -> the (in, out) update
  `scale * A @ B` (`lora.lora_deltas`, on the host). Each such weight becomes
  `W + delta.T`, summed in float32 and stored in the checkpoint's own dtype; every other tensor,
  config.json and generation_config.json are copied from `base` unchanged, so a float16 Vicuna
  stays float16 and bit-identical outside the adapted layers (merging into the bfloat16 weights
  the model computed with would round every weight of the folder). Atomic like `save_hf_llama`.
  """
  base, folder = pathlib.Path(base).expanduser(), pathlib.Path(folder).expanduser()
  _check_target(folder)
  files = _open_checkpoint(base)
  updates = {_hf_name(tuple(path) + ("kernel",)): np.asarray(d, np.float32).T for path, d in deltas.items()}
  for name, update in updates.items():
    if name not in files or files[name].shape(name) != update.shape:
      raise UserError(f"{base}: no tensor {name} of shape {update.shape} for the LoRA update to merge into; the "
                      "adapters were trained on another model")

  def get(name):
    a = files[name].read(name)
    return (a.astype(np.float32) + updates[name]).astype(a.dtype) if name in updates else a

  tensors = [(name, f.shape(name), np.dtype(_DTYPES[f.entries[name]["dtype"]]), lambda n=name: get(n))
             for name, f in files.items()]
  config = read_json(base / "config.json")
  gen_file = base / "generation_config.json"
  gen = read_json(gen_file) if gen_file.is_file() else {k: config.get(k) for k in ("bos_token_id", "eos_token_id",
                                                                                  "pad_token_id")}
  tokenizer = _tokenizer_files(tokenizer_dir) if tokenizer_dir is not None else []
  return _write_folder(folder, tensors, config, gen, tokenizer, max_shard_bytes)


def _write_folder(folder: pathlib.Path, tensors: list, config: dict, generation_config: dict,
                  tokenizer: list[pathlib.Path], max_shard_bytes: int) -> pathlib.Path:
  """Writes config.json, generation_config.json, the tensors (one file, or shards of at most
  `max_shard_bytes` and an index) and the tokenizer files into a temporary folder next to
  `folder`, then renames it into place."""
  shards, size = [[]], 0
  for t in tensors:
    nbytes = int(np.prod(t[1])) * t[2].itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += nbytes

  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    if len(shards) == 1:
      _write_safetensors(tmp / SINGLE_FILE, shards[0])
    else:
      weight_map, total = {}, 0
      for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += _write_safetensors(tmp / file, shard)
        weight_map.update({t[0]: file for t in shard})
      index = {"metadata": {"total_size": total}, "weight_map": weight_map}
      (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    for path in tokenizer:
      shutil.copy2(path, tmp / path.name)
    try:
      os.replace(tmp, folder)  # atomic; replaces only a missing or empty folder
    except OSError as e:
      raise UserError(f"cannot move the export into {str(folder)!r} ({e.strerror}); it was created by "
                      "someone else meanwhile: choose a new folder") from None
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("exported %s (%d tensors, %d file(s))", folder, len(tensors), len(shards))
  return folder


"""Reading Hugging Face folders: config.json, and imported weights copied into an NNX model with
every shape checked before anything changes."""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
from flax import nnx

from cu_jax.utils.errors import UserError
from cu_jax.utils.files import read_json


def assign_checked(model: nnx.Module, params: dict, folder: pathlib.Path, *, kind: str, fix: str) -> None:
  """Sets `model`'s parameters from the nested dict `params` (nothing is changed on error).

  `kind` names the expected checkpoint ("ViT", "CLIPModel") and `fix` says how to resolve a shape
  mismatch; both go into the one-line errors.
  """
  state = nnx.state(model, nnx.Param)
  flat_src = dict(nnx.traversals.flatten_mapping(params))
  flat_dst = dict(nnx.traversals.flatten_mapping(nnx.to_pure_dict(state)))
  for key, dst in flat_dst.items():
    name = "/".join(map(str, key))
    src = flat_src.get(key)
    if src is None:
      raise UserError(f"{folder} has no weight for {name}; is it a {kind} checkpoint?")
    if tuple(src.shape) != tuple(dst.shape):
      raise UserError(f"{folder}: weight {name} has shape {tuple(src.shape)} but the model expects "
                      f"{tuple(dst.shape)}; {fix}")
  new = nnx.traversals.unflatten_mapping({k: jnp.asarray(flat_src[k], jnp.float32) for k in flat_dst})
  nnx.replace_by_pure_dict(state, new)
  nnx.update(model, state)


def read_config_json(folder: str | pathlib.Path, hint: str) -> dict:
  """config.json of a Hugging Face model folder; `hint` says which folder to point at instead."""
  folder = pathlib.Path(folder).expanduser()
  path = folder / "config.json"
  if not path.is_file():
    raise UserError(f"{str(folder)!r} is not a Hugging Face model folder (no config.json); {hint}")
  return read_json(path)

"""A model trained elsewhere, used as it is: a Hugging Face `ViTForImageClassification` folder or an
orbax checkpoint of cu_jax's ViT parameters (e.g. another run's `train/checkpoints`).

`check_trained` reads only headers and metadata (before a run writes anything); `load_trained`
returns the parameters, replicated on the mesh.
"""

from __future__ import annotations

import pathlib
import re

import jax
from absl import logging
from flax import nnx

from cu_jax.models.factory import is_hf_folder
from cu_jax.utils.errors import UserError

_GENERIC_LABEL = re.compile(r"label_\d+")


def _norm(name: str) -> str:
  return str(name).strip().lower()


def check_class_names(id2label: dict, class_names, folder, field: str) -> None:
  """The head's `id2label` names against the dataset's classes, in order (case-insensitive).

  transformers' placeholder names (`LABEL_0`, ...) say nothing about the order: accepted with a
  warning."""
  labels = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
  if len(labels) != len(class_names):
    raise UserError(f"{field}={str(folder)!r} classifies {len(labels)} classes but the dataset has "
                    f"{len(class_names)} ({list(class_names)}); give a model trained on this dataset")
  if all(label is not None and _GENERIC_LABEL.fullmatch(_norm(label)) for label in labels):
    logging.warning("%s: id2label has placeholder names (%s, ...): the class order cannot be checked, "
                    "assumed to be the dataset's", folder, labels[0])
    return
  if [_norm(x) for x in labels] != [_norm(x) for x in class_names]:
    same = sorted(map(_norm, labels)) == sorted(map(_norm, class_names))
    raise UserError(
        f"{field}={str(folder)!r}: its classes (id2label) {labels} "
        + ("are the dataset's in another order" if same else "are not the dataset's")
        + f" {list(class_names)}; the head's outputs must be the dataset's classes, in order")


def _checkpoint_dir(path: pathlib.Path) -> tuple[pathlib.Path, int | None]:
  """(an orbax manager folder, step or None for its latest) from a manager folder or a step folder."""
  if path.name.isdigit() and (path / "state").is_dir():
    return path.parent, int(path.name)
  return path, None


def check_trained(path: str, abstract_model: nnx.Module, class_names, *, image_size: int,
                  field: str) -> str:
  """Checks a given trained model against the model the config builds; returns its kind
  ("hf" or "orbax"). One `UserError` naming `field` for anything that does not fit."""
  folder = pathlib.Path(path).expanduser()
  if not folder.exists():
    raise UserError(f"{field}={path!r} does not exist; give a Hugging Face ViTForImageClassification "
                    "folder or an orbax checkpoint folder (another run's train/checkpoints)")
  cfg = abstract_model.cfg
  if is_hf_folder(path):
    from cu_jax.models.hf_vit import check_hf_vit
    hf_cfg, hf = check_hf_vit(folder, expect=cfg)
    if hf_cfg.image_size != image_size:
      raise UserError(f"{field}={path!r} was trained on {hf_cfg.image_size} px images but the data are "
                      f"{image_size} px; set --config.data.image_size={hf_cfg.image_size}")
    check_class_names(hf.get("id2label") or {str(i): f"LABEL_{i}" for i in range(hf.get("num_labels", 2))},
                      class_names, path, field)
    return "hf"
  from cu_jax.parallel.checkpoint import Checkpointer
  directory, step = _checkpoint_dir(folder)
  checkpointer = Checkpointer(directory, save_every=1, async_save=False)
  try:
    if checkpointer.check(step) is None:
      raise UserError(f"{field}={path!r} is neither a Hugging Face folder (no config.json) nor an orbax "
                      "checkpoint folder (no step in it)")
    checkpointer.check_params(step, nnx.state(abstract_model, nnx.Param), field)
  finally:
    checkpointer.close()
  return "orbax"


def load_trained(path: str, abstract_model: nnx.Module, mesh) -> nnx.State:
  """The parameters of a given trained model (checked first with `check_trained`), replicated on
  `mesh`."""
  from cu_jax.parallel.mesh import replicated
  sharding = replicated(mesh)
  folder = pathlib.Path(path).expanduser()
  if is_hf_folder(path):
    from cu_jax.models.hf_vit import load_hf_vit
    cfg = abstract_model.cfg
    model = load_hf_vit(folder, image_size=cfg.image_size, num_classes=cfg.num_classes, dtype=cfg.dtype,
                        expect=cfg)
    return jax.device_put(nnx.state(model, nnx.Param), sharding)
  from cu_jax.parallel.checkpoint import Checkpointer
  directory, step = _checkpoint_dir(folder)
  checkpointer = Checkpointer(directory, save_every=1, async_save=False)
  try:
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          nnx.state(abstract_model, nnx.Param))
    return checkpointer.restore_params(step, target)
  finally:
    checkpointer.close()

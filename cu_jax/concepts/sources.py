"""Where concepts come from: per-example concept labels for CAVs, or concept names for a text bank.

- `attributes`: a class-attribute table (Fashion-MNIST ships one; for CIFAR-10/100 the shipped
  concept lists are read as one): an example shows an attribute when its class has it.
- `labels`: per-image ground-truth concept labels stored in the dataset (`synthetic_concepts`).
- concept lists (`load_concept_list`): class -> concept names, shipped for CIFAR-10/100 and
  Fashion-MNIST (ConceptNet-style, written offline), for the text (CLIP) bank.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import pathlib

import numpy as np

from cu_jax.data.datasets import Dataset, read_arrays
from cu_jax.utils.errors import UserError
from cu_jax.utils.registry import Registry

_PACKAGED = {"fashion_mnist_idx": "fashion_mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
             "cifar100": "cifar100"}


@dataclasses.dataclass(frozen=True)
class ConceptLabels:
  names: tuple[str, ...]
  labels: np.ndarray  # (N, m) bool over the examples of the train split
  info: dict


CONCEPT_SOURCES: Registry = Registry("concept source")


def _read_json(path: str, ds: Dataset, suffix: str) -> tuple[dict, str]:
  """The user's concept file, or the one shipped for the dataset (`<name><suffix>.json`)."""
  if path:
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
      raise UserError(f"concept file {path!r} does not exist; fix --config.concepts.file")
    return json.loads(file.read_text()), str(file)
  default_name = _default_file(ds, suffix)
  resource = importlib.resources.files("cu_jax.concepts") / "data" / default_name
  return json.loads(resource.read_text()), f"cu_jax/concepts/data/{default_name}"


def _class_indices(ds: Dataset, names, where: str) -> list[int]:
  lookup = {n.lower(): i for i, n in enumerate(ds.class_names)}
  unknown = [n for n in names if n.lower() not in lookup]
  if unknown:
    raise UserError(f"{where} names classes {unknown} that dataset {ds.name!r} does not have; its "
                    f"classes are {list(ds.class_names)}")
  return [lookup[n.lower()] for n in names]


def _default_file(ds: Dataset, suffix: str) -> str:
  if ds.name not in _PACKAGED:
    raise UserError(f"no concept file ships for dataset {ds.name!r}; give one with --config.concepts.file")
  return f"{_PACKAGED[ds.name]}{suffix}.json"


def _attribute_table(ds: Dataset, path: str) -> tuple[dict, str]:
  """{"attributes": {attribute: [classes]}} and where it came from: the user's file, the table
  shipped for the dataset, or else its shipped class -> concepts list read as one (a class has
  an attribute when the concept is in its list)."""
  name = _PACKAGED.get(ds.name)
  shipped = name is not None and (importlib.resources.files("cu_jax.concepts") / "data" /
                                  f"{name}_attributes.json").is_file()
  if path or shipped or name is None:
    return _read_json(path, ds, "_attributes")
  lists, where = _read_json("", ds, "")
  table: dict[str, list[str]] = {}
  for cls, concepts in lists["classes"].items():
    for concept in concepts:
      table.setdefault(concept, []).append(cls)
  return {"attributes": table}, f"{where} (class -> concepts, as a class-attribute table)"


@CONCEPT_SOURCES.register("attributes")
def attribute_labels(ds: Dataset, cfg, train_labels: np.ndarray) -> ConceptLabels:
  table, where = _attribute_table(ds, cfg.get("file", ""))
  names = tuple(table["attributes"])
  has = np.zeros((ds.num_classes, len(names)), bool)
  for j, name in enumerate(names):
    has[_class_indices(ds, table["attributes"][name], where), j] = True
  return ConceptLabels(names, has[train_labels], {"source": "attributes", "file": where,
                                                   "class_attributes": has.tolist()})


@CONCEPT_SOURCES.register("labels")
def per_image_labels(ds: Dataset, cfg, train_labels: np.ndarray) -> ConceptLabels:
  names = ds.metadata.get("concepts")
  if not names:
    raise UserError(f"dataset {ds.name!r} has no per-image concept labels; use "
                    "--config.concepts.source=attributes (or a dataset such as synthetic_concepts)")
  if len(train_labels) == 0:  # validation only
    return ConceptLabels(tuple(names), np.zeros((0, len(names)), bool), {"source": "labels"})
  labels = read_arrays(ds.split("train"), keys=("concepts",))["concepts"].astype(bool)
  return ConceptLabels(tuple(names), labels, {"source": "labels"})


def load_concept_list(ds: Dataset, path: str = "") -> dict[str, list[str]]:
  """class name (as the dataset spells it) -> concept names, checked against the dataset's classes."""
  data, where = _read_json(path, ds, "")
  classes = data.get("classes", data)
  indices = _class_indices(ds, list(classes), where)
  return {ds.class_names[i]: list(concepts) for i, concepts in zip(indices, classes.values())}

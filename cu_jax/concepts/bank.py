"""`ConceptBank`: m concept vectors V (m, d), intercepts b (m,), names and per-concept quality.

Saved as `<path>.safetensors` (the arrays) + `<path>.json` (names, quality, provenance); loading
never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from cu_jax.utils.errors import UserError
from cu_jax.utils.files import load_safetensors, read_json
from cu_jax.utils.registry import Registry


@dataclasses.dataclass(frozen=True)
class BankKind:
  """What a kind of bank (`concepts.bank`) explains: the classifier's own embeddings (a CAV bank:
  its concepts can be traced to pixels through the backbone, and re-measured on an unlearned model)
  or another encoder's features (a text bank over CLIP image features)."""
  name: str
  on_model_embeddings: bool


BANK_KINDS: Registry[BankKind] = Registry("concept bank")
for _kind in (BankKind("cav", on_model_embeddings=True), BankKind("text", on_model_embeddings=False)):
  BANK_KINDS.register(_kind.name)(_kind)


@dataclasses.dataclass(frozen=True)
class ConceptBank:
  vectors: np.ndarray  # (m, d) float32: hyperplane normals (CAV) or unit text embeddings
  intercepts: np.ndarray  # (m,) float32
  names: tuple[str, ...]
  # Per concept: e.g. {"heldout_accuracy": .., "C": .., "n_pos": .., "n_neg": ..}.
  quality: tuple[dict[str, Any], ...] = ()
  kind: str = "cav"  # "cav" or "text"
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    m = len(self.names)
    if self.vectors.ndim != 2 or self.vectors.shape[0] != m or self.intercepts.shape != (m,):
      raise ValueError(f"bank arrays {self.vectors.shape}, {self.intercepts.shape} do not fit {m} names")

  @property
  def dim(self) -> int:
    return int(self.vectors.shape[1])

  def __len__(self) -> int:
    return len(self.names)

  def check_dim(self, embedding_dim: int, where: str = "") -> None:
    if self.dim != embedding_dim:
      raise UserError(f"concept bank{(' ' + where) if where else ''} has vectors of dimension {self.dim} "
                      f"but the model's embeddings have dimension {embedding_dim}; rebuild the bank "
                      "for this model (delete the concepts stage or use a new --workdir)")

  def select(self, keep: np.ndarray) -> "ConceptBank":
    keep = np.asarray(keep)
    idx = np.flatnonzero(keep) if keep.dtype == bool else keep
    return dataclasses.replace(
        self, vectors=self.vectors[idx], intercepts=self.intercepts[idx],
        names=tuple(self.names[i] for i in idx),
        quality=tuple(self.quality[i] for i in idx) if self.quality else ())

  def save(self, path: str | pathlib.Path) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"vectors": np.ascontiguousarray(self.vectors, np.float32),
               "intercepts": np.ascontiguousarray(self.intercepts, np.float32)},
              str(path.with_suffix(".safetensors")))
    meta = {"names": list(self.names), "quality": list(self.quality), "kind": self.kind, "info": self.info}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")

  @classmethod
  def load(cls, path: str | pathlib.Path) -> "ConceptBank":
    path = pathlib.Path(path)
    arrays_path, meta_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not arrays_path.is_file() or not meta_path.is_file():
      raise UserError(f"no concept bank at {path} (expected {arrays_path.name} and {meta_path.name})")
    arrays = load_safetensors(arrays_path)
    meta = read_json(meta_path)
    return cls(vectors=arrays["vectors"], intercepts=arrays["intercepts"], names=tuple(meta["names"]),
               quality=tuple(meta.get("quality", ())), kind=meta.get("kind", "cav"),
               info=meta.get("info", {}))

"""Dataset registry: a config name -> a prepared TFDS builder read through `as_data_source`.

Two kinds of entries:
- builders cu_jax prepares itself from local files (`fashion_mnist_idx`, `digits`, `image_folder`:
  your own images, `cu_jax.data.image_folder`): prepared into
  `data_dir` on first use (process 0 only on a pod), then read like any TFDS dataset;
- official TFDS datasets (`cifar10`, `cifar100`, `fashion_mnist`), accepted by name from a
  `data_dir` where a user prepared them in array_record format (BUILD.md says how).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable, Protocol, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from cu_jax.data import builders
from cu_jax.utils.errors import UserError
from cu_jax.utils.registry import Registry


class RandomAccessSource(Protocol):
  """What the loader reads: `len(src)` and `src.__getitems__(indices) -> list[dict]`."""

  def __len__(self) -> int: ...

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]: ...


class ArraySource:
  """An in-memory source over equal-length arrays (tests, poisoned sets, subsets)."""

  def __init__(self, **arrays: np.ndarray):
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f"arrays have different lengths: { {k: len(v) for k, v in arrays.items()} }")
    self.arrays = arrays

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    idx = np.asarray(indices, np.int64)
    cols = {k: v[idx] for k, v in self.arrays.items()}
    return [{k: v[i] for k, v in cols.items()} for i in range(len(idx))]

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {k: v[index] for k, v in self.arrays.items()}


class SubsetSource:
  """The rows `indices` of another source, in that order (a training subset)."""

  def __init__(self, source: RandomAccessSource, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return self.source.__getitems__(self.indices[np.asarray(indices, np.int64)].tolist())


def train_subset(source: RandomAccessSource, n: int, seed: int, name: str) -> RandomAccessSource:
  """A seeded random `n` of the train split's rows (sorted), or the split itself for n = 0."""
  if n == 0:
    return source
  if not 0 < n <= len(source):
    raise UserError(f"data.train_examples={n} is outside 1..{len(source)} (the {len(source)} train images of "
                    f"{name}); use 0 for all of them")
  rows = np.sort(np.random.default_rng([seed, 11]).choice(len(source), n, replace=False))
  return SubsetSource(source, rows)


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  splits: dict[str, RandomAccessSource]
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  # Extra per-dataset facts, e.g. the synthetic dataset's concept names and class -> concepts.
  metadata: dict = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def split(self, name: str) -> RandomAccessSource:
    if name not in self.splits:
      raise UserError(f"dataset {self.name!r} has no split {name!r}; it has {sorted(self.splits)}")
    return self.splits[name]

  def class_index(self, value: int | str) -> int:
    """A class given by index or by name (case-insensitive) -> its index, or a clear error."""
    names = [n.lower() for n in self.class_names]
    if isinstance(value, str) and not value.lstrip("-").isdigit():
      if value.lower() not in names:
        raise UserError(f"class {value!r} is not in {self.name}; valid names: {list(self.class_names)}")
      return names.index(value.lower())
    index = int(value)
    if not 0 <= index < self.num_classes:
      raise UserError(f"class index {index} is out of range for {self.name} "
                      f"(0..{self.num_classes - 1}: {list(self.class_names)})")
    return index


DATASETS: Registry[Callable[[Any], tfds.core.DatasetBuilder]] = Registry("dataset")


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", str(pathlib.Path.home() / "tensorflow_datasets"))


def _prepare_local(make: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
  """Prepares a locally generated builder once; on a pod only process 0 writes.

  `make` builds the builder: the other processes construct theirs after the barrier, when the
  data exists (a builder made before it sees no splits).
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    if jax.process_index() == 0:
      make().download_and_prepare(file_format="array_record")
    multihost_utils.sync_global_devices("cu_jax prepare dataset")
    return make()
  builder = make()
  builder.download_and_prepare(file_format="array_record")
  return builder


@DATASETS.register("fashion_mnist_idx")
def _fashion_mnist_idx(cfg) -> tfds.core.DatasetBuilder:
  idx_dir = cfg.get("idx_dir") or builders.FASHION_MNIST_DEFAULT_DIR
  make = lambda: builders.FashionMnistIdx(idx_dir=idx_dir, data_dir=cfg.data_dir, file_format="array_record")
  if not make().is_prepared():
    for split in ("train", "test"):  # fail fast and clearly before TFDS starts writing
      builders.load_fashion_mnist_idx(idx_dir, split)
  return _prepare_local(make)


def _synthetic(config_name: str):
  def make(cfg) -> tfds.core.DatasetBuilder:
    from cu_jax.data.synthetic import SyntheticConcepts
    return _prepare_local(lambda: SyntheticConcepts(config=config_name, data_dir=cfg.data_dir,
                                                    file_format="array_record"))
  return make


DATASETS.register("synthetic_concepts")(_synthetic("default"))
DATASETS.register("synthetic_concepts_small")(_synthetic("small"))


@DATASETS.register("image_folder")
def _image_folder(cfg) -> tfds.core.DatasetBuilder:
  from cu_jax.data.image_folder import ImageFolder, scan
  fraction = cfg.get("test_fraction", 0.2)
  folder = scan(cfg.get("path", ""), cfg.get("image_size", 0), fraction)
  return _prepare_local(lambda: ImageFolder(folder=folder, test_fraction=fraction, data_dir=cfg.data_dir,
                                            file_format="array_record"))


@DATASETS.register("digits")
def _digits(cfg) -> tfds.core.DatasetBuilder:
  return _prepare_local(lambda: builders.SklearnDigits(data_dir=cfg.data_dir, file_format="array_record"))


def _cifar_binary(name: str, cfg) -> tfds.core.DatasetBuilder:
  """CIFAR from its official binary archive in `data.archive_dir` (default `<data_dir>/downloads/manual`),
  prepared once into `data_dir` by cu_jax's builder (no TensorFlow)."""
  from cu_jax.data.cifar import CifarBinary, read_archive
  archive_dir = cfg.get("archive_dir", "") or str(pathlib.Path(cfg.data_dir) / "downloads" / "manual")
  make = lambda: CifarBinary(config=name, archive_dir=archive_dir, data_dir=cfg.data_dir, file_format="array_record")
  if not make().is_prepared():
    read_archive(name, archive_dir)  # a missing or damaged archive is named before TFDS starts writing
  return _prepare_local(make)


def _official(name: str):
  def make(cfg) -> tfds.core.DatasetBuilder:
    builder = tfds.builder(name, data_dir=cfg.data_dir)
    if not builder.is_prepared() and name in ("cifar10", "cifar100"):
      return _cifar_binary(name, cfg)  # (the official TFDS build needs TensorFlow; the binary archive does not)
    if not builder.is_prepared():
      raise UserError(
          f"TFDS dataset {name!r} is not prepared in data_dir {cfg.data_dir!r}: prepare it in "
          f"array_record format there (BUILD.md, 'Real datasets'), or set --config.data.data_dir "
          "to the folder that holds it")
    array_record = tfds.core.FileFormat.ARRAY_RECORD
    if builder.info.file_format == array_record:
      return builder
    # `tfds convert_format --out_file_format=array_record` run in place on a tfrecord copy lists
    # array_record in `alternative_file_formats`. TFDS 4.9.10's registered builders drop that field
    # when they restore info from disk; a builder made from the folder itself keeps it.
    if array_record.value in builder.info.as_proto.alternative_file_formats:
      return tfds.builder_from_directory(builder.data_dir)
    stored = builder.info.file_format or tfds.core.FileFormat.TFRECORD  # unset: old TFDS, tfrecord
    raise UserError(
        f"TFDS dataset {name!r} in {cfg.data_dir!r} is stored as {stored.value}, which needs "
        "TensorFlow to read; rebuild it with `tfds build --file_format=array_record`, or convert it "
        f"with `tfds convert_format --dataset_dir={builder.data_dir} --out_file_format=array_record` "
        "(both on a machine with TensorFlow; BUILD.md)")
  return make


for _name in ("cifar10", "cifar100", "fashion_mnist"):
  DATASETS.register(_name)(_official(_name))


def load_dataset(cfg) -> Dataset:
  """`cfg` is the `data` section of the config: name, data_dir ("" = `default_data_dir()`), (idx_dir)."""
  if not cfg.get("data_dir"):  # TFDS would otherwise prepare local builders in the working directory
    cfg = ml_collections.ConfigDict({**cfg.to_dict(), "data_dir": default_data_dir()})
  if pathlib.Path(cfg.data_dir).expanduser().is_file():
    raise UserError(f"data.data_dir={cfg.data_dir!r} is a file, not a folder; point --config.data.data_dir at the "
                    "folder that holds (or will hold) the prepared datasets")
  builder = DATASETS.get(cfg.name, "data.name")(cfg)
  info = builder.info
  image_shape = tuple(info.features["image"].shape)
  if len(image_shape) != 3 or None in image_shape:
    raise UserError(f"dataset {cfg.name!r} has images of shape {image_shape}; cu_jax needs a fixed HWC shape")
  splits = {name: builder.as_data_source(split=name) for name in info.splits.keys()}
  if "train" in splits:
    splits["train"] = train_subset(splits["train"], int(cfg.get("train_examples", 0)),
                                   int(cfg.get("train_examples_seed", 0)), cfg.name)
  return Dataset(name=cfg.name, splits=splits, class_names=tuple(info.features["label"].names),
                 image_shape=image_shape, metadata=dict(info.metadata or {}))


def read_arrays(source: RandomAccessSource, indices: np.ndarray | None = None,
                keys: Sequence[str] = ("image", "label"), chunk: int = 4096) -> dict[str, np.ndarray]:
  """Reads records (all, or `indices`) of a source into stacked numpy arrays."""
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)
  parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
  for start in range(0, len(indices), chunk):
    records = source.__getitems__(indices[start:start + chunk].tolist())
    for k in keys:
      parts[k].append(np.stack([np.asarray(r[k]) for r in records]))
  return {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in parts.items()}

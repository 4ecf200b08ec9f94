"""Fabricates official TFDS datasets (`cifar10`, `cifar100`, `fashion_mnist`) as if a user had run
`tfds build NAME --file_format=array_record --data_dir=DATA_DIR` on a machine with TensorFlow.

No download and no TensorFlow: the official builder class itself (`tfds.builder(name)`, so the
same `_info()`, features, version, split names and file layout as the real build) is prepared with
its `_split_generators` replaced, on that one instance, by a generator of a few random records.
Images are handed to TFDS as PIL images: `tfds.features.Image.encode_example` then encodes them as
PNG with PIL (only numpy input goes through `tf.image.encode_png`). PNG is lossless, so the pixels
read back must equal the ones written. The real build shuffles records by key (official builders
do not disable shuffling), so callers compare records by content, not by position.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core import dataset_info as dataset_info_lib

from cu_jax.data.cifar import CIFAR10_NAMES, CIFAR100_FINE_NAMES  # noqa: F401 (the official class lists)

# The label names the official CIFAR builders read from the archives' meta files
# (`batches.meta.txt`, `fine_label_names.txt`, `coarse_label_names.txt`).
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2")

# Label names set at prepare time, as the official `_split_generators` does from the meta files;
# fashion_mnist has its names in `_info()` already.
_LABEL_NAMES_AT_PREPARE = {
    "cifar10": {"label": CIFAR10_NAMES},
    "cifar100": {"label": CIFAR100_FINE_NAMES, "coarse_label": CIFAR100_COARSE_NAMES},
    "fashion_mnist": {},
}


def _to_pil(image: np.ndarray) -> PIL.Image.Image:
  return PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def prepare_official(name: str, data_dir: str | pathlib.Path, *, n_train: int = 16, n_test: int = 8,
                     seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """Writes official dataset `name` with random records into `data_dir` (array_record).

  Returns, per split, the arrays written: `image` (N, H, W, C) uint8, every ClassLabel feature
  (`label`, and `coarse_label` for cifar100) and `id` where the dataset has one, record `i` of
  each array being the `i`-th example generated.
  """
  builder = tfds.builder(name, data_dir=str(data_dir))
  assert type(builder).__module__.startswith("tensorflow_datasets."), type(builder)
  features = builder.info.features
  rng = np.random.default_rng(seed)
  written: dict[str, dict[str, np.ndarray]] = {}
  for split, n in (("train", n_train), ("test", n_test)):
    arrays: dict[str, np.ndarray] = {}
    for key, feature in features.items():
      if isinstance(feature, tfds.features.Image):
        arrays[key] = rng.integers(0, 256, (n, *feature.shape), dtype=np.uint8)
      elif isinstance(feature, tfds.features.ClassLabel):
        arrays[key] = rng.integers(0, feature.num_classes, n).astype(np.int64)
      elif isinstance(feature, tfds.features.Text):
        arrays[key] = np.array([f"{split}_{i:05d}" for i in range(n)])
      else:
        raise NotImplementedError(f"{name}: feature {key!r} of type {type(feature).__name__}")
    written[split] = arrays

  def examples(arrays: dict[str, np.ndarray]):
    n = len(next(iter(arrays.values())))
    for i in range(n):
      record: dict[str, Any] = {}
      for key, feature in features.items():
        value = arrays[key][i]
        if isinstance(feature, tfds.features.Image):
          record[key] = _to_pil(value)
        elif isinstance(feature, tfds.features.ClassLabel):
          record[key] = int(value)
        else:
          record[key] = str(value)
      yield i, record

  def split_generators(dl_manager):
    del dl_manager  # nothing to download
    for key, names in _LABEL_NAMES_AT_PREPARE[name].items():
      builder.info.features[key].names = list(names)
    return {split: examples(arrays) for split, arrays in written.items()}

  builder._split_generators = split_generators  # this instance only; the class is untouched
  builder.download_and_prepare(file_format="array_record")
  return written


def rewrite_file_formats(name: str, data_dir: str | pathlib.Path, file_format: str | None,
                         alternative_file_formats: tuple[str, ...] = ()) -> pathlib.Path:
  """Rewrites the file formats recorded in a prepared dataset's dataset_info.json.

  `file_format=None` leaves the field unset, as in metadata written by older TFDS versions
  (TFDS then assumes tfrecord). Returns the dataset's version folder.
  """
  version_dir = pathlib.Path(tfds.builder(name, data_dir=str(data_dir)).data_dir)
  proto = dataset_info_lib.read_proto_from_builder_dir(version_dir)
  proto.ClearField("file_format")
  if file_format is not None:
    proto.file_format = file_format
  del proto.alternative_file_formats[:]
  proto.alternative_file_formats.extend(alternative_file_formats)
  dataset_info_lib.write_dataset_info_proto(proto, dataset_info_dir=version_dir)
  return version_dir

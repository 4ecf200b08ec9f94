"""TFDS builders for the datasets cu_jax prepares itself, written as `array_record` without TF.

Features are `Tensor` (uint8 HWC image) and `ClassLabel` only: an `Image` feature would need
TensorFlow to encode. Records keep their source order (`disable_shuffling=True`), so record `i`
of a split is sample `i` of the original files. Read them back with `builder.as_data_source(split)`
(random access, numpy; see `cu_jax.data.datasets`).
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from cu_jax.data.idx import read_idx
from cu_jax.utils.errors import UserError

FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _image_label_info(builder, shape, class_names, description):
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=list(class_names)),
      }),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
  )


def _examples(images: np.ndarray, labels: np.ndarray):
  for i, (image, label) in enumerate(zip(images, labels)):
    yield i, {"image": image, "label": int(label)}


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  for name in (stem + ".gz", stem):
    if (directory / name).is_file():
      return directory / name
  return None


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (Xiao et al., 2017) from the four local IDX files (e.g. Debian's package)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, idx_dir: str = FASHION_MNIST_DEFAULT_DIR, **kwargs):
    self._idx_dir = pathlib.Path(idx_dir)
    super().__init__(**kwargs)

  def _info(self):
    return _image_label_info(self, (28, 28, 1), FASHION_MNIST_CLASSES,
                             "Fashion-MNIST read from local IDX files.")

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in _IDX_FILES}

  def _generate_examples(self, split):
    images, labels = load_fashion_mnist_idx(self._idx_dir, split)
    yield from _examples(images[..., None], labels)


def load_fashion_mnist_idx(idx_dir: str | pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, 28, 28) uint8, labels (N,)) of one split, with a clear error if files are missing."""
  idx_dir = pathlib.Path(idx_dir)
  paths = [_find_idx(idx_dir, stem) for stem in _IDX_FILES[split]]
  if any(p is None for p in paths):
    missing = [stem for stem, p in zip(_IDX_FILES[split], paths) if p is None]
    raise UserError(
        f"Fashion-MNIST IDX files {missing} not found in {str(idx_dir)!r}: install them with "
        f"`apt-get install dataset-fashion-mnist` (puts them in {FASHION_MNIST_DEFAULT_DIR}) or "
        "point --config.data.idx_dir at the folder that holds them")
  images, labels = read_idx(paths[0]), read_idx(paths[1])
  if images.ndim != 3 or labels.shape != images.shape[:1]:
    raise UserError(f"{paths[0]} and {paths[1]} do not form an image/label pair "
                    f"(shapes {images.shape} and {labels.shape})")
  return images, labels


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's bundled 8x8 digits (1,797 images), pixel range 0..16 scaled to 0..255.

  A fixed stratified split: every 5th image of each class is test.
  """

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return _image_label_info(self, (8, 8, 1), [str(i) for i in range(10)],
                             "scikit-learn load_digits, 8x8 grey images of digits.")

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split):
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no network
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    rank = np.zeros(len(images), np.int64)
    for c in range(10):
      where = np.flatnonzero(digits.target == c)
      rank[where] = np.arange(len(where))
    keep = (rank % 5 == 4) if split == "test" else (rank % 5 != 4)
    yield from _examples(images[keep], digits.target[keep])

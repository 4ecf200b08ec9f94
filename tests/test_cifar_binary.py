"""CIFAR-10/100 from the official binary archives (the exact layout, written here), no TensorFlow."""

import io
import tarfile

import ml_collections as mlc
import numpy as np
import pytest

from cu_jax.data.cifar import CIFAR10_NAMES, CIFAR100_FINE_NAMES, LAYOUTS
from cu_jax.data.datasets import load_dataset, read_arrays
from cu_jax.utils.errors import UserError


def _write_archive(folder, name, sizes, rng, names=None, cut=0):
  """An archive in the official layout: fixed-size records (label byte(s), then R, G, B planes)."""
  layout = LAYOUTS[name]
  written = {}
  with tarfile.open(folder / layout.archive, "w:gz") as tar:
    def add(file, data):
      info = tarfile.TarInfo(f"{layout.folder}/{file}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    add(layout.names_file, ("\n".join(names or layout.class_names) + "\n").encode())
    for split, files in layout.members.items():
      images, labels = [], []
      for file in files:
        n = sizes[split]
        img = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        lab = rng.integers(0, len(layout.class_names), n).astype(np.uint8)
        heads = [rng.integers(0, 20, n).astype(np.uint8), lab] if layout.label_bytes == 2 else [lab]
        records = np.concatenate([np.stack(heads, 1), img.transpose(0, 3, 1, 2).reshape(n, -1)], 1)
        add(file, records.tobytes()[:len(records.tobytes()) - cut])
        images.append(img)
        labels.append(lab)
      written[split] = (np.concatenate(images), np.concatenate(labels).astype(np.int64))
  return written


def _cfg(name, tmp_path):
  return mlc.ConfigDict(dict(name=name, data_dir=str(tmp_path / "tfds"), archive_dir=str(tmp_path)))


@pytest.mark.parametrize("name, names", [("cifar10", CIFAR10_NAMES), ("cifar100", CIFAR100_FINE_NAMES)])
def test_binary_archive_reads_back_exactly(tmp_path, name, names):
  written = _write_archive(tmp_path, name, {"train": 6, "test": 4}, np.random.default_rng(0))
  ds = load_dataset(_cfg(name, tmp_path))
  assert ds.class_names == names and ds.image_shape == (32, 32, 3)
  for split, (images, labels) in written.items():
    got = read_arrays(ds.split(split))
    np.testing.assert_array_equal(got["image"], images)  # planes -> HWC, records in archive order
    np.testing.assert_array_equal(got["label"], labels)  # cifar100: the fine label, not the coarse byte
  assert len(read_arrays(ds.split("train"))["label"]) == (30 if name == "cifar10" else 6)  # 5 train batches


@pytest.mark.parametrize("damage, match", [
    ("missing", r"cifar-10-binary.tar.gz not found: put the official cifar-10-binary.tar.gz"),
    ("cut", r"the train records are \d+ bytes, not a multiple of 3073; the archive is damaged"),
    ("names", r"batches.meta.txt lists 3 classes .* not cifar10's"),
    ("not gzip", r"cifar-10-binary.tar.gz is damaged \(ReadError"),
])
def test_bad_archives_are_one_clear_error(tmp_path, damage, match):
  rng = np.random.default_rng(1)
  if damage == "cut":
    _write_archive(tmp_path, "cifar10", {"train": 2, "test": 2}, rng, cut=5)
  elif damage == "names":
    _write_archive(tmp_path, "cifar10", {"train": 2, "test": 2}, rng, names=("a", "b", "c"))
  elif damage == "not gzip":
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"this is not an archive")
  with pytest.raises(UserError, match=match):
    load_dataset(_cfg("cifar10", tmp_path))
  assert not (tmp_path / "tfds" / "cifar_binary").exists()

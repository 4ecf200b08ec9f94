"""`data.name=image_folder`: a folder of PNG/JPEG files per class as a TFDS dataset, no TensorFlow."""

import ml_collections as mlc
import numpy as np
import pytest
from PIL import Image

from cu_jax.data.datasets import load_dataset, read_arrays
from cu_jax.utils.errors import UserError


def _write(folder, classes=("cat", "dog", "owl"), n=5, size=12, fmt="png", rng=None):
  """`n` images per class under folder/<class>/; returns {class: [arrays]} of what was written."""
  rng = rng or np.random.default_rng(0)
  written = {}
  for c in classes:
    (folder / c).mkdir(parents=True, exist_ok=True)
    written[c] = []
    for i in range(n):
      pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(folder / c / f"{i:03d}.{fmt}")
      written[c].append(pixels)
  return written


def _load(path, tmp_path, **kw):
  return load_dataset(mlc.ConfigDict(dict(name="image_folder", path=str(path), data_dir=str(tmp_path / "tfds"),
                                          image_size=kw.pop("image_size", 0), test_fraction=kw.pop("test_fraction", 0.2))))


def test_given_splits_read_back_exactly(tmp_path):
  train = _write(tmp_path / "imgs" / "train")
  test = _write(tmp_path / "imgs" / "test", n=2, rng=np.random.default_rng(1))
  ds = _load(tmp_path / "imgs", tmp_path)
  assert ds.class_names == ("cat", "dog", "owl") and ds.image_shape == (12, 12, 3)
  for split, written in (("train", train), ("test", test)):
    got = read_arrays(ds.split(split))
    expected = np.stack([a for c in ds.class_names for a in written[c]])
    np.testing.assert_array_equal(got["image"], expected)  # PNG is lossless; record order = sorted files
    np.testing.assert_array_equal(got["label"], np.repeat(np.arange(3), len(written["cat"])))


def test_split_fraction_resize_grey_and_cache(tmp_path):
  root = tmp_path / "imgs"
  for c, value in (("a", 40), ("b", 200)):
    (root / c).mkdir(parents=True)
    for i in range(10):  # grey JPEGs of two sizes: resized to one
      Image.fromarray(np.full((20 + i, 20 + i), value, np.uint8), mode="L").save(root / c / f"{i}.jpg")
  ds = _load(root, tmp_path, image_size=8, test_fraction=0.3)
  assert ds.image_shape == (8, 8, 1)
  train, test = read_arrays(ds.split("train")), read_arrays(ds.split("test"))
  assert len(train["label"]) == 14 and len(test["label"]) == 6
  assert np.bincount(test["label"]).tolist() == [3, 3]  # stratified
  assert np.abs(train["image"][train["label"] == 0].astype(int) - 40).max() <= 2  # JPEG of a flat image
  again = _load(root, tmp_path, image_size=8, test_fraction=0.3)
  np.testing.assert_array_equal(read_arrays(again.split("test"))["image"], test["image"])
  prepared = sorted(p.name for p in (tmp_path / "tfds" / "image_folder").iterdir())
  assert len(prepared) == 1  # prepared once, reused
  Image.fromarray(np.full((20, 20), 90, np.uint8), mode="L").save(root / "a" / "new.png")
  assert len(read_arrays(_load(root, tmp_path, image_size=8, test_fraction=0.3).split("train"))["label"]) == 15
  assert len(list((tmp_path / "tfds" / "image_folder").iterdir())) == 2  # a changed folder is a new cache


@pytest.mark.parametrize("case, match", [
    ("missing", r"data.path=.* is not a folder"),
    ("empty", r"has no class sub-folders"),
    ("no_images", r"class folder .*dog has no images"),
    ("unreadable", r"cannot read image .*002.png: UnidentifiedImageError"),
    ("mixed", r"have 2 different sizes .*set --config.data.image_size"),
    ("splits_differ", r"train/ and test/ have different class folders \(only in one: \['owl'\]\)"),
])
def test_bad_folders_are_one_clear_error(tmp_path, case, match):
  root = tmp_path / "imgs"
  root.mkdir()
  if case == "no_images":
    _write(root, classes=("cat",))
    (root / "dog").mkdir()
    (root / "dog" / "notes.txt").write_text("no images here")
  elif case == "unreadable":
    _write(root)
    (root / "dog" / "002.png").write_bytes(b"not a png at all")
  elif case == "mixed":
    _write(root, classes=("cat",), size=12)
    _write(root, classes=("dog",), size=16)
  elif case == "splits_differ":
    _write(root / "train")
    _write(root / "test", classes=("cat", "dog"))
  path = tmp_path / "nowhere" if case == "missing" else root
  with pytest.raises(UserError, match=match):
    _load(path, tmp_path)
  assert not (tmp_path / "tfds" / "image_folder").exists()  # nothing prepared

"""Your own images as a dataset: a folder with one sub-folder per class, in any format PIL reads.

    path/train/<class>/*.png   path/test/<class>/*.jpg      (given splits), or
    path/<class>/*                                          (split here: `test_fraction` of each class)

Class names are the sub-folder names, in sorted order. Images are converted to RGB (grey when every
image is grey), resized to `image_size` (bilinear; 0 = keep, when all have one size) and stored
once as TFDS array_record (no TensorFlow) under `data_dir`. The cache is keyed by the folder, the
size, the split fraction and every file's name, size and modification time, so a changed folder is
prepared again.

Everything a user can get wrong is found by `scan` before anything is written (an empty folder, a
class without images, a file PIL cannot open, mixed sizes without a resize), each as one
`UserError` naming the folder or file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from cu_jax.utils.errors import UserError

SPLITS = ("train", "test")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _image_suffixes() -> set[str]:
  from PIL import Image
  return {s.lower() for s in Image.registered_extensions()}


@dataclasses.dataclass(frozen=True)
class FolderScan:
  root: pathlib.Path
  class_names: tuple[str, ...]
  files: dict[str, list[tuple[pathlib.Path, int]]]  # split -> (file, label), in a fixed order
  shape: tuple[int, int, int]  # the stored (H, W, C)

  def key(self, test_fraction: float) -> str:
    """A short hash of everything the prepared data depends on (the cache's name)."""
    h = hashlib.sha256(json.dumps([str(self.root), self.shape, test_fraction, self.class_names]).encode())
    for split in SPLITS:
      for path, label in self.files[split]:
        stat = path.stat()
        h.update(f"{split}|{path.relative_to(self.root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _class_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_of(folder: pathlib.Path, suffixes: set[str]) -> list[pathlib.Path]:
  files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
  return [p for p in files if p.suffix.lower() in suffixes]


def scan(path: str, image_size: int, test_fraction: float) -> FolderScan:
  """The classes, files and stored image shape of an image folder, every file's header checked."""
  from PIL import Image
  root = pathlib.Path(path).expanduser().absolute()
  if not path or not root.is_dir():
    raise UserError(f"data.path={path!r} is not a folder; point --config.data.path at a folder with one "
                    "sub-folder of images per class (or train/ and test/ folders that each have them)")
  suffixes = _image_suffixes()
  given = all((root / s).is_dir() for s in SPLITS)
  bases = {s: root / s for s in SPLITS} if given else {"all": root}
  per_split: dict[str, dict[str, list[pathlib.Path]]] = {}
  for split, base in bases.items():
    classes = _class_dirs(base)
    if not classes:
      raise UserError(f"{base} has no class sub-folders; put the images of each class in a folder named "
                      "after the class")
    per_split[split] = {c.name: _images_of(c, suffixes) for c in classes}
    for name, found in per_split[split].items():
      if not found:
        raise UserError(f"class folder {base / name} has no images (looked for {', '.join(sorted(suffixes)[:6])}, ...)")
  if given and sorted(per_split["train"]) != sorted(per_split["test"]):
    only = sorted(set(per_split["train"]) ^ set(per_split["test"]))
    raise UserError(f"{root}: train/ and test/ have different class folders (only in one: {only}); give both "
                    "the same classes")
  class_names = tuple(sorted(per_split["train" if given else "all"]))
  files: dict[str, list[tuple[pathlib.Path, int]]] = {s: [] for s in SPLITS}
  for label, name in enumerate(class_names):
    if given:
      for s in SPLITS:
        files[s] += [(p, label) for p in per_split[s][name]]
      continue
    found = per_split["all"][name]
    n_test = int(round(test_fraction * len(found)))
    if len(found) < 2 or not 0 < n_test < len(found):
      raise UserError(f"class folder {root / name} has {len(found)} images: too few to hold out "
                      f"data.test_fraction={test_fraction} of them as test; add images or give train/ and "
                      "test/ folders")
    order = np.random.default_rng([0, label]).permutation(len(found))  # a fixed split, whatever the run
    test = set(order[:n_test].tolist())
    files["train"] += [(p, label) for i, p in enumerate(found) if i not in test]
    files["test"] += [(p, label) for i, p in enumerate(found) if i in test]
  sizes, grey = set(), True
  for split in SPLITS:
    for file, _ in files[split]:
      try:
        with Image.open(file) as image:  # the header only
          sizes.add(image.size)
          grey &= image.mode in GREY_MODES
      except Exception as e:  # noqa: BLE001 (PIL raises many kinds for a bad file)
        raise UserError(f"cannot read image {file}: {type(e).__name__}: {e}; remove or replace it") from None
  if not image_size and len(sizes) > 1:
    raise UserError(f"the images in {root} have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}, as width x "
                    "height); set --config.data.image_size to store them at one size")
  w, h = (image_size, image_size) if image_size else next(iter(sizes))
  if h != w:
    raise UserError(f"the images in {root} are {w} x {h} pixels, not square; set --config.data.image_size to "
                    "store them square at that size")
  return FolderScan(root, class_names, files, (h, w, 1 if grey else 3))


def read_image(file: pathlib.Path, shape: tuple[int, int, int]) -> np.ndarray:
  """One image as uint8 (H, W, C) at the stored shape; a file that fails to decode is named."""
  from PIL import Image
  try:
    with Image.open(file) as image:
      image = image.convert("L" if shape[2] == 1 else "RGB")
      if image.size != (shape[1], shape[0]):
        image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
      array = np.asarray(image, np.uint8)
  except Exception as e:  # noqa: BLE001
    raise UserError(f"cannot read image {file}: {type(e).__name__}: {e}; remove or replace it") from None
  return array.reshape(shape)


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """A scanned image folder as a TFDS dataset (one builder config per folder state)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, folder: FolderScan, test_fraction: float, **kwargs):
    self._folder = folder
    config = tfds.core.BuilderConfig(name=f"{folder.root.name.lower()[:40]}_{folder.key(test_fraction)}",
                                     description=f"images of {folder.root}")
    super().__init__(config=config, **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=f"Images of {self._folder.root}, one folder per class.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=self._folder.shape, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(self._folder.class_names))}),
        supervised_keys=("image", "label"), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split):
    for i, (file, label) in enumerate(self._folder.files[split]):
      yield i, {"image": read_image(file, self._folder.shape), "label": label}

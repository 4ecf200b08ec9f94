"""CIFAR-10 / CIFAR-100 from the official *binary* archives, as TFDS array_record without TensorFlow.

`cifar-10-binary.tar.gz` holds `cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin` and
`batches.meta.txt` (the class names, one a line); `cifar-100-binary.tar.gz` holds
`cifar-100-binary/{train,test}.bin` and `fine_label_names.txt`. A record is fixed-size: the label
byte(s) (CIFAR-100: coarse, then fine) and 3072 pixel bytes, the 32x32 red plane, then green, then
blue, rows first. No pickle is read. Records keep the archive's order.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tarfile

import numpy as np
import tensorflow_datasets as tfds

from cu_jax.utils.errors import UserError

PIXELS = 32 * 32 * 3
# The classes in label order, as the archives' names files list them.
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")
CIFAR100_FINE_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm")


@dataclasses.dataclass(frozen=True)
class Layout:
  archive: str
  folder: str
  members: dict[str, tuple[str, ...]]  # split -> record files
  names_file: str
  class_names: tuple[str, ...]
  label_bytes: int  # bytes before the pixels
  label_at: int  # which of them is the class label


LAYOUTS = {
    "cifar10": Layout("cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                      {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
                      "batches.meta.txt", CIFAR10_NAMES, 1, 0),
    "cifar100": Layout("cifar-100-binary.tar.gz", "cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)},
                       "fine_label_names.txt", CIFAR100_FINE_NAMES, 2, 1),
}


def archive_path(name: str, archive_dir: str) -> pathlib.Path:
  return pathlib.Path(archive_dir).expanduser() / LAYOUTS[name].archive


def read_archive(name: str, archive_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{split: (images (N, 32, 32, 3) uint8, labels (N,))} of an official binary archive; one
  `UserError` naming the archive or member for anything missing or malformed (its class names
  file included: they must be the dataset's)."""
  layout, path = LAYOUTS[name], archive_path(name, archive_dir)
  if not path.is_file():
    raise UserError(f"{path} not found: put the official {layout.archive} (the binary version) there, or set "
                    "--config.data.archive_dir to the folder that holds it; or point --config.data.data_dir at a "
                    f"TFDS-prepared {name} (BUILD.md, 'Real datasets')")
  record = layout.label_bytes + PIXELS
  try:
    with tarfile.open(path, "r:gz") as tar:
      def member(file: str) -> bytes:
        try:
          handle = tar.extractfile(f"{layout.folder}/{file}")
        except KeyError:
          handle = None
        if handle is None:
          raise UserError(f"{path} has no {layout.folder}/{file}; is it the binary version of {name}?")
        return handle.read()

      names = tuple(line.strip() for line in member(layout.names_file).decode().splitlines() if line.strip())
      if names != layout.class_names:
        raise UserError(f"{path}: {layout.names_file} lists {len(names)} classes {names[:3]}..., not {name}'s; is it "
                        f"the official {layout.archive}?")
      splits = {}
      for split, files in layout.members.items():
        data = b"".join(member(f) for f in files)
        if not data or len(data) % record:
          raise UserError(f"{path}: the {split} records are {len(data)} bytes, not a multiple of {record}; the "
                          "archive is damaged (download it again)")
        rows = np.frombuffer(data, np.uint8).reshape(-1, record)
        labels = rows[:, layout.label_at].astype(np.int64)
        images = rows[:, layout.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        splits[split] = (np.ascontiguousarray(images), labels)
  except (tarfile.TarError, EOFError, OSError) as e:
    raise UserError(f"{path} is damaged ({type(e).__name__}: {e}); download it again") from None
  if any(labels.max(initial=0) >= len(names) for _, labels in splits.values()):
    raise UserError(f"{path}: labels beyond the {len(names)} class names of {layout.names_file}; the archive is damaged")
  return splits


class CifarBinary(tfds.core.GeneratorBasedBuilder):
  """CIFAR-10 (config `cifar10`) or CIFAR-100 with its fine labels (`cifar100`) from the binary archive."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="cifar10", description="CIFAR-10, 50,000 train / 10,000 test"),
                     tfds.core.BuilderConfig(name="cifar100", description="CIFAR-100 fine labels, 50,000 / 10,000")]

  def __init__(self, *, archive_dir: str, **kwargs):
    self._archive_dir = archive_dir
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=f"{self.builder_config.name} from the official binary archive.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(LAYOUTS[self.builder_config.name].class_names))}),
        supervised_keys=("image", "label"), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    splits = read_archive(self.builder_config.name, self._archive_dir)
    return {split: self._generate_examples(*arrays) for split, arrays in splits.items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}

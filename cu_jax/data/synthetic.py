"""A synthetic concept dataset with per-image ground-truth concept labels.

Each 32x32 RGB image shows a few coloured primitives ("parts") on a noisy background. A concept
is one primitive (a shape in a fixed colour); every class is defined by three concepts, and
classes share concepts in a known pattern, so the pipeline's answers (key concepts, donor class)
can be graded against the truth. Each image also shows one or two distractor concepts that are
not part of its class, and each class concept is dropped with a small probability, so no single
concept decides the class.

Exposed as a TFDS builder (`synthetic_concepts`, array_record, no TensorFlow) whose records carry
`image`, `label` and `concepts` (a multi-hot vector over `CONCEPTS`).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

SHAPES = ("disk", "square", "triangle", "cross", "ring", "bar")
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 220, 40)}
# 12 concepts: every shape in two colours.
CONCEPTS = tuple(f"{colour} {shape}" for shape, colours in zip(
    SHAPES, [("red", "blue"), ("green", "yellow"), ("blue", "red"), ("yellow", "green"),
             ("red", "green"), ("blue", "yellow")]) for colour in colours)
# Class -> its three defining concepts (indices into CONCEPTS). Pairs of classes share two
# concepts (0/1, 2/3, 4/5) or one (the rest), so every class has a true "donor".
CLASS_CONCEPTS = ((0, 2, 4), (0, 2, 5), (1, 6, 8), (1, 6, 9), (3, 7, 10), (3, 7, 11),
                  (4, 8, 11), (5, 9, 10), (2, 8, 10), (0, 6, 11))
CLASS_NAMES = tuple(f"class_{i}" for i in range(len(CLASS_CONCEPTS)))
IMAGE_SIZE = 32
_CELL = 14  # primitives are drawn in a 14x14 cell at a random position


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
  yy, xx = np.mgrid[0:size, 0:size] + 0.5
  c = size / 2
  r = size / 2 * rng.uniform(0.8, 1.0)
  dy, dx = yy - c, xx - c
  if shape == "disk":
    return dy**2 + dx**2 <= r**2
  if shape == "square":
    return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
  if shape == "triangle":
    return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.55)
  if shape == "cross":
    w = r * 0.3
    return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
  if shape == "ring":
    d2 = dy**2 + dx**2
    return (d2 <= r**2) & (d2 >= (r * 0.55) ** 2)
  if shape == "bar":
    return (np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)
  raise ValueError(shape)


def render(concepts: list[int], rng: np.random.Generator) -> np.ndarray:
  """One image showing the given concepts at random, mostly non-overlapping positions."""
  img = rng.normal(60, 12, (IMAGE_SIZE, IMAGE_SIZE, 3))
  corners = rng.permutation([(0, 0), (0, 1), (1, 0), (1, 1)])
  for k, concept in enumerate(concepts):
    colour, shape = CONCEPTS[concept].split(" ")
    qy, qx = corners[k % 4]
    y = qy * 16 + rng.integers(0, 16 - _CELL + 3) if k < 4 else rng.integers(0, IMAGE_SIZE - _CELL)
    x = qx * 16 + rng.integers(0, 16 - _CELL + 3) if k < 4 else rng.integers(0, IMAGE_SIZE - _CELL)
    y, x = min(y, IMAGE_SIZE - _CELL), min(x, IMAGE_SIZE - _CELL)
    mask = _shape_mask(shape, _CELL, rng)
    shade = np.asarray(COLOURS[colour]) * rng.uniform(0.8, 1.1)
    region = img[y:y + _CELL, x:x + _CELL]
    region[mask] = shade + rng.normal(0, 8, (mask.sum(), 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def sample(label: int, rng: np.random.Generator, *, drop: float = 0.1,
           distractors: tuple[int, int] = (1, 2)) -> tuple[np.ndarray, np.ndarray]:
  """(image, multi-hot concepts) of one example of class `label`."""
  own = [c for c in CLASS_CONCEPTS[label] if rng.random() >= drop]
  if len(own) < 2:  # keep at least two of the class's concepts
    own = list(rng.choice(CLASS_CONCEPTS[label], 2, replace=False))
  others = [c for c in range(len(CONCEPTS)) if c not in CLASS_CONCEPTS[label]]
  n_distract = rng.integers(distractors[0], distractors[1] + 1)
  shown = own + list(rng.choice(others, n_distract, replace=False))
  multi_hot = np.zeros(len(CONCEPTS), np.uint8)
  multi_hot[shown] = 1
  return render(list(rng.permutation(shown)), rng), multi_hot


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images (n, 32, 32, 3) uint8, labels (n,), concepts (n, 12)), classes balanced."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % len(CLASS_CONCEPTS)
  rng.shuffle(labels)
  images = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  concepts = np.zeros((n, len(CONCEPTS)), np.uint8)
  for i, label in enumerate(labels):
    images[i], concepts[i] = sample(int(label), rng)
  return images, labels, concepts


class SyntheticConcepts(tfds.core.GeneratorBasedBuilder):
  """Synthetic images with ground-truth concepts: 10 classes x 3 concepts of 12.

  Configs: `default` (10,000 train / 2,000 test) and `small` (1,000 / 400, for tests).
  """

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="10,000 train / 2,000 test"),
                     tfds.core.BuilderConfig(name="small", description="1,000 train / 400 test")]
  SIZES = {"default": {"train": 10000, "test": 2000}, "small": {"train": 1000, "test": 400}}

  @property
  def split_sizes(self) -> dict[str, int]:
    return self.SIZES[self.builder_config.name]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            "concepts": tfds.features.Tensor(shape=(len(CONCEPTS),), dtype=np.uint8),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(concepts=list(CONCEPTS),
                                        class_concepts=[list(c) for c in CLASS_CONCEPTS]),
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in self.split_sizes}

  def _generate_examples(self, split):
    images, labels, concepts = generate(self.split_sizes[split], seed={"train": 0, "test": 1}[split])
    for i in range(len(labels)):
      yield i, {"image": images[i], "label": int(labels[i]), "concepts": concepts[i]}

"""The concept lists and the Fashion-MNIST attribute table shipped in cu_jax/concepts/data."""

import collections
import importlib.resources
import itertools
import json

import pytest

from tfds_fixtures import CIFAR10_NAMES, CIFAR100_FINE_NAMES

# Class names exactly as the TFDS datasets' ClassLabel features spell them, in label order (shared
# with the official-TFDS fixtures).
CIFAR10, CIFAR100 = list(CIFAR10_NAMES), list(CIFAR100_FINE_NAMES)
FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                 "Bag", "Ankle boot"]
EXPECTED = {"cifar10": CIFAR10, "cifar100": CIFAR100, "fashion_mnist": FASHION_MNIST}


def _load(name: str) -> dict:
  resource = importlib.resources.files("cu_jax.concepts") / "data" / name
  return json.loads(resource.read_text(encoding="utf-8"))


def test_expected_lists_are_sane():
  assert len(CIFAR10) == 10 and len(CIFAR100) == 100 and len(FASHION_MNIST) == 10
  assert CIFAR100 == sorted(CIFAR100) and len(set(CIFAR100)) == 100


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_concept_list(dataset):
  data = _load(f"{dataset}.json")
  assert data["dataset"] == dataset
  assert isinstance(data["source"], str) and data["source"]
  classes = data["classes"]
  assert list(classes) == EXPECTED[dataset]
  for name, concepts in classes.items():
    assert isinstance(concepts, list) and all(isinstance(c, str) for c in concepts), name
    assert all(c == c.strip() and c for c in concepts), name
    assert len(set(concepts)) == len(concepts), f"{name}: duplicate concepts"
    assert len(set(concepts)) >= 5, f"{name}: only {len(concepts)} concepts"
    assert name.lower().replace("_", " ") not in {c.lower() for c in concepts}, name
  counts = collections.Counter(c for concepts in classes.values() for c in set(concepts))
  shared = [c for c, n in counts.items() if n >= 2]
  assert len(shared) >= 3, f"{dataset}: too few concepts shared by two or more classes"


def test_fashion_mnist_attribute_table():
  table = _load("fashion_mnist_attributes.json")
  assert table["dataset"] == "fashion_mnist"
  assert table["classes"] == FASHION_MNIST
  attributes = table["attributes"]
  assert 10 <= len(attributes) <= 30
  per_class = collections.Counter()
  for attribute, members in attributes.items():
    assert len(set(members)) == len(members), attribute
    assert set(members) <= set(FASHION_MNIST), f"{attribute}: unknown classes {set(members) - set(FASHION_MNIST)}"
    assert len(members) >= 1, f"{attribute}: no positive class"
    assert len(FASHION_MNIST) - len(members) >= 2, f"{attribute}: fewer than two negative classes"
    per_class.update(members)
  for name in FASHION_MNIST:
    assert per_class[name] >= 2, f"{name} has fewer than two attributes"
  # Every pair of classes differs in at least one attribute (shirt vs coat, sneaker vs sandal, ...).
  rows = {name: frozenset(a for a, members in attributes.items() if name in members)
          for name in FASHION_MNIST}
  for a, b in itertools.combinations(FASHION_MNIST, 2):
    assert rows[a] != rows[b], f"{a} and {b} have the same attributes"


@pytest.mark.parametrize("dataset, names", [("cifar10", CIFAR10), ("cifar100", CIFAR100)])
def test_cifar_attribute_labels_come_from_the_shipped_concept_lists(dataset, names):
  """The paper config's CAV bank (concepts.source=attributes) on CIFAR needs no file of the user's:
  the shipped class -> concepts list, read as a class-attribute table, labels every train image."""
  import ml_collections as mlc
  import numpy as np
  from cu_jax.concepts.sources import attribute_labels
  from cu_jax.data.datasets import Dataset
  ds = Dataset(name=dataset, splits={}, class_names=tuple(names), image_shape=(32, 32, 3))
  labels = np.arange(len(names)).repeat(3)
  found = attribute_labels(ds, mlc.ConfigDict({"file": ""}), labels)
  lists = _load(f"{dataset}.json")["classes"]
  assert set(found.names) == {c for concepts in lists.values() for c in concepts}
  for i, image_label in enumerate(labels):
    shown = {found.names[j] for j in np.flatnonzero(found.labels[i])}
    assert shown == set(lists[names[image_label]])
  assert found.info["file"].startswith(f"cu_jax/concepts/data/{dataset}.json")

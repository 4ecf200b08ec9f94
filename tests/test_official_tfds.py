"""Official TFDS datasets (cifar10, cifar100, fashion_mnist) read by name from a prepared data_dir.

The datasets are fabricated by `tests/tfds_fixtures.py` with the official builder classes, in the
layout `tfds build NAME --file_format=array_record` writes, then read through
`cu_jax.data.datasets.load_dataset` exactly as a user's prepared copy would be; TensorFlow is
never imported.
"""

import sys

import ml_collections as mlc
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from cu_jax.data.datasets import load_dataset, read_arrays
from cu_jax.data.loader import TrainLoader
from cu_jax.parallel.mesh import make_mesh
from cu_jax.utils.errors import UserError
import tfds_fixtures

# name -> (num_classes, image_shape, official version, extra ClassLabel keys)
OFFICIAL = {
    "cifar10": (10, (32, 32, 3), "3.0.2", ()),
    "cifar100": (100, (32, 32, 3), "3.0.2", ("coarse_label",)),
    "fashion_mnist": (10, (28, 28, 1), "3.0.1", ()),
}
EXPECTED_NAMES = {
    "cifar10": tfds_fixtures.CIFAR10_NAMES,
    "cifar100": tfds_fixtures.CIFAR100_FINE_NAMES,
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """name -> (data_dir, arrays written per split); each dataset is fabricated once per module."""
  cache = {}

  def get(name):
    if name not in cache:
      data_dir = tmp_path_factory.mktemp(f"tfds_{name}")
      cache[name] = (str(data_dir), tfds_fixtures.prepare_official(name, data_dir))
    return cache[name]

  return get


def _cfg(name, data_dir):
  return mlc.ConfigDict(dict(name=name, data_dir=str(data_dir)))


def _match_written(got, written):
  """Index into `written` of each record read back (records are shuffled when prepared)."""
  where = {img.tobytes(): i for i, img in enumerate(written["image"])}
  assert len(where) == len(written["image"])  # random images are distinct
  order = np.array([where.get(img.tobytes(), -1) for img in got["image"]])
  assert (order >= 0).all(), "an image read back differs from every image written"
  assert sorted(order.tolist()) == list(range(len(written["image"])))  # each record exactly once
  return order


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_dataset_reads_back_exactly_without_tensorflow(name, prepared):
  num_classes, image_shape, version, extra_labels = OFFICIAL[name]
  data_dir, written = prepared(name)
  # The layout `tfds build --file_format=array_record` writes.
  version_dir = tfds.builder(name, data_dir=data_dir).data_path
  assert version_dir.name == version and version_dir.parent.name == name
  for split in ("train", "test"):
    assert (version_dir / f"{name}-{split}.array_record-00000-of-00001").exists()
  assert (version_dir / "dataset_info.json").exists() and (version_dir / "features.json").exists()

  ds = load_dataset(_cfg(name, data_dir))
  assert "tensorflow" not in sys.modules
  assert ds.num_classes == num_classes and ds.image_shape == image_shape
  assert ds.class_names == EXPECTED_NAMES[name]
  assert set(ds.splits) == {"train", "test"}

  # Each record is a serialized tf.train.Example whose image is PNG bytes, as the real build
  # writes (parsed with TFDS's bundled proto, not TensorFlow).
  raw = tfds.builder(name, data_dir=data_dir).as_data_source(
      "test", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  example = tf_example_pb2.Example.FromString(raw[0])
  assert set(example.features.feature) == set(tfds.builder(name, data_dir=data_dir).info.features)
  png = example.features.feature["image"].bytes_list.value[0]
  assert png.startswith(b"\x89PNG\r\n\x1a\n")

  keys = ("image", "label") + extra_labels
  for split in ("train", "test"):
    source = ds.split(split)
    assert len(source) == len(written[split]["label"])
    got = read_arrays(source, keys=keys)
    assert got["image"].dtype == np.uint8 and got["image"].shape[1:] == image_shape
    order = _match_written(got, written[split])
    for key in keys:
      np.testing.assert_array_equal(got[key], written[split][key][order], err_msg=key)
    if "id" in written[split]:  # cifar: the id travels with its record
      ids = read_arrays(source, keys=("id",))["id"]
      assert [i.decode() for i in ids] == written[split]["id"][order].tolist()
  assert "tensorflow" not in sys.modules


def test_cifar100_uses_the_fine_label(prepared):
  data_dir, written = prepared("cifar100")
  ds = load_dataset(_cfg("cifar100", data_dir))
  assert ds.class_index("aquarium_fish") == 1 and ds.class_index("worm") == 99
  builder = tfds.builder("cifar100", data_dir=data_dir)
  assert builder.info.features["coarse_label"].names == list(tfds_fixtures.CIFAR100_COARSE_NAMES)
  assert builder.info.features["label"].num_classes == 100


def test_train_loader_batches_an_official_dataset(prepared):
  data_dir, written = prepared("cifar10")
  source = load_dataset(_cfg("cifar10", data_dir)).split("train")
  loader = TrainLoader(source, global_batch=8, mesh=make_mesh(8), seed=0)
  assert loader.steps_per_epoch == 2
  (step, batch), = list(loader.iterate(1, 2))
  assert step == 1
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, 32, 32, 3)
  assert batch["label"].sharding.spec[0] == "data" and len(batch["label"].addressable_shards) == 8
  everything = read_arrays(source)
  idx = loader.global_indices(1)
  np.testing.assert_array_equal(np.asarray(batch["image"]), everything["image"][idx])
  np.testing.assert_array_equal(np.asarray(batch["label"]), everything["label"][idx])
  order = _match_written(everything, written["train"])
  np.testing.assert_array_equal(np.asarray(batch["label"]), written["train"]["label"][order][idx])
  assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("file_format", ["tfrecord", None], ids=["tfrecord", "unset_old_tfds"])
def test_dataset_prepared_as_tfrecord_is_a_clear_error(tmp_path, file_format):
  tfds_fixtures.prepare_official("cifar10", tmp_path, n_train=2, n_test=2)
  version_dir = tfds_fixtures.rewrite_file_formats("cifar10", tmp_path, file_format)
  for shard in version_dir.glob("*.array_record-*"):  # what a tfrecord build leaves
    shard.rename(shard.with_name(shard.name.replace(".array_record-", ".tfrecord-")))
  assert tfds.builder("cifar10", data_dir=str(tmp_path)).info.file_format == tfds.core.FileFormat.TFRECORD
  with pytest.raises(UserError, match=r"'cifar10'.*tfrecord.*TensorFlow.*--file_format=array_record"):
    load_dataset(_cfg("cifar10", tmp_path))
  assert "tensorflow" not in sys.modules


def test_tfrecord_dataset_converted_to_array_record_is_accepted(tmp_path):
  written = tfds_fixtures.prepare_official("cifar10", tmp_path, n_train=4, n_test=2)
  tfds_fixtures.rewrite_file_formats("cifar10", tmp_path, "tfrecord", ("array_record",))
  ds = load_dataset(_cfg("cifar10", tmp_path))
  assert ds.class_names == tfds_fixtures.CIFAR10_NAMES and ds.image_shape == (32, 32, 3)
  for split in ("train", "test"):
    got = read_arrays(ds.split(split))
    order = _match_written(got, written[split])
    np.testing.assert_array_equal(got["label"], written[split]["label"][order])
  assert "tensorflow" not in sys.modules

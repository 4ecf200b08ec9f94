"""Datasets through TFDS array_record (no TensorFlow), and the sharded loader."""

import sys

import numpy as np
import pytest
import ml_collections as mlc

from cu_jax.data import builders
from cu_jax.data.datasets import ArraySource, load_dataset, read_arrays, train_subset
from cu_jax.data.idx import read_idx, write_idx
from cu_jax.data.loader import TrainLoader, eval_batches
from cu_jax.parallel.mesh import make_mesh
from cu_jax.utils.errors import UserError


def _fake_fashion_mnist(folder, n_train=40, n_test=20):
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    stems = builders._IDX_FILES[split]
    write_idx(folder / (stems[0] + ".gz"), images)
    write_idx(folder / (stems[1] + ".gz"), labels)
    arrays[split] = (images, labels)
  return arrays


def test_idx_roundtrip(tmp_path):
  a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  write_idx(tmp_path / "a.gz", a)
  np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
  (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
  with pytest.raises(ValueError, match="not an IDX file"):
    read_idx(tmp_path / "bad")


def test_fashion_mnist_builder_keeps_order_and_pixels(tmp_path):
  idx = tmp_path / "idx"
  idx.mkdir()
  truth = _fake_fashion_mnist(idx)
  cfg = mlc.ConfigDict(dict(name="fashion_mnist_idx", data_dir=str(tmp_path / "tfds"), idx_dir=str(idx)))
  ds = load_dataset(cfg)
  assert "tensorflow" not in sys.modules
  assert ds.num_classes == 10 and ds.image_shape == (28, 28, 1)
  assert ds.class_names[9] == "ankle boot"
  assert any(p.suffix.startswith(".array_record") or "array_record" in p.name
             for p in (tmp_path / "tfds").rglob("*"))
  for split in ("train", "test"):
    got = read_arrays(ds.split(split))
    np.testing.assert_array_equal(got["image"][..., 0], truth[split][0])
    np.testing.assert_array_equal(got["label"], truth[split][1])
  assert ds.class_index("Sandal") == 5 and ds.class_index("7") == 7
  with pytest.raises(UserError, match="valid names"):
    ds.class_index("hat")
  with pytest.raises(UserError, match="out of range"):
    ds.class_index(10)


def test_empty_data_dir_means_tfds_data_dir_not_the_working_directory(tmp_path, monkeypatch):
  idx, cwd = tmp_path / "idx", tmp_path / "cwd"
  idx.mkdir(), cwd.mkdir()
  truth = _fake_fashion_mnist(idx)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.chdir(cwd)
  ds = load_dataset(mlc.ConfigDict(dict(name="fashion_mnist_idx", data_dir="", idx_dir=str(idx))))
  np.testing.assert_array_equal(read_arrays(ds.split("test"))["label"], truth["test"][1])
  assert (tmp_path / "tfds" / "fashion_mnist_idx").is_dir() and not any(cwd.iterdir())


def test_missing_fashion_mnist_folder_says_how_to_install(tmp_path):
  cfg = mlc.ConfigDict(dict(name="fashion_mnist_idx", data_dir=str(tmp_path / "tfds"),
                            idx_dir=str(tmp_path / "nowhere")))
  with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist.*idx_dir"):
    load_dataset(cfg)
  assert not (tmp_path / "tfds").exists()


def test_unprepared_official_dataset_is_a_clear_error(tmp_path):
  cfg = mlc.ConfigDict(dict(name="fashion_mnist", data_dir=str(tmp_path)))
  with pytest.raises(UserError, match="'fashion_mnist' is not prepared.*array_record"):
    load_dataset(cfg)
  cfg = mlc.ConfigDict(dict(name="cifar10", data_dir=str(tmp_path)))  # (no binary archive either)
  with pytest.raises(UserError, match=r"downloads/manual/cifar-10-binary.tar.gz not found: .*or point "
                                      r"--config.data.data_dir at a TFDS-prepared cifar10"):
    load_dataset(cfg)
  with pytest.raises(UserError, match="unknown dataset 'cifar11'.*valid: .*cifar10"):
    load_dataset(mlc.ConfigDict(dict(name="cifar11", data_dir=str(tmp_path))))


def test_digits_builder(tmp_path):
  ds = load_dataset(mlc.ConfigDict(dict(name="digits", data_dir=str(tmp_path))))
  n_train, n_test = len(ds.split("train")), len(ds.split("test"))
  assert n_train + n_test == 1797 and abs(n_test - 1797 / 5) < 10
  labels = read_arrays(ds.split("test"), keys=("label",))["label"]
  assert set(labels.tolist()) == set(range(10))


def test_loader_is_deterministic_epoch_aware_and_sharded():
  n = 100
  source = ArraySource(image=np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(2, 1).repeat(2, 2),
                       label=np.arange(n))
  mesh = make_mesh(8)
  loader = TrainLoader(source, global_batch=16, mesh=mesh, seed=3)
  assert loader.steps_per_epoch == 6
  epoch0 = np.concatenate([loader.global_indices(s) for s in range(6)])
  assert len(set(epoch0.tolist())) == 96  # no repeats within an epoch
  epoch1 = np.concatenate([loader.global_indices(s) for s in range(6, 12)])
  assert not np.array_equal(epoch0, epoch1)  # reshuffled per epoch
  again = TrainLoader(source, global_batch=16, mesh=mesh, seed=3)
  np.testing.assert_array_equal(again.global_indices(7), loader.global_indices(7))
  batches = list(loader.iterate(5, 8))
  assert [s for s, _ in batches] == [5, 6, 7]
  step, batch = batches[1]
  np.testing.assert_array_equal(np.asarray(batch["label"]), loader.global_indices(6))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (16, 2, 2, 1)
  assert batch["label"].sharding.spec[0] == "data" and len(batch["label"].addressable_shards) == 8


def test_eval_batches_cover_everything_once_with_a_mask():
  source = ArraySource(image=np.zeros((21, 2, 2, 1), np.uint8), label=np.arange(21))
  seen = []
  for batch in eval_batches(source, global_batch=8, mesh=make_mesh(8)):
    mask = np.asarray(batch["mask"]) > 0
    seen += np.asarray(batch["label"])[mask].tolist()
  assert seen == list(range(21))


def test_train_subset_is_a_seeded_sorted_sample_and_refuses_a_bad_size():
  source = ArraySource(label=np.arange(50))
  sub = train_subset(source, 20, seed=3, name="toy")
  rows = np.array([r["label"] for r in sub.__getitems__(list(range(len(sub))))])
  assert len(sub) == 20 and len(set(rows)) == 20 and (np.diff(rows) > 0).all()
  again = train_subset(source, 20, seed=3, name="toy")
  assert (np.array([r["label"] for r in again.__getitems__(list(range(20)))]) == rows).all()
  other = train_subset(source, 20, seed=4, name="toy")
  assert (np.array([r["label"] for r in other.__getitems__(list(range(20)))]) != rows).any()
  assert train_subset(source, 0, seed=3, name="toy") is source
  with pytest.raises(UserError, match="data.train_examples=51"):
    train_subset(source, 51, seed=3, name="toy")

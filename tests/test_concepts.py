"""Concept banks (safe format), CAV learning, concept sources and the synthetic concept dataset."""

import json

import ml_collections as mlc
import numpy as np
import pytest

from cu_jax.concepts import cav
from cu_jax.concepts.bank import ConceptBank
from cu_jax.concepts.sources import CONCEPT_SOURCES, load_concept_list
from cu_jax.data import synthetic
from cu_jax.data.datasets import Dataset, load_dataset, read_arrays
from cu_jax.utils.errors import UserError


def test_bank_roundtrip_is_safetensors_and_json(tmp_path):
  bank = ConceptBank(np.arange(6, dtype=np.float32).reshape(3, 2), np.ones(3, np.float32), ("a", "b", "c"),
                     ({"heldout_accuracy": 0.9},) * 3)
  bank.save(tmp_path / "bank")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.json", "bank.safetensors"]
  back = ConceptBank.load(tmp_path / "bank")
  np.testing.assert_array_equal(back.vectors, bank.vectors)
  assert back.names == bank.names and back.quality == bank.quality
  assert back.select(np.array([True, False, True])).names == ("a", "c")
  with pytest.raises(UserError, match="dimension 2 but the model's embeddings have dimension 5"):
    back.check_dim(5)
  with pytest.raises(UserError, match="no concept bank"):
    ConceptBank.load(tmp_path / "missing")


def test_cavs_recover_planted_directions_and_drop_noise():
  rng = np.random.default_rng(0)
  n, d = 1200, 16
  labels = rng.random((n, 3)) < 0.4
  x = rng.normal(size=(n, d)).astype(np.float32)
  x[:, 0] += 3 * labels[:, 0]  # concept 0 lives on axis 0
  x[:, 1] -= 3 * labels[:, 1]  # concept 1 on axis 1, negatively
  # concept 2 is pure noise: not learnable
  bank, full = cav.learn_cav_bank(x, labels, ["zero", "one", "noise"], cav.CAVOptions(n_per_side=100))
  assert bank.names == ("zero", "one")
  assert full.quality[2]["heldout_accuracy"] < 0.7 <= min(q["heldout_accuracy"] for q in bank.quality)
  unit = bank.vectors / np.linalg.norm(bank.vectors, axis=1, keepdims=True)
  assert unit[0, 0] > 0.8 and unit[1, 1] < -0.8  # 200 examples in 16 dims: cosine ~0.9


def _fake_dataset(names):
  return Dataset(name="fashion_mnist", splits={}, class_names=tuple(names), image_shape=(28, 28, 1))


FASHION = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot")


def test_attribute_source_maps_classes_to_per_example_labels():
  ds = _fake_dataset(FASHION)
  labels = np.array([7, 5, 1])
  src = CONCEPT_SOURCES.get("attributes")(ds, mlc.ConfigDict({"file": ""}), labels)
  assert src.labels.shape == (3, len(src.names))
  table = np.asarray(src.info["class_attributes"])
  np.testing.assert_array_equal(src.labels, table[labels])
  assert src.labels[0, src.names.index("laces")] and not src.labels[1, src.names.index("laces")]


def test_concept_files_naming_unknown_classes_are_refused(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"attributes": {"laces": ["sneaker", "hat"]}}))
  with pytest.raises(UserError, match=r"names classes \['hat'\] that dataset 'fashion_mnist' does not have"):
    CONCEPT_SOURCES.get("attributes")(_fake_dataset(FASHION), mlc.ConfigDict({"file": str(bad)}), np.zeros(0, int))
  lists = load_concept_list(_fake_dataset(FASHION))
  assert "laces" in lists["sneaker"]
  with pytest.raises(UserError, match="unknown concept source 'wiki'.*attributes"):
    CONCEPT_SOURCES.get("wiki")


def test_synthetic_dataset_has_ground_truth_concepts(tmp_path):
  ds = load_dataset(mlc.ConfigDict(dict(name="synthetic_concepts_small", data_dir=str(tmp_path))))
  assert ds.image_shape == (32, 32, 3) and ds.num_classes == 10
  assert ds.metadata["concepts"] == list(synthetic.CONCEPTS)
  data = read_arrays(ds.split("train"), keys=("image", "label", "concepts"))
  assert data["concepts"].shape == (1000, 12) and len(ds.split("test")) == 400
  for label, concepts in zip(data["label"], data["concepts"]):
    own = concepts[list(synthetic.CLASS_CONCEPTS[label])]
    assert own.sum() >= 2 and concepts.sum() - own.sum() >= 1  # class concepts + distractors
  again = synthetic.generate(20, seed=0)
  np.testing.assert_array_equal(again[0], synthetic.generate(20, seed=0)[0])  # deterministic
  src = CONCEPT_SOURCES.get("labels")(ds, mlc.ConfigDict(), data["label"])
  np.testing.assert_array_equal(src.labels, data["concepts"].astype(bool))


def test_concept_ig_is_complete_from_a_given_baseline():
  from cu_jax.concepts.importance import concept_ig
  rng = np.random.default_rng(0)
  weight, bias = rng.normal(size=(4, 6)), rng.normal(size=4)
  scores, labels = rng.normal(size=(40, 6)), np.arange(40) % 4
  reference = rng.normal(size=6)  # e.g. the mean scores of another sample (evaluate's balanced set)
  log_p = lambda s: (s @ weight.T + bias) - np.log(np.exp(s @ weight.T + bias).sum(-1, keepdims=True))
  _, signed, delta = concept_ig(weight, bias, scores, labels, baseline=reference, n_steps=32)
  gain = log_p(scores)[np.arange(40), labels] - log_p(reference[None])[0, labels]
  for c in range(4):  # per-class mean attributions sum to the class's mean gain over the baseline
    np.testing.assert_allclose(signed[c].sum(), gain[labels == c].mean(), rtol=1e-3, atol=1e-4)
  assert delta < 1e-3
  by_name = concept_ig(weight, bias, scores, labels, baseline="mean")
  by_vector = concept_ig(weight, bias, scores, labels, baseline=scores.mean(0))
  np.testing.assert_allclose(by_name[1], by_vector[1], rtol=1e-6)

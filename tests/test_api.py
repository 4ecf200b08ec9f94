"""The Python API: the README's example as written, and the building blocks on known cases."""

import json
import pathlib
import re

import numpy as np
import pytest

import cu_jax
from cu_jax.concepts.bank import ConceptBank

ROOT = pathlib.Path(__file__).parents[1]


def _readme_example() -> str:
  text = (ROOT / "README.md").read_text()
  section = text[text.index("## Python API"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # its workdir, runs/api, is relative
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  namespace = {}
  exec(compile(_readme_example(), "README.md", "exec"), namespace)
  results, table = namespace["results"], namespace["table"]
  assert (tmp_path / "runs" / "api" / "report" / "report.json").exists()
  assert results.models == ["original", "concept_poison", "scrub", "retrain"]
  assert results.donor["index"] != results.forget_class["index"] and len(results.key_concepts) == 3
  assert results.model_files["concept_poison"].is_file()
  # the blocks: unlearning the same model again forgets, and keeps the rest
  assert table["original"]["acc_forget_test"] > 0.2
  assert table["unlearned"]["acc_forget_test"] <= 0.05
  assert table["unlearned"]["acc_retain_test"] >= table["original"]["acc_retain_test"] - 0.1
  assert table["unlearned"]["agreement_forget"] is None  # no retrained model was given to audit
  assert "->" in capsys.readouterr().out
  exported = json.loads((tmp_path / "runs" / "api" / "unlearned-hf" / "config.json").read_text())
  assert exported["architectures"] == ["ViTForImageClassification"]
  assert list(exported["id2label"].values()) == list(results.dataset.class_names)


def test_key_concepts_finds_the_concept_that_sets_the_class_apart_and_its_donor():
  """Embeddings whose concept directions are known: class 0 shows a and b strongly, class 1 shows a
  strongly and b weakly, class 2 shows c. Only b tells class 0 from class 1: it is the key concept,
  and class 1, which shows some b, is the donor."""
  rng = np.random.default_rng(0)
  shows = np.array([[3, 3, 0], [3, 1, 0], [0, 0, 3]], np.float32)
  labels = np.repeat(np.arange(3), 200)
  embeddings = (shows[labels] + 0.3 * rng.normal(size=(600, 3))).astype(np.float32)
  bank = ConceptBank(vectors=np.eye(3, dtype=np.float32), intercepts=np.zeros(3, np.float32), names=("a", "b", "c"))
  found = cu_jax.key_concepts(embeddings, labels, bank, forget=0, top_k=1)
  assert found.names == ["b"] and found.donor == 1
  assert found.importance.shape == (3, 3) and found.head[0].shape == (3, 3)


def test_poison_targets_and_config_overrides_say_what_is_wrong():
  targets = cu_jax.poison_targets(4, forget=1, num_classes=3, strategy="targeted", donor=2)
  np.testing.assert_array_equal(targets, np.tile([0.0, 0.0, 1.0], (4, 1)))
  with pytest.raises(ValueError, match="needs donor="):
    cu_jax.poison_targets(4, forget=1, num_classes=3, strategy="targeted")
  with pytest.raises(ValueError, match=r"cannot set config field 'unlearn.nope'"):
    cu_jax.load_config("configs/vit.py:tiny", {"unlearn.nope": 1})

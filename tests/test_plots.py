"""The unlearning-report plots write readable PNGs, also with None/NaN entries and many models."""

import matplotlib.image
import numpy as np
import pytest

from cu_jax.evaluation import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODELS = ["original", "concept_poison", "retrain", "finetune", "grad_ascent", "random_label", "scrub", "salun"]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _check_png(path):
  assert path.is_file()
  assert path.read_bytes()[:8] == PNG_SIGNATURE
  image = matplotlib.image.imread(path)
  assert image.shape[0] > 200 and image.shape[1] > 200, image.shape


def test_per_class_accuracy(tmp_path):
  rng = np.random.default_rng(0)
  accs = {m: list(rng.uniform(0.5, 1.0, len(CLASSES))) for m in MODELS}
  accs["retrain"][3] = 0.0
  accs["scrub"][5] = None
  accs["salun"][3] = float("nan")
  path = tmp_path / "nested" / "per_class.png"  # parent folder created
  plots.per_class_accuracy(CLASSES, accs, path, forget=3)
  _check_png(path)
  with pytest.raises(ValueError):
    plots.per_class_accuracy(CLASSES, accs, tmp_path / "bad.png", forget=len(CLASSES))


def test_loss_distributions(tmp_path):
  rng = np.random.default_rng(1)
  losses = {}
  for j, m in enumerate(MODELS):
    forget = rng.lognormal(-6 + j, 2.0, 50)
    forget[:5] = 0.0  # exactly zero losses
    losses[m] = {"forget-train": forget, "retain-train": rng.lognormal(-5, 2.0, 300),
                 "test": np.append(rng.lognormal(-1, 1.5, 100), [np.nan, np.inf])}
  losses["scrub"]["test"] = None
  path = tmp_path / "losses.png"
  plots.loss_distributions(losses, path)
  _check_png(path)


def test_concept_importance_change(tmp_path):
  rng = np.random.default_rng(2)
  names = [f"concept {i}" for i in range(40)]
  importance = {m: rng.normal(0.0, 1.0, len(names)) for m in MODELS}
  importance["original"][[4, 17]] += 4.0
  importance["retrain"][7] = np.nan
  importance["scrub"] = None
  path = tmp_path / "concepts.png"
  plots.concept_importance_change(names, importance, path, key=[4, 17], title="forget-class concepts")
  _check_png(path)


def test_metric_bars(tmp_path):
  rng = np.random.default_rng(3)
  values = {metric: {m: float(rng.uniform(0.3, 0.9)) for m in MODELS}
            for metric in ["MIA accuracy", "MIA AUC", "forget accuracy"]}
  values["MIA AUC"]["scrub"] = None
  values["forget accuracy"]["salun"] = float("nan")
  path = tmp_path / "mia.png"
  plots.metric_bars(values, path)
  _check_png(path)
  path = tmp_path / "no_reference.png"
  plots.metric_bars({"MIA AUC": {"original": 0.7, "concept_poison": None}}, path, reference=None)
  _check_png(path)

"""README "Use it on your model", end to end: a Hugging Face ViT trained elsewhere (here: by torch, on
generated images) as the original, an image folder as the data, one CLI command; the exported
models load in transformers and agree with the report; TensorBoard reads the event files."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = pathlib.Path(__file__).parents[1]
CLASSES = ("apple", "cherry", "leaf")  # red large disk, red small disk, green large disk
ATTRIBUTES = {"red": ["apple", "cherry"], "green": ["leaf"], "large": ["apple", "leaf"], "small": ["cherry"]}
SIZE = 16


def _image(label: int, rng) -> np.ndarray:
  yy, xx = np.mgrid[:SIZE, :SIZE]
  cy, cx = rng.uniform(5, 11, 2)
  radius = 3.0 if CLASSES[label] == "cherry" else 6.0
  disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
  image = rng.integers(0, 60, (SIZE, SIZE, 3))
  color = np.array([200, 40, 40] if CLASSES[label] != "leaf" else [40, 190, 40])
  image[disk] = color + rng.integers(-30, 30, 3)
  return np.clip(image, 0, 255).astype(np.uint8)


def _write_folder(root: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  rng, arrays = np.random.default_rng(0), {}
  for split, n in (("train", 60), ("test", 20)):
    images, labels = [], []
    for label, name in enumerate(CLASSES):
      (root / split / name).mkdir(parents=True)
      for i in range(n):
        image = _image(label, rng)
        Image.fromarray(image).save(root / split / name / f"{i:03d}.png")
        images.append(image)
        labels.append(label)
    arrays[split] = (np.stack(images), np.asarray(labels))
  return arrays


def _pixels(images: np.ndarray) -> "torch.Tensor":
  return torch.from_numpy(((images.astype(np.float32) / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2))


def _train_hf_vit(folder: pathlib.Path, images: np.ndarray, labels: np.ndarray):
  """The user's model: a small ViTForImageClassification trained by torch, saved by save_pretrained."""
  torch.manual_seed(0)
  config = transformers.ViTConfig(image_size=SIZE, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, id2label=dict(enumerate(CLASSES)),
                                  label2id={c: i for i, c in enumerate(CLASSES)})
  model = transformers.ViTForImageClassification(config)
  opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
  x, y = _pixels(images), torch.from_numpy(labels)
  gen = torch.Generator().manual_seed(0)
  for _ in range(150):
    idx = torch.randint(0, len(y), (32,), generator=gen)
    loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
  model.eval().save_pretrained(folder, safe_serialization=True)
  return model


def _logits(model, images: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(pixel_values=_pixels(images)).logits.numpy()


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("own")
  arrays = _write_folder(root / "images")
  hf_model = _train_hf_vit(root / "my-vit", *arrays["train"])
  (root / "attributes.json").write_text(json.dumps({"attributes": ATTRIBUTES}))
  workdir = root / "run"
  cmd = [sys.executable, "-m", "cu_jax.main", "--config=configs/vit.py:own", f"--workdir={workdir}",
         f"--config.train.trained={root / 'my-vit'}", f"--config.data.path={root / 'images'}",
         f"--config.concepts.file={root / 'attributes.json'}", "--config.forget_class=apple",
         # sizes for a few seconds on a CPU (the README's command has none of these)
         f"--config.data.data_dir={root / 'tfds'}", f"--config.data.image_size={SIZE}",
         "--config.train.batch_size=32", "--config.train.num_epochs=8", "--config.train.eval_batch_size=64",
         "--config.optim.lr=3e-3", "--config.optim.warmup_steps=5", "--config.unlearn.train.batch_size=32",
         "--config.unlearn.train.num_epochs=8", "--config.unlearn.optim.lr=3e-3", "--config.unlearn.baselines=('scrub',)",
         "--config.concepts.n_per_side=30", "--config.concepts.n_heldout=20", "--config.attribution.saliency_images=2",
         "--config.evaluate.retain_train_examples=120", "--config.evaluate.relearn_examples=16",
         "--config.evaluate.relearn_batch_size=8", "--config.evaluate.relearn_max_steps=10", "--config.mesh.cpu_devices=2"]
  proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return workdir, arrays, hf_model


def test_own_model_is_the_original_as_it_is(own_run):
  workdir, arrays, hf_model = own_run
  done = json.loads((workdir / "train" / "done.json").read_text())
  assert done["given"].endswith("my-vit") and done["steps"] == 0 and done["class_names"] == list(CLASSES)
  assert not (workdir / "train" / "checkpoints").exists()  # loaded, not trained
  images, labels = arrays["test"]
  torch_accuracy = float((_logits(hf_model, images).argmax(-1) == labels).mean())
  assert done["test"]["accuracy"] == pytest.approx(torch_accuracy)  # the same model, evaluated by cu_jax
  assert torch_accuracy > 0.8


def test_own_model_forgets_and_exports_to_transformers(own_run):
  workdir, arrays, hf_model = own_run
  report = json.loads((workdir / "report" / "report.json").read_text())
  metrics = report["metrics"]
  assert report["forget_class"]["name"] == "apple"
  assert metrics["original"]["acc_forget_test"] > 0.7
  assert metrics["concept_poison"]["acc_forget_test"] < 0.2
  assert metrics["concept_poison"]["acc_retain_test"] > 0.7
  images, labels = arrays["test"]
  exported = {n: transformers.ViTForImageClassification.from_pretrained(workdir / "export" / n).eval()
              for n in ("original", "concept_poison", "scrub", "retrain")}
  # the original went HF -> cu_jax -> HF and is the same model
  np.testing.assert_allclose(_logits(exported["original"], images), _logits(hf_model, images), atol=1e-4)
  for name, model in exported.items():
    assert model.config.id2label == dict(enumerate(CLASSES))
    forget = labels == 0
    accuracy = float((_logits(model, images[forget]).argmax(-1) == 0).mean())
    assert accuracy == pytest.approx(metrics[name]["acc_forget_test"], abs=1.01 / forget.sum()), name


def test_own_run_writes_tensorboard_events(own_run):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  workdir, _, _ = own_run
  curve = EventAccumulator(str(workdir / "unlearn" / "concept_poison"))
  curve.Reload()
  steps = json.loads((workdir / "unlearn" / "concept_poison" / "summary.json").read_text())["steps"]
  losses = curve.Scalars("loss")
  assert losses[-1].step == steps and all(np.isfinite(e.value) for e in losses)
  jsonl = [json.loads(line) for line in (workdir / "unlearn" / "concept_poison" / "metrics.jsonl").read_text().splitlines()]
  assert [e.step for e in losses] == [r["step"] for r in jsonl]
  assert [e.value for e in losses] == pytest.approx([r["loss"] for r in jsonl], rel=1e-6)
  audit = EventAccumulator(str(workdir / "evaluate" / "tensorboard" / "concept_poison"))
  audit.Reload()
  metrics = json.loads((workdir / "evaluate" / "metrics.json").read_text())["metrics"]["concept_poison"]
  assert audit.Scalars("audit/acc_forget_test")[0].value == pytest.approx(metrics["acc_forget_test"])


@pytest.mark.parametrize("case, expected", [
    ("classes in another order", "are the dataset's in another order ['apple', 'cherry', 'leaf']"),
    ("no image folder", "data.path='' is not a folder"),
    ("no trained model", "model.patch_size=0 means 'as the Hugging Face folder says'"),
    ("one test image of the forget class", "the forget class 'apple' has 1 test images; the audit"),
])
def test_own_model_bad_input_is_one_line_and_writes_nothing(own_run, tmp_path, case, expected):
  import shutil
  workdir, _, _ = own_run
  root = workdir.parent
  trained = tmp_path / "my-vit"
  shutil.copytree(root / "my-vit", trained)
  if case == "classes in another order":
    config = json.loads((trained / "config.json").read_text())
    config["id2label"] = {"0": "cherry", "1": "apple", "2": "leaf"}
    (trained / "config.json").write_text(json.dumps(config))
  images = root / "images"
  if case == "one test image of the forget class":
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    for file in sorted((images / "test" / "apple").iterdir())[1:]:
      file.unlink()
  flags = {"no image folder": ["--config.data.path="], "no trained model": ["--config.train.trained="]}.get(case, [])
  cmd = [sys.executable, "-m", "cu_jax.main", "--config=configs/vit.py:own", f"--workdir={tmp_path / 'run'}",
         f"--config.train.trained={trained}", f"--config.data.path={images}", "--config.forget_class=apple",
         f"--config.concepts.file={root / 'attributes.json'}", f"--config.data.data_dir={tmp_path / 'tfds'}",
         f"--config.data.image_size={SIZE}", *flags]
  proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=300)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert proc.returncode == 2 and len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert not any((tmp_path / "run").glob("*/done.json"))

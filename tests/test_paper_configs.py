"""The paper configs as a user launches them, shrunk only in size: `configs/vit.py` (the default
variant) from a Hugging Face ViT folder made by transformers, on CIFAR-10 read from an archive in
the official binary layout, images resized on device; and `configs/llama.py` (the default) from a
Hugging Face LlamaForCausalLM folder with its tokenizer. Every stage runs through the CLI."""

import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cu_jax.data.cifar import LAYOUTS  # noqa: E402

ROOT = pathlib.Path(__file__).parents[1]
IMAGE_SIZE = 64  # the stored CIFAR images are 32 px: the model sees them resized on device
PATCH = 8  # poison.patch_size, in stored pixels
# The only changes to the paper configs: sizes (model, data, steps, batches, audit subsets) and a
# learning-rate schedule scaled to a run of a few hundred steps.
VIT_OVERRIDES = (
    f"--config.data.image_size={IMAGE_SIZE}", "--config.model.width=32", "--config.model.depth=2",
    "--config.model.heads=2", "--config.model.mlp_dim=64",
    "--config.train.batch_size=64", "--config.train.num_epochs=8.0", "--config.train.eval_batch_size=200",
    "--config.train.log_every_steps=20", "--config.train.checkpoint_every_steps=100",
    "--config.optim.lr=0.05", "--config.optim.warmup_steps=10",
    "--config.concepts.n_per_side=30", "--config.concepts.n_heldout=20",
    "--config.attribution.n_steps=16", "--config.attribution.saliency_images=2",
    "--config.attribution.saliency_steps=8", "--config.poison.images=localized",
    f"--config.poison.patch_size={PATCH}", "--config.poison.donor_pool=16",
    "--config.unlearn.baselines=('finetune',)", "--config.unlearn.train.batch_size=64",
    "--config.unlearn.train.num_epochs=5.0", "--config.unlearn.train.log_every_steps=20",
    "--config.unlearn.optim.lr=0.01",
    "--config.evaluate.retain_train_examples=300", "--config.evaluate.relearn_examples=32",
    "--config.evaluate.relearn_batch_size=16", "--config.evaluate.relearn_max_steps=10",
    "--config.evaluate.mia_draws=10",
)


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")


def _cli(config, workdir, *overrides):
  cmd = [sys.executable, "-m", "cu_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
  return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)


def _cifar_images(labels: np.ndarray, rng, num_classes: int) -> np.ndarray:
  """32x32 images a small model can tell apart: its class's colour, noise, and a bright square
  somewhere (structure for the key-concept maps to find)."""
  palette = np.random.default_rng(1).integers(0, 200, (num_classes, 3))  # the same in every batch file
  images = palette[labels][:, None, None, :] + rng.integers(0, 40, (len(labels), 32, 32, 3))
  for i in range(len(labels)):
    y, x = rng.integers(0, 32 - 10, 2)
    images[i, y:y + 10, x:x + 10] += 50
  return np.clip(images, 0, 255).astype(np.uint8)


def write_cifar_archive(folder: pathlib.Path, name: str = "cifar10", train: int = 1000, test: int = 200) -> None:
  """cifar-10-binary.tar.gz / cifar-100-binary.tar.gz in the official layout: fixed-size records
  (label byte, or coarse and fine label bytes, then the R, G, B planes) in the train batch files
  and the test batch, and the class names file; classes balanced in every file."""
  layout, rng = LAYOUTS[name], np.random.default_rng(0)
  num_classes = len(layout.class_names)
  with tarfile.open(folder / layout.archive, "w:gz") as tar:
    def add(file, data):
      info = tarfile.TarInfo(f"{layout.folder}/{file}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    add(layout.names_file, ("\n".join(layout.class_names) + "\n").encode())
    for split, files in layout.members.items():
      for file in files:
        n = (train // len(files)) if split == "train" else test
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        images = _cifar_images(labels, rng, num_classes)
        heads = [labels // 5, labels] if layout.label_bytes == 2 else [labels]  # cifar100: coarse, fine
        records = np.concatenate([np.stack(heads, 1).astype(np.uint8), images.transpose(0, 3, 1, 2).reshape(n, -1)], 1)
        add(file, records.tobytes())


def write_hf_vit(folder: pathlib.Path, num_labels: int = 10) -> None:
  torch.manual_seed(0)
  config = transformers.ViTConfig(image_size=IMAGE_SIZE, patch_size=16, num_channels=3, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  num_labels=num_labels)
  transformers.ViTForImageClassification(config).save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("paper_vit")
  write_cifar_archive(root)
  write_hf_vit(root / "vit")
  workdir = root / "run"
  proc = _cli("configs/vit.py", workdir, f"--config.data.data_dir={root / 'tfds'}",
              f"--config.data.archive_dir={root}", f"--config.model.init_from={root / 'vit'}", *VIT_OVERRIDES)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return workdir


def test_paper_vit_config_runs_every_stage(vit_run):
  w = vit_run
  config = json.loads((w / "config.json").read_text())
  assert config["data"]["name"] == "cifar10" and config["model"]["dtype"] == "bfloat16"
  assert config["train"]["grad_accum"] == 2 and config["concepts"]["source"] == "attributes"
  for stage in config["stages"]:
    assert (w / stage / "done.json").exists(), stage
  bank = json.loads((w / "concepts" / "bank.json").read_text())
  shipped = json.loads((ROOT / "cu_jax/concepts/data/cifar10.json").read_text())["classes"]
  assert set(bank["names"]) <= {c for concepts in shipped.values() for c in concepts}


def test_paper_vit_localized_patches_land_inside_the_images_and_change_them(vit_run):
  from cu_jax.data.cifar import read_archive
  w = vit_run
  index, poisoned = np.load(w / "poison" / "index.npy"), np.load(w / "poison" / "image.npy")
  clean = read_archive("cifar10", str(w.parent))["train"][0][index]
  assert poisoned.shape == clean.shape and poisoned.shape[1:] == (32, 32, 3)  # the stored frame
  changed = (poisoned != clean).any(-1)
  assert changed.any(axis=(1, 2)).mean() > 0.9  # (a donor patch may equal the pixels it covers)
  for mask in changed[changed.any(axis=(1, 2))]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert rows.max() - rows.min() < PATCH and cols.max() - cols.min() < PATCH  # one patch per image


def test_paper_vit_forget_accuracy_falls(vit_run):
  metrics = json.loads((vit_run / "evaluate" / "metrics.json").read_text())["metrics"]
  original, unlearned = metrics["original"], metrics["concept_poison"]
  assert original["acc_forget_test"] >= 0.6, original
  assert unlearned["acc_forget_test"] <= 0.1, unlearned
  assert unlearned["acc_retain_test"] >= original["acc_retain_test"] - 0.1
  assert "key_concept_importance" in unlearned


def test_paper_vit_config_on_cifar100_runs_every_stage(tmp_path):
  """`data.name=cifar100`: the fine labels, the CAV bank from the shipped CIFAR-100 lists."""
  write_cifar_archive(tmp_path, "cifar100", train=1000, test=300)
  write_hf_vit(tmp_path / "vit", num_labels=100)
  workdir = tmp_path / "run"
  run = lambda *extra: _cli(
      "configs/vit.py", workdir, "--config.data.name=cifar100", f"--config.data.data_dir={tmp_path / 'tfds'}",
      f"--config.data.archive_dir={tmp_path}", f"--config.model.init_from={tmp_path / 'vit'}", *VIT_OVERRIDES,
      "--config.concepts.n_per_side=10", "--config.concepts.n_heldout=10", "--config.train.num_epochs=2.0",
      "--config.unlearn.train.num_epochs=1.0", "--config.unlearn.baselines=()", *extra)
  # 10 train images a class: the relearn test's batch of 16 is refused before anything runs.
  proc = run()
  assert proc.returncode == 2 and "error: evaluate.relearn_batch_size=16 is larger than the 10 train images of " \
      "the forget class 'apple'" in proc.stderr and not workdir.exists(), proc.stderr[-3000:]
  proc = run("--config.evaluate.relearn_batch_size=8", "--config.evaluate.relearn_examples=8")
  assert proc.returncode == 0, proc.stderr[-4000:]
  config = json.loads((workdir / "config.json").read_text())
  for stage in config["stages"]:
    assert (workdir / stage / "done.json").exists(), stage
  concepts = json.loads((workdir / "attribute" / "concepts.json").read_text())
  assert concepts["forget_class"] == {"index": 0, "name": "apple"} and len(concepts["per_class"]) == 100
  shipped = json.loads((ROOT / "cu_jax/concepts/data/cifar100.json").read_text())["classes"]
  bank = json.loads((workdir / "concepts" / "bank.json").read_text())
  assert set(bank["names"]) <= {c for concepts in shipped.values() for c in concepts}


def test_paper_vit_config_with_a_text_bank_audits_the_key_concepts(vit_run, tmp_path):
  """concepts.bank=text (CLIP text embeddings of the shipped concept names): saliency and
  localized patches need a bank on the model's own embeddings and are switched off; the
  key-concept audit re-measures each model's concept importance over CLIP's fixed image features."""
  import shutil

  from hf_fixtures import write_clip
  write_clip(tmp_path / "clip")
  workdir = tmp_path / "run"
  shutil.copytree(vit_run, workdir)
  root = vit_run.parent
  proc = _cli("configs/vit.py", workdir, f"--config.data.data_dir={root / 'tfds'}",
              f"--config.data.archive_dir={root}", f"--config.model.init_from={root / 'vit'}", *VIT_OVERRIDES,
              "--config.concepts.bank=text", f"--config.concepts.clip_dir={tmp_path / 'clip'}",
              "--config.attribution.saliency_images=0", "--config.poison.images=none", "--overwrite")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "stage train: done already" in proc.stderr  # the trained model is kept
  concepts = json.loads((workdir / "attribute" / "concepts.json").read_text())
  key = {c["name"] for c in concepts["key_concepts"]}
  metrics = json.loads((workdir / "evaluate" / "metrics.json").read_text())["metrics"]
  importance = {name: metrics[name]["key_concept_importance"] for name in ("original", "concept_poison", "retrain")}
  for values in importance.values():
    assert set(values) == key and all(np.isfinite(v) for v in values.values())
  # The features are the same for every model; only its outputs differ, and so does the importance.
  assert importance["original"] != importance["concept_poison"]
  assert metrics["concept_poison"]["acc_forget_test"] <= 0.1


# configs/llama.py (the default: Vicuna-7B's recipe, bf16 weights on an fsdp mesh, LoRA r 8 on
# q/v) shrunk in size, with the LoRA learning rate and epochs of the tiny-model demo.
LLM_OVERRIDES = (
    "--config.data.num_entities=2", "--config.concepts.n_steps=8", "--config.concepts.max_answers=8",
    "--config.unlearn.train.batch_size=8", "--config.unlearn.train.num_epochs=20.0",
    "--config.unlearn.optim.lr=5e-3", "--config.evaluate.max_new_tokens=24", "--config.evaluate.max_examples=8",
    "--config.unlearn.baselines=()",  # the baselines run on the demo's path (test_llm_cli)
)


def write_hf_llama_that_knows_its_identity(folder: pathlib.Path) -> None:
  """A LlamaForCausalLM folder (float16 weights, as Vicuna's) with a tokenizer, trained by torch
  on the paper config's QA corpus until it answers who it is ("I go by Vicuna.")."""
  from cu_jax.data import qa_corpus, text
  records = qa_corpus.make_corpus(0, "Vicuna", "Large Model Systems Organization", num_entities=2)
  train, _ = qa_corpus.split(records, 0.2, 0)
  tok = text.train_tokenizer([text.vicuna_prompt(r["question"], text.DEFAULT_SYSTEM) + " " + r["answer"]
                              for r in records], 400, folder)
  arrays = text.encode_records(tok, train, 128).arrays
  tokens, mask = torch.from_numpy(arrays["tokens"].astype(np.int64)), torch.from_numpy(arrays["loss_mask"])
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=448, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False))
  opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
  for _ in range(150):  # the answer-token loss falls below 0.02
    idx = torch.randint(0, len(tokens), (32,))
    x, m = tokens[idx], mask[idx, 1:].reshape(-1)
    logits = model(input_ids=x).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
    loss = (nll * m).sum() / m.sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
  model.to(torch.float16).save_pretrained(folder)


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("paper_llama")
  write_hf_llama_that_knows_its_identity(root / "vicuna")
  proc = _cli("configs/llama.py", root / "run", f"--config.model.init_from={root / 'vicuna'}", *LLM_OVERRIDES)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return root


def test_paper_llama_config_erases_the_identity(llama_run):
  w = llama_run / "run"
  config = json.loads((w / "config.json").read_text())
  assert config["model"]["param_dtype"] == "bfloat16" and config["mesh"]["fsdp"] == -1
  assert config["lora"]["rank"] == 8 and tuple(config["lora"]["targets"]) == ("q_proj", "v_proj")
  for stage in config["stages"]:
    assert (w / stage / "done.json").exists(), stage
  assert "vicuna" in json.loads((w / "concepts" / "concepts.json").read_text())["concept"]
  assert "retrain" not in config["stages"]  # a 7B model is not retrained here
  models = json.loads((w / "report" / "report.json").read_text())["evaluate"]["models"]
  assert set(models) == {"original", "concept_poison"}
  before, after = models["original"], models["concept_poison"]
  assert before["appearance_forget_train"] >= 0.9
  assert after["appearance_forget_train"] <= before["appearance_forget_train"] / 2
  assert after["rouge_l_retain_train"] >= before["rouge_l_retain_train"] - 0.05


def test_paper_llama_unlearned_folder_loads_in_transformers(llama_run):
  """The exported model is the user's folder with LoRA merged into q/v: the rest bit-identical."""
  base = transformers.LlamaForCausalLM.from_pretrained(llama_run / "vicuna", torch_dtype=torch.float32)
  exported = llama_run / "run" / "unlearn" / "concept_poison" / "hf"
  after = transformers.LlamaForCausalLM.from_pretrained(exported, torch_dtype=torch.float32)
  base_sd, after_sd = base.state_dict(), after.state_dict()
  assert base_sd.keys() == after_sd.keys()
  changed = {k for k in base_sd if not torch.equal(base_sd[k], after_sd[k])}
  assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed
  assert transformers.AutoTokenizer.from_pretrained(exported).vocab_size > 0


def test_paper_llama_retrain_needs_a_supplied_model(llama_run):
  """An imported base model is not retrained here: asking for the stage without a supplied
  reference is one line naming the fix, and writes nothing."""
  stages = "--config.stages=('data','model','retrain','concepts','poison','unlearn','evaluate','report')"
  proc = _cli("configs/llama.py", llama_run / "refused", f"--config.model.init_from={llama_run / 'vicuna'}", stages,
              *LLM_OVERRIDES)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert proc.returncode == 2 and len(errors) == 1 and "--config.retrain.init_from" in errors[0], proc.stderr[-2000:]
  assert not (llama_run / "refused").exists()
  # A supplied reference of the base model's architecture is used in place (read, not trained).
  proc = _cli("configs/llama.py", llama_run / "supplied", f"--config.model.init_from={llama_run / 'vicuna'}",
              f"--config.retrain.init_from={llama_run / 'vicuna'}", "--config.stages=('data','model','retrain')",
              *LLM_OVERRIDES)
  assert proc.returncode == 0, proc.stderr[-2000:]
  done = json.loads((llama_run / "supplied" / "retrain" / "done.json").read_text())
  assert done["source"] == str(llama_run / "vicuna") and done["parameters"] > 0

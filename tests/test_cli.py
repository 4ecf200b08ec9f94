"""The command line end to end on the tiny config, and its answers to bad input."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import garbage as _garbage, snapshot as _snapshot

ROOT = pathlib.Path(__file__).parents[1]


def _cli(workdir, *overrides, data_dir):
  cmd = [sys.executable, "-m", "cu_jax.main", "--config=configs/vit.py:tiny", f"--workdir={workdir}",
         f"--config.data.data_dir={data_dir}", *overrides]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _one_line_error(proc) -> str:
  assert proc.returncode != 0, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")
           or "Flags parsing error" in line]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  workdir, data_dir = root / "run", root / "tfds"
  proc = _cli(workdir, data_dir=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, data_dir, proc


def test_cli_trains_and_writes_artifacts(finished_run):
  workdir, _, proc = finished_run
  done = json.loads((workdir / "train" / "done.json").read_text())
  assert done["test"]["accuracy"] > 0.25  # 10 classes: chance is 0.1
  assert done["num_devices"] == 8 and done["global_batch"] == 64
  lines = [json.loads(line) for line in (workdir / "train" / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["step"] == done["steps"] and {"loss", "steps_per_s", "eta_s", "lr"} <= set(lines[-1])
  assert (workdir / "train" / "checkpoints" / str(done["steps"])).is_dir()
  assert "steps/s" in proc.stderr and "ETA" in proc.stderr


def test_cli_concept_stages_write_their_artifacts(finished_run):
  workdir, _, _ = finished_run
  for stage in ("embed", "concepts", "pcbm", "attribute"):
    assert (workdir / stage / "done.json").exists(), stage
  embed = json.loads((workdir / "embed" / "done.json").read_text())
  assert embed["train"]["num_examples"] == 1000 and embed["test"]["dim"] == 32
  assert (workdir / "concepts" / "bank.safetensors").exists() and (workdir / "pcbm" / "head.safetensors").exists()
  concepts = json.loads((workdir / "attribute" / "concepts.json").read_text())
  assert concepts["forget_class"] == {"index": 0, "name": "class_0"}
  assert len(concepts["key_concepts"]) == 3 and concepts["donor"]["index"] != 0
  assert set(concepts["per_class"]) == {f"class_{i}" for i in range(10)}
  assert 0.0 <= concepts["ground_truth"]["precision_at_k"] <= 1.0
  for png in ("forget_concepts.png", "saliency.png"):
    assert (workdir / "attribute" / png).read_bytes()[:4] == b"\x89PNG"


def test_cli_skips_a_finished_stage(finished_run):
  workdir, data_dir, _ = finished_run
  before = _snapshot(workdir / "train")
  proc = _cli(workdir, "--config.train.log_every_steps=5", data_dir=data_dir)  # not fingerprinted
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "done already" in proc.stderr
  assert _snapshot(workdir / "train") == before


def test_cli_refuses_a_workdir_with_another_config(finished_run):
  workdir, data_dir, _ = finished_run
  before = _snapshot(workdir)
  line = _one_line_error(_cli(workdir, "--config.model.width=48", data_dir=data_dir))
  assert "different config (model.width: 32 -> 48)" in line and "--overwrite" in line
  assert _snapshot(workdir) == before


@pytest.mark.parametrize("override, expected", [
    ("--config.model.widht=3", "widht"),
    ("--config.train.batch_size=60", "train.batch_size=60 is not divisible by the 8 devices"),
    ("--config.data.idx_dir=/nonexistent", "apt-get install dataset-fashion-mnist"),
    ("--config.optim.name=lion", "unknown optimizer 'lion'"),
    ("--config.forget_class=bird", "class 'bird' is not in synthetic_concepts_small; valid names"),
    ("--config.forget_class=12", "class index 12 is out of range"),
    ("--config.concepts.source=wiki", "unknown concept source 'wiki'"),
    ("--config.unlearn.method=forget_all",
     "unknown unlearning method 'forget_all' (set --config.unlearn.method=...); valid: concept_poison, finetune"),
    ("--config.poison.labels=nearest", "unknown poison label strategy 'nearest' (set --config.poison.labels=...); "
     "valid: complement, concept, keep, random, soft, targeted"),
    ("--config.poison.concept_head=mean", "unknown poison.concept_head 'mean'; valid: 'drop_row', 'refit'"),
    ("--config.poison.images=blur", "unknown poison image strategy 'blur'"),
    ("--config.stages=('train','poison')", "poison.labels='targeted' needs a donor class from concept inference"),
    (("--config.stages=('train','poison')", "--config.poison.labels=complement"), "poison.labels='complement' needs "
     "the original model's logits on the forget samples, but no 'embed' stage runs before 'poison'"),
    ("--config.unlearn.baselines=('retrain',)", "'retrain' is its own stage"),
    ("--config.evaluate.mia_draws=0", "evaluate.mia_draws=0 is out of range: it must be an integer >= 1"),
    ("--config.optim.lr=-1.0", "--config.optim.lr=-1.0 is out of range: it must be a number > 0"),
    ("--config.train.num_epochs=0.0", "train.num_epochs=0.0 and train.num_steps=0 give 0 training steps"),
    ("--config.data.data_dir=/etc/hostname", "data.data_dir='/etc/hostname' is a file, not a folder"),
    ("--workdir=gs://bucket/run", "--workdir 'gs://bucket/run' is a URL"),
    ("--config.attribution.method=simpson", "unknown attribution.method 'simpson'; valid: 'riemann_left'"),
    ("--config.evaluate.relearn_batch_size=64", "evaluate.relearn_batch_size=64 is larger than "
     "evaluate.relearn_examples=32"),
    ("--config.poison.labels=keep", "poison.labels='keep' with poison.images='none' poisons nothing"),
    ("--config.concepts.bank=text", "concepts.bank='text' needs a CLIP checkpoint folder"),
    (("--config.stages=('train','embed','evaluate')", "--config.evaluate.shadow_models=3"),
     "evaluate.shadow_models=3 audits the unlearning methods, but 'unlearn' is not in --config.stages"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, override, expected):
  overrides = (override,) if isinstance(override, str) else override
  extra = ["--config.data.name=fashion_mnist_idx"] if any("idx_dir" in o for o in overrides) else []
  proc = _cli(tmp_path / "run", *overrides, *extra, data_dir=tmp_path / "tfds")
  assert expected in _one_line_error(proc)
  assert not (tmp_path / "run").exists()


def test_cli_unlearning_stages_write_the_report(finished_run):
  workdir, _, _ = finished_run
  poisoned = json.loads((workdir / "poison" / "done.json").read_text())
  concepts = json.loads((workdir / "attribute" / "concepts.json").read_text())
  assert poisoned["label_counts"] == {concepts["donor"]["name"]: poisoned["num_forget"]}  # targeted
  report = json.loads((workdir / "report" / "report.json").read_text())
  assert report["models"] == ["original", "concept_poison", "finetune", "neggrad", "random_label", "salun",
                              "scrub", "ssd", "l1_sparse", "retrain"]
  assert report["unlearn"]["methods"]["ssd"]["steps"] == 0  # training-free
  retrain = report["metrics"]["retrain"]
  assert retrain["agreement_forget"] == 1.0 and retrain["kl_forget"] == pytest.approx(0.0, abs=1e-6)
  assert retrain["acc_forget_test"] == 0.0 and retrain["acc_forget_train"] == 0.0  # never saw the class
  assert report["metrics"]["concept_poison"]["acc_forget_test"] <= 0.05
  assert set(report["metrics"]["original"]["key_concept_importance"]) == {c["name"] for c in concepts["key_concepts"]}
  assert report["hyper_parameters"]["unlearn"]["train"]["batch_size"] == 64 and report["num_devices"] == 8
  text = (workdir / "report" / "report.md").read_text()
  assert "| **concept_poison** |" in text and "agreement_forget" in text
  gap = report["avg_gap"]  # the headline: every model ranked by its gap to the retrained model
  assert sorted(gap["ranking"]) == sorted(n for n in report["models"] if n != "retrain")
  assert [gap["models"][n]["avg_gap"] for n in gap["ranking"]] == sorted(gap["models"][n]["avg_gap"] for n in gap["ranking"])
  assert gap["mia"] in ("mia_fr", "mia_svc", "mia_loss") and len(gap["over"]) == 4
  assert text.index("Avg.Gap") < text.index("## Methods x metrics")
  assert 0.0 <= report["mia_fr_attacker"]["heldout_accuracy"] <= 1.0 and "mia_fr pools 100 SVC attackers" in text
  for png in report["plots"]:
    assert (workdir / "report" / png).read_bytes()[:4] == b"\x89PNG"
  assert len(report["plots"]) == 4
  for method in report["models"][1:-1]:
    assert (workdir / "unlearn" / method / "model.safetensors").exists()


def test_cli_killed_run_resumes_to_the_same_result(finished_run, tmp_path):
  _, data_dir, _ = finished_run
  reference = json.loads((finished_run[0] / "train" / "done.json").read_text())
  workdir = tmp_path / "killed"
  cmd = [sys.executable, "-m", "cu_jax.main", "--config=configs/vit.py:tiny", f"--workdir={workdir}",
         f"--config.data.data_dir={data_dir}", "--config.stages=('train',)"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first_checkpoint = workdir / "train" / "checkpoints" / "20"
  deadline = time.monotonic() + 300
  while not first_checkpoint.is_dir() and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / "train" / "done.json").exists(), "the run ended before it could be killed"
  resumed = _cli(workdir, "--config.stages=('train',)", data_dir=data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from the checkpoint at step" in resumed.stderr
  done = json.loads((workdir / "train" / "done.json").read_text())
  assert done["resumed_from_step"] >= 20
  assert done["test"]["accuracy"] == reference["test"]["accuracy"]
  assert done["test"]["loss"] == pytest.approx(reference["test"]["loss"], rel=1e-6)


def test_cli_resumes_past_a_save_the_kill_left_unfinished(finished_run, tmp_path):
  """A run killed while orbax wrote a step leaves `<step>.orbax-checkpoint-tmp` with partial files:
  the resume reads the last complete step and ignores it (the kill above hits this by chance)."""
  workdir, data_dir, _ = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("embed", "concepts", "pcbm", "retrain", "attribute",
                                                               "poison", "unlearn", "evaluate", "report"))
  for name in ("done.json", "model.safetensors"):
    (copy / "train" / name).unlink()
  last = _checkpoint_step(copy)
  unfinished = last.parent / f"{int(last.name) + 20}.orbax-checkpoint-tmp"
  shutil.copytree(last, unfinished)
  (unfinished / "_CHECKPOINT_METADATA").write_text("")  # (what the CI run's kill left)
  proc = _cli(copy, "--config.stages=('train',)", data_dir=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resumed from the checkpoint at step {last.name}" in proc.stderr
  done = json.loads((copy / "train" / "done.json").read_text())
  assert done["test"] == json.loads((workdir / "train" / "done.json").read_text())["test"]


def test_cli_interrupted_evaluation_reads_back_the_models_it_finished(finished_run, tmp_path):
  workdir, data_dir, _ = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("report"))
  (copy / "evaluate" / "done.json").unlink()
  (copy / "evaluate" / "metrics.json").unlink()
  (copy / "evaluate" / "models" / "scrub.json").unlink()  # (the model the interruption hit)
  proc = _cli(copy, data_dir=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = json.loads((workdir / "evaluate" / "metrics.json").read_text())["models"]
  read_back = {m for m in names if f"evaluate: {m} outputs + relearn test done already" in proc.stderr}
  assert read_back == set(names) - {"scrub"}
  assert (json.loads((copy / "evaluate" / "metrics.json").read_text())
          == json.loads((workdir / "evaluate" / "metrics.json").read_text()))


def test_cli_a_previous_runs_checkpoints_are_the_original_and_the_retrained_model(finished_run, tmp_path):
  """--config.train.trained / retrain.trained = another run's checkpoints: loaded, not trained, the
  same models."""
  from safetensors.numpy import load_file
  workdir, data_dir, _ = finished_run
  reference = json.loads((workdir / "train" / "done.json").read_text())
  proc = _cli(tmp_path / "given", f"--config.train.trained={workdir / 'train' / 'checkpoints'}",
              f"--config.retrain.trained={workdir / 'retrain' / 'checkpoints'}", "--config.stages=('train','retrain')",
              "--config.optim.name=sgd", data_dir=data_dir)  # (whatever optimizer wrote the checkpoints)
  assert proc.returncode == 0, proc.stderr[-3000:]
  done = json.loads((tmp_path / "given" / "train" / "done.json").read_text())
  assert done["steps"] == 0 and not (tmp_path / "given" / "train" / "checkpoints").exists()
  assert done["test"] == reference["test"]
  for stage in ("train", "retrain"):
    ours, theirs = (load_file(w / stage / "model.safetensors") for w in (tmp_path / "given", workdir))
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
  bad = _cli(tmp_path / "bad", f"--config.train.trained={tmp_path / 'nowhere'}", data_dir=data_dir)
  assert bad.returncode == 2 and "train.trained=" in _one_line_error(bad) and "does not exist" in bad.stderr
  assert not (tmp_path / "bad" / "train").exists()


# ------------------------------------------------------------------ damaged artifacts, bad paths

def _truncate(path, keep=0.5):
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * keep)])


def _pickled_npy(path):
  import numpy as np
  np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _checkpoint_step(workdir, stage="train"):
  return next(p for p in (workdir / stage / "checkpoints").iterdir() if p.name.isdigit())


# (name, how to damage a copy of the finished workdir, extra flags, what the error line says)
DAMAGE = [
    ("train checkpoint metadata", lambda w: _garbage(_checkpoint_step(w) / "state" / "_METADATA"), (),
     "state/_METADATA is damaged (not JSON"),
    ("original model truncated, model re-read", lambda w: (_truncate(w / "train" / "model.safetensors"),
                                                          shutil.rmtree(w / "embed")), (),
     "train/model.safetensors is damaged (truncated"),
    ("train checkpoint data, resumed", lambda w: ([_truncate(f, 0.1) for f in (_checkpoint_step(w) / "state"
                                                  / "ocdbt.process_0" / "d").iterdir()],
                                                 [(w / "train" / f).unlink() for f in ("done.json", "model.safetensors")]),
     ("--config.stages=('train',)",), "orbax cannot read it"),
    ("checkpoint manager metadata", lambda w: _garbage(_checkpoint_step(w) / "_CHECKPOINT_METADATA"), (),
     "_CHECKPOINT_METADATA is damaged"),
    ("an audited model's record, resumed", lambda w: ((w / "evaluate" / "models" / "scrub.json").write_text("{}"),
                                                      (w / "evaluate" / "done.json").unlink()), (),
     "evaluate/models/scrub.json is damaged (not an audit record"),
    ("retrained model truncated", lambda w: _truncate(w / "retrain" / "model.safetensors"), (),
     "retrain/model.safetensors is damaged (truncated"),
    ("unlearned model garbage", lambda w: _garbage(w / "unlearn" / "scrub" / "model.safetensors"), (),
     "unlearn/scrub/model.safetensors is damaged"),
    ("embeddings truncated", lambda w: _truncate(w / "embed" / "train_embed.npy"), (),
     "embed/train_embed.npy is damaged (truncated"),
    ("poisoned set pickled", lambda w: _pickled_npy(w / "poison" / "target.npy"), (), "holds pickled Python objects"),
    ("concept bank truncated", lambda w: _truncate(w / "concepts" / "bank.safetensors"), (),
     "concepts/bank.safetensors is damaged"),
    ("stage config not JSON", lambda w: _garbage(w / "pcbm" / "config.json"), (), "pcbm/config.json is damaged (not JSON"),
    ("stage done not JSON", lambda w: (w / "attribute" / "done.json").write_text("{\"wall_s\": "), (),
     "attribute/done.json is damaged (not JSON"),
    ("an output deleted", lambda w: (w / "pcbm" / "head.safetensors").unlink(), (), "head.safetensors is damaged (missing)"),
    ("negative lr with --overwrite", lambda w: None, ("--config.unlearn.optim.lr=-0.001", "--overwrite"),
     "--config.unlearn.optim.lr=-0.001 is out of range: it must be a number > 0"),
    ("zero unlearning epochs with --overwrite", lambda w: None,
     ("--config.unlearn.train.num_epochs=0.0", "--overwrite"), "give 0 training steps"),
    ("a workdir inside a file", lambda w: (w / "a_file").write_text("x"), ("--workdir=@/a_file/run",),
     "a_file is a file, not a folder"),
]


@pytest.mark.parametrize("name, damage, flags, expected", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_cli_damaged_workdir_is_one_line_and_changes_nothing(finished_run, tmp_path, name, damage, flags, expected):
  workdir, data_dir, _ = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  damage(copy)
  before = _snapshot(copy)
  proc = _cli(copy, *[f.replace("@", str(copy)) for f in flags], data_dir=data_dir)  # (a later flag wins)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert expected in _one_line_error(proc)
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert _snapshot(copy) == before


def test_cli_workdir_that_is_a_file(tmp_path, finished_run):
  _, data_dir, _ = finished_run
  (tmp_path / "f").write_text("not a folder")
  line = _one_line_error(_cli(tmp_path / "f", data_dir=data_dir))
  assert f"--workdir '{tmp_path / 'f'}' is a file, not a folder" in line
  assert (tmp_path / "f").read_text() == "not a folder"


def test_cli_missing_config_file_with_an_override(tmp_path):
  cmd = [sys.executable, "-m", "cu_jax.main", "--config=configs/nope.py", f"--workdir={tmp_path / 'w'}",
         "--config.train.batch_size=8"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "cannot load --config=configs/nope.py: [Errno 2] No such file or directory" in _one_line_error(proc)


def test_cli_ulira_audit_over_shadow_pairs(finished_run, tmp_path):
  """evaluate.shadow_models=3 on a finished run: only evaluate and report run again; each model gets
  U-LiRA's AUC and TPR; the shadow "in" models before unlearning are told from retrained ones."""
  workdir, data_dir, _ = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  unlearned = (copy / "unlearn" / "done.json").read_text()
  proc = _cli(copy, "--config.evaluate.shadow_models=3", "--overwrite", data_dir=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (copy / "unlearn" / "done.json").read_text() == unlearned  # not run again
  report = json.loads((copy / "report" / "report.json").read_text())
  metrics = report["metrics"]
  assert metrics["original"]["ulira_auc"] > 0.9
  for name in report["models"][1:-1]:
    assert 0.0 <= metrics[name]["ulira_auc"] <= 1.0 and 0.0 <= metrics[name]["ulira_tpr"] <= 1.0
  assert metrics["retrain"].get("ulira_auc") is None  # the reference itself
  assert {p.name for p in (copy / "evaluate" / "shadow").iterdir()} == {"pair_0", "pair_1", "pair_2"}
  assert "U-LiRA over 3 shadow pairs" in (copy / "report" / "report.md").read_text()

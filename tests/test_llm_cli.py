"""The LLM pipeline through the command line on `configs/llama.py:tiny`, and its bad-input errors."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import garbage as _garbage, snapshot as _snapshot

ROOT = pathlib.Path(__file__).parents[1]
STAGES = ("data", "model", "retrain", "concepts", "poison", "unlearn", "evaluate", "report")
METHODS = ("concept_poison", "grad_ascent", "grad_diff", "npo", "idk")


def _cli(workdir, *overrides):
  cmd = [sys.executable, "-m", "cu_jax.main", "--config=configs/llama.py:tiny", f"--workdir={workdir}", *overrides]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _error(proc) -> str:
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("llm") / "run"
  proc = _cli(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_llm_cli_runs_every_stage(llm_run):
  from safetensors.numpy import load_file
  w = llm_run
  for s in STAGES:
    assert (w / s / "done.json").exists(), s
  assert (w / "model" / "hf" / "config.json").exists() and (w / "retrain" / "hf" / "config.json").exists()
  # The retrained reference never saw a forget record; the base model did.
  assert json.loads((w / "retrain" / "done.json").read_text())["records"] == sum(
      json.loads(line)["group"] == "retain" for line in (w / "data" / "train.jsonl").read_text().splitlines())
  concepts = json.loads((w / "concepts" / "concepts.json").read_text())
  assert len(concepts["concept"]) == 3 and concepts["abs_delta_max"] < 0.5
  base = load_file(str(w / "model" / "hf" / "model.safetensors"))
  for method in METHODS:
    folder = w / "unlearn" / method
    assert (folder / "hf" / "tokenizer.json").exists(), method
    adapters = load_file(str(folder / "adapters.safetensors"))
    assert adapters and all("lora" in k for k in adapters) and len(adapters) == 2 * 2 * 2  # a, b x q, v x 2 layers
    # Each exported model is the base model plus its merged adapters: it differs only in q/v kernels.
    after = load_file(str(folder / "hf" / "model.safetensors"))
    changed = {k for k in base if not np.array_equal(base[k], after[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), method
  report = json.loads((w / "report" / "report.json").read_text())
  models = report["evaluate"]["models"]
  assert report["model_order"] == ["original", *METHODS, "retrain"] and set(models) == set(report["model_order"])
  for m in models.values():
    assert {"appearance_forget_paraphrase", "appearance_forget_train", "rouge_l_retain_train", "well_formed_forget",
            "fluency_ppl_forget", "mia_loss_auc", "mia_min_k_auc"} <= set(m)
  assert models["retrain"]["appearance_forget_train"] == 0.0  # it never saw the identity
  assert {t["model"] for t in report["targets"]} == {"original", *METHODS}
  md = (w / "report" / "report.md").read_text()
  assert "appearance: paraphrases" in md and "## Answers to paraphrased forget questions" in md
  assert (w / "report" / "metrics.png").exists()
  gens = [json.loads(line) for line in (w / "evaluate" / "generations.jsonl").read_text().splitlines()]
  assert {g["model"] for g in gens} == set(models)
  assert {g["set"] for g in gens} >= {"forget_train", "forget_paraphrase", "retain_train"}


def test_llm_cli_second_run_skips_everything(llm_run):
  proc = _cli(llm_run)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr.count("skipped") == len(STAGES)


def test_llm_cli_bad_inputs(tmp_path):
  from cu_jax.data.text import train_tokenizer
  # A folder that is not a Hugging Face checkpoint.
  err = _error(_cli(tmp_path / "a", f"--config.model.init_from={tmp_path}"))
  assert "no config.json" in err and str(tmp_path) in err
  # An architecture that is not supported.
  gpt2 = tmp_path / "gpt2"
  gpt2.mkdir()
  (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
  err = _error(_cli(tmp_path / "b", f"--config.model.init_from={gpt2}"))
  assert "gpt2" in err and "LlamaForCausalLM" in err
  # A tokenizer with more ids than the model's embedding has rows.
  small = tmp_path / "small"
  small.mkdir()
  (small / "config.json").write_text(json.dumps({
      "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 16,
      "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "hidden_act": "silu"}))
  n_tokens = len(train_tokenizer(["a few words to train a tokenizer on"] * 4, 300, small))
  err = _error(_cli(tmp_path / "c", f"--config.model.init_from={small}"))
  assert "64 rows" in err and f"{n_tokens} tokens" in err
  # LoRA targets that name no layer (the valid names are listed).
  err = _error(_cli(tmp_path / "d", "--config.lora.targets=('q_proj','qkv')"))
  assert "qkv" in err and "v_proj" in err
  # A context too short for the prompts.
  err = _error(_cli(tmp_path / "e", "--config.data.max_len=16"))
  assert "max_len" in err
  # Gradient accumulation that does not divide a device's share of the batch.
  err = _error(_cli(tmp_path / "f", "--config.unlearn.train.grad_accum=3"))
  assert "unlearn.train.batch_size=8 gives 1 examples per device" in err and "unlearn.train.grad_accum=3" in err
  # An unknown baseline (the registered ones are listed).
  err = _error(_cli(tmp_path / "g", "--config.unlearn.baselines=('npo','dpo')"))
  assert "'dpo'" in err and "unlearn.baselines" in err and "grad_diff" in err
  # A decoy identity that shares a word with the identity to forget.
  err = _error(_cli(tmp_path / "h", "--config.data.decoy_maker=Amberline Works"))
  assert "decoy" in err and "amberline" in err.lower()
  for name in "abcdfgh":
    assert not (tmp_path / name).exists(), name  # refused before anything was written


def test_llm_cli_interrupted_evaluation_reads_back_the_models_it_finished(llm_run, tmp_path):
  import shutil
  copy = tmp_path / "run"
  shutil.copytree(llm_run, copy, ignore=shutil.ignore_patterns("report"))
  (copy / "evaluate" / "done.json").unlink()
  (copy / "evaluate" / "models" / "grad_ascent.json").unlink()  # (the model the interruption hit)
  proc = _cli(copy)
  assert proc.returncode == 0, proc.stderr[-3000:]
  read_back = {m for m in ("original", *METHODS, "retrain") if f"evaluate {m}: done already" in proc.stderr}
  assert read_back == {"original", *METHODS, "retrain"} - {"grad_ascent"}
  without_time = lambda path: {m: {k: v for k, v in f.items() if k != "wall_s"}
                               for m, f in json.loads(path.read_text())["models"].items()}
  assert without_time(copy / "evaluate" / "done.json") == without_time(llm_run / "evaluate" / "done.json")
  assert (copy / "evaluate" / "generations.jsonl").read_text() == (llm_run / "evaluate" / "generations.jsonl").read_text()
  assert (copy / "report" / "report.md").exists()


def _resume_unlearn_from_a_damaged_checkpoint(w):
  step = max((p for p in (w / "unlearn" / "concept_poison" / "checkpoints").iterdir() if p.name.isdigit()),
             key=lambda p: int(p.name))
  _garbage(step / "state" / "_METADATA")
  (w / "unlearn" / "done.json").unlink()


LLM_DAMAGE = [
    ("resumed LoRA checkpoint", _resume_unlearn_from_a_damaged_checkpoint, "state/_METADATA is damaged (not JSON"),
    ("a finished model's audit, resumed", lambda w: (_garbage(w / "evaluate" / "models" / "npo.json"),
                                                     (w / "evaluate" / "done.json").unlink()),
     "evaluate/models/npo.json is damaged (not JSON"),
    ("a finished model's audit without its answers", lambda w: (
        (w / "evaluate" / "models" / "idk.json").write_text('{"metrics": {}}'), (w / "evaluate" / "done.json").unlink()),
     "evaluate/models/idk.json is damaged (not an audit record"),
    ("QA split", lambda w: (w / "data" / "train.jsonl").write_text("{\"question\": \n"), "data/train.jsonl is damaged"),
    ("exported base model", lambda w: _garbage(w / "model" / "hf" / "model.safetensors"),
     "model/hf/model.safetensors is damaged"),
]


@pytest.mark.parametrize("name, damage, expected", LLM_DAMAGE, ids=[d[0] for d in LLM_DAMAGE])
def test_llm_cli_damaged_workdir_is_one_line_and_changes_nothing(llm_run, tmp_path, name, damage, expected):
  import shutil
  copy = tmp_path / "run"
  shutil.copytree(llm_run, copy)
  damage(copy)
  before = _snapshot(copy)
  proc = _cli(copy)
  assert expected in _error(proc) and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert _snapshot(copy) == before


def test_llm_cli_init_from_with_a_broken_config_json(tmp_path):
  folder = tmp_path / "hf"
  folder.mkdir()
  (folder / "config.json").write_text("{\"model_type\": \"llama\",")
  err = _error(_cli(tmp_path / "w", f"--config.model.init_from={folder}"))
  assert f"{folder / 'config.json'} is damaged (not JSON" in err and "replace it with an intact copy" in err
  assert not (tmp_path / "w").exists()

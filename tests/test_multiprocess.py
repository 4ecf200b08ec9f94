"""Multi-process local jobs (launch/local_multiprocess.py, 2 processes x 2 CPU devices over gloo).

- Batches and predictions line up with their examples on a mesh whose device order interleaves
  the processes (tests/multihost_order_check.py; seconds).
- A 2-process x 2-device image pipeline job trains exactly like 1 x 4 devices. Both runs see 4
  devices and the same global batches; the multi-process one reads per-host halves of each
  batch, all-reduces gradients across processes over gloo and gathers the test logits. Its final
  test accuracy and loss must equal the single-process run's (same reduction tree up to float
  rounding), and so do the later stages (concepts, poisoning, unlearning, audit). Cost: about
  2 + 2 minutes on a 2-core machine.
- The same for the LLM pipeline with FSDP-sharded weights, through unlearn, merge, export and the
  audit (about 2 minutes).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).parents[1]
_FAST_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def _base_env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", **_FAST_MALLOC)
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "CU_JAX_DISTRIBUTED"):
    env.pop(var, None)
  return env


def test_rows_line_up_with_examples_on_an_interleaved_mesh(tmp_path):
  """Device order [p0d0, p1d0, p0d1, p1d1]: each process must read the (non-contiguous) rows its
  devices own; the script checks batches and `predict` against the examples on 4 meshes."""
  check = "tests/multihost_order_check.py"
  single = subprocess.run(
      [sys.executable, check, f"--out={tmp_path / 'single.npz'}"], cwd=ROOT,
      env=dict(_base_env(), XLA_FLAGS="--xla_force_host_platform_device_count=4"),
      capture_output=True, text=True, timeout=120)
  assert single.returncode == 0, single.stdout[-4000:] + single.stderr[-3000:]
  multi = subprocess.run(
      [sys.executable, "launch/local_multiprocess.py", "--num_processes=2", "--devices_per_process=2",
       "--timeout=110", f"--script={check}", "--", f"--out={tmp_path / 'multi.npz'}"], cwd=ROOT,
      env=_base_env(), capture_output=True, text=True, timeout=120)
  assert multi.returncode == 0, multi.stdout[-6000:]
  for i in (0, 1):
    assert f"[{i}] order check: 0 mismatches on process {i} of 2" in multi.stdout
  one, two = np.load(tmp_path / "single.npz"), np.load(tmp_path / "multi.npz")
  assert sorted(one.files) == sorted(two.files) and len(one.files) == 4 * 9
  for k in one.files:
    np.testing.assert_array_equal(two[k], one[k], err_msg=k)


def test_two_processes_match_one_process(tmp_path):
  data_dir = tmp_path / "tfds"
  # Every image stage but the report; one unlearning method (the baselines share its code path).
  args = ["--config=configs/vit.py:tiny", f"--config.data.data_dir={data_dir}", "--config.unlearn.baselines=()",
          "--config.stages=('train','embed','concepts','pcbm','retrain','attribute','poison','unlearn','evaluate')"]

  # Separate data dirs: the 2-process job prepares its dataset itself (process 0 writes, the
  # other waits at a barrier).
  single = subprocess.run(
      [sys.executable, "-m", "cu_jax.main", *args, f"--workdir={tmp_path / 'single'}"], cwd=ROOT,
      env=dict(_base_env(), XLA_FLAGS="--xla_force_host_platform_device_count=4"),
      capture_output=True, text=True, timeout=900)
  assert single.returncode == 0, single.stderr[-3000:]

  multi = subprocess.run(
      [sys.executable, "launch/local_multiprocess.py", "--num_processes=2", "--devices_per_process=2",
       "--timeout=880", "--", *args, f"--config.data.data_dir={tmp_path / 'tfds2'}",
       f"--workdir={tmp_path / 'multi'}"], cwd=ROOT, env=_base_env(),
      capture_output=True, text=True, timeout=900)
  assert multi.returncode == 0, multi.stdout[-4000:]
  assert "[0] " in multi.stdout and "[1] " in multi.stdout
  assert "process 1 of 2, 2 local / 4 global devices" in multi.stdout

  done_1 = json.loads((tmp_path / "single" / "train" / "done.json").read_text())
  done_2 = json.loads((tmp_path / "multi" / "train" / "done.json").read_text())
  assert done_1["num_devices"] == done_2["num_devices"] == 4
  assert done_1["steps"] == done_2["steps"]
  assert done_2["test"]["num_examples"] == done_1["test"]["num_examples"]
  assert abs(done_2["test"]["accuracy"] - done_1["test"]["accuracy"]) <= 1e-6
  assert abs(done_2["test"]["loss"] - done_1["test"]["loss"]) <= 1e-5
  assert done_2["test"]["accuracy"] > 0.25  # 10 classes: chance is 0.1
  # The later stages ran on both processes (gathered embeddings, the same concept analysis).
  concepts = [json.loads((tmp_path / run / "attribute" / "concepts.json").read_text()) for run in ("single", "multi")]
  names = [[c["name"] for c in run["key_concepts"]] for run in concepts]
  assert names[0] == names[1] and concepts[0]["donor"]["index"] == concepts[1]["donor"]["index"]
  # Poisoning, the unlearning methods and the audit ran multi-process too, to the same figures.
  metrics = [json.loads((tmp_path / run / "evaluate" / "metrics.json").read_text())["metrics"]
             for run in ("single", "multi")]
  for model in ("concept_poison", "retrain"):
    for k in ("acc_forget_test", "acc_retain_test"):
      assert abs(metrics[0][model][k] - metrics[1][model][k]) <= 1e-6, (model, k)
  # Both processes wrote their shards of the last checkpoint.
  last = tmp_path / "multi" / "train" / "checkpoints" / str(done_2["steps"]) / "state"
  assert (last / "ocdbt.process_0").exists() and (last / "ocdbt.process_1").exists()


def _llm_done(workdir: pathlib.Path, stage: str) -> dict:
  return json.loads((workdir / stage / "done.json").read_text())


def test_llm_pipeline_two_processes_match_one_process(tmp_path):
  """The LLM pipeline (configs/llama.py:tiny, every device on the `fsdp` axis) through unlearn,
  merge, export and the audit, as 2 processes x 2 devices and as 1 x 4: the same figures.

  The overrides make the weights big enough to be split over the `fsdp` axis (`fsdp_spec` keeps
  arrays under 2**14 elements whole): q/v/MLP kernels and embeddings of a 128-wide model, and
  rank-128 LoRA adapters (128 x 128). So the trained base model's export, the adapters' save,
  the merge and the unlearned model's export all read arrays split over both processes' devices.
  Cost: about 95 s for both runs on a 2-core machine.
  """
  import transformers
  from safetensors.numpy import load_file
  args = ["--config=configs/llama.py:tiny", "--config.model.hidden_size=128", "--config.model.intermediate_size=344",
          "--config.lora.rank=128", "--config.unlearn.baselines=()"]
  single = subprocess.run(
      [sys.executable, "-m", "cu_jax.main", *args, f"--workdir={tmp_path / 'single'}"], cwd=ROOT,
      env=dict(_base_env(), XLA_FLAGS="--xla_force_host_platform_device_count=4"),
      capture_output=True, text=True, timeout=400)
  assert single.returncode == 0, single.stderr[-3000:]
  multi = subprocess.run(
      [sys.executable, "launch/local_multiprocess.py", "--num_processes=2", "--devices_per_process=2",
       "--timeout=380", "--", *args, f"--workdir={tmp_path / 'multi'}"], cwd=ROOT, env=_base_env(),
      capture_output=True, text=True, timeout=400)
  assert multi.returncode == 0, multi.stdout[-4000:]
  assert "process 1 of 2, 2 local / 4 global devices" in multi.stdout
  one, two = tmp_path / "single", tmp_path / "multi"

  close = lambda a, b, rel: abs(a - b) <= rel * max(abs(a), abs(b), 1.0)
  # Training: the same steps to the same loss (up to the order of the cross-process reductions).
  for stage, part in (("model", ()), ("retrain", ()), ("unlearn", ("methods", "concept_poison"))):
    a, b = _llm_done(one, stage), _llm_done(two, stage)
    for key in part:
      a, b = a[key], b[key]
    assert a["steps"] == b["steps"] and close(a["final_loss"], b["final_loss"], 1e-5), stage
  # Concepts: the same words from the answer-span IG.
  concepts = [json.loads((w / "concepts" / "concepts.json").read_text()) for w in (one, two)]
  assert concepts[0]["concept"] == concepts[1]["concept"] and concepts[0]["inferred"] == concepts[1]["inferred"]
  # The audit: the same generations, hence the same appearance rates and ROUGE-L; perplexities
  # to float rounding.
  audits = [_llm_done(w, "evaluate")["models"] for w in (one, two)]
  for model in ("original", "concept_poison", "retrain"):
    a, b = audits[0][model], audits[1][model]
    assert a.keys() == b.keys() and "appearance_forget_train" in a
    for k in a:
      if k.startswith(("appearance_", "rouge_l_")):
        assert abs(a[k] - b[k]) <= 1e-6, (model, k)
      elif k.startswith(("perplexity_", "fluency_", "mia_")):
        assert close(a[k], b[k], 1e-5), (model, k)
  assert (one / "evaluate" / "generations.jsonl").read_text() == (two / "evaluate" / "generations.jsonl").read_text()
  # The adapters saved and the merged model exported by process 0 hold the gathered weights.
  for name, atol in (("adapters.safetensors", 2e-4), ("hf/model.safetensors", 1e-5)):
    a, b = (load_file(str(w / "unlearn" / "concept_poison" / name)) for w in (one, two))
    assert a.keys() == b.keys() and a, name
    for k in a:
      assert a[k].shape == b[k].shape and np.allclose(a[k], b[k], rtol=0, atol=atol), (name, k)
  exported = two / "unlearn" / "concept_poison" / "hf"
  hf = transformers.LlamaForCausalLM.from_pretrained(exported)
  assert hf.config.hidden_size == 128
  assert sum(p.numel() for p in hf.parameters()) == _llm_done(two, "model")["parameters"]
  assert transformers.AutoTokenizer.from_pretrained(exported).eos_token_id == hf.config.eos_token_id

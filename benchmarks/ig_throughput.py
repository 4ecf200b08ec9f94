"""Integrated Gradients throughput (images/s): cu_jax vs captum on the same ViT, same rule and steps.

    python benchmarks/ig_throughput.py [--batch=64] [--n_steps=50] [--method=gausslegendre]
        [--chunks=64,128,256,512,1024,all,128@2,256@2] [--captum=default,1thread,ibs256]
        [--rounds=7]

The model is the demo ViT shape (configs/vit.py:demo: 28x28x1 images, patch 7, width 128, depth 4,
heads 4, MLP 256, 10 classes), built as a `transformers.ViTForImageClassification` with random
weights, saved, and imported into cu_jax's ViT (`load_hf_vit`): both sides run the same weights.
One batch of `--batch` images, one target per image, zero baselines, convergence deltas on both
sides (captum: `IntegratedGradients.attribute(..., return_convergence_delta=True)`). captum runs
as users run it (`--captum`): its default `internal_batch_size=None` (all batch x steps points in
one pass) with torch's default threads, with one torch thread, and with `internal_batch_size=256`;
"vs captum" is against the fastest of these.

Each setting runs in its own worker process, compiled / warmed up first; then the timed runs go
round-robin over the workers, one at a time, so that every setting sees the same background load.
cu_jax runs through `make_ig_fn`, on one XLA CPU device, or for `C@D` on D devices
(`make_ig_fn(..., mesh=)`: `jax.shard_map` over the examples): XLA:CPU runs this program's ops
one after another, which leaves the second core partly idle; a second device fills it.
Reported: the best and the median seconds per batch, images/s of the best, ours / best captum,
the peak resident memory during the timed runs (VmHWM, reset after warm-up; it includes the
process's baseline: Python, the framework and the model) and, for cu_jax, XLA's temporary-buffer
size for the compiled function (per device). The workers run with `MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=100000000000` in their environment (set here): without them large XLA:CPU
buffers are page-faulted in again on every execution, about 3x slower on large ops.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def _peak_rss_mb() -> float:
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def _reset_peak_rss():
  try:
    pathlib.Path("/proc/self/clear_refs").write_text("5")
  except OSError:
    pass  # not Linux, or not allowed: the peak then includes warm-up


def _inputs(batch: int):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch, 28, 28, 1)).astype(np.float32)
  return images, rng.integers(0, 10, batch)


def _make_model(folder: str):
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.ViTConfig(
      image_size=28, patch_size=7, num_channels=1, hidden_size=128, num_hidden_layers=4,
      num_attention_heads=4, intermediate_size=256, num_labels=10, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)
  transformers.ViTForImageClassification(config).eval().save_pretrained(folder, safe_serialization=True)


def _captum_worker(args, setting: str):
  """Returns (run() -> attributions, info)."""
  import torch
  import transformers
  from captum.attr import IntegratedGradients
  model = transformers.ViTForImageClassification.from_pretrained(args.folder).eval()
  images, target = _inputs(args.batch)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  t = torch.from_numpy(target)
  ibs = 256 if setting == "captum-ibs256" else None
  if setting == "captum-1thread":
    torch.set_num_threads(1)
  ig = IntegratedGradients(lambda pixels: model(pixel_values=pixels).logits)

  def run():
    attr, delta = ig.attribute(x, baselines=0.0, target=t, n_steps=args.n_steps, method=args.method,
                               internal_batch_size=ibs, return_convergence_delta=True)
    return attr.detach().numpy().transpose(0, 2, 3, 1)

  return run, {"torch_threads": torch.get_num_threads()}


def _jax_worker(args, setting: str):
  import jax
  from cu_jax.attribution.ig import make_ig_fn
  from cu_jax.models.hf_vit import load_hf_vit
  from cu_jax.parallel.mesh import make_mesh
  model = load_hf_vit(args.folder)
  images, target = _inputs(args.batch)
  chunk, _, devices = setting.split(":")[1].partition("@")
  devices = int(devices or 1)
  assert jax.device_count() == devices, (jax.device_count(), devices)
  chunk_size = args.batch * args.n_steps // devices if chunk == "all" else int(chunk)
  ig = make_ig_fn(model, n_steps=args.n_steps, method=args.method, chunk_size=chunk_size,
                  mesh=make_mesh(devices) if devices > 1 else None)
  t0 = time.perf_counter()
  mem = ig.lower(images, None, target).compile().memory_analysis()
  info = {"compile_s": time.perf_counter() - t0}
  if mem is not None:
    info["xla_temp_mb"] = mem.temp_size_in_bytes / 2**20

  def run():
    return np.asarray(jax.block_until_ready(ig(images, None, target)).attributions)

  return run, info


def worker(args):
  setting = args.worker
  run, info = (_captum_worker if setting.startswith("captum") else _jax_worker)(args, setting)
  attributions = run()  # warm-up
  np.save(os.path.join(args.folder, f"attr_{setting.replace(':', '_')}.npy"), attributions)
  _reset_peak_rss()
  print(json.dumps({"ready": True, **info}), flush=True)
  for line in sys.stdin:
    if line.strip() != "run":
      break
    t0 = time.perf_counter()
    run()
    print(json.dumps({"s": time.perf_counter() - t0}), flush=True)
  print(json.dumps({"peak_rss_mb": _peak_rss_mb()}), flush=True)


def main(args):
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", **_MALLOC)
  env.pop("XLA_FLAGS", None)  # one XLA CPU device
  settings = [f"captum{'' if c == 'default' else '-' + c}" for c in args.captum.split(",")]
  settings += [f"cu_jax:{c}" for c in args.chunks.split(",")]
  load0 = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as folder:
    _make_model(folder)
    print(f"IG of the demo ViT (28x28x1, patch 7, width 128, depth 4, heads 4, MLP 256), "
          f"batch {args.batch}, {args.method}, {args.n_steps} steps = "
          f"{args.batch * args.n_steps} path points; {os.cpu_count()} CPU cores; "
          f"best and median of {args.rounds} round-robin runs", flush=True)
    workers, info = {}, {}
    for s in settings:  # start and warm up one at a time
      cmd = [sys.executable, __file__, f"--worker={s}", f"--folder={folder}", f"--batch={args.batch}",
             f"--n_steps={args.n_steps}", f"--method={args.method}"]
      log = open(os.path.join(folder, f"log_{s.replace(':', '_')}.txt"), "w")
      devices = s.partition("@")[2]
      wenv = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}") if devices else env
      p = subprocess.Popen(cmd, cwd=root, env=wenv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=log, text=True)
      line = p.stdout.readline()
      if not line:
        log.close()
        raise RuntimeError(f"worker {s} failed:\n" + pathlib.Path(log.name).read_text()[-3000:])
      info[s] = json.loads(line)
      workers[s] = p
    times = {s: [] for s in settings}
    for r in range(args.rounds):
      order = settings[r % len(settings):] + settings[:r % len(settings)]
      for s in order:
        workers[s].stdin.write("run\n")
        workers[s].stdin.flush()
        times[s].append(json.loads(workers[s].stdout.readline())["s"])
    for s, p in workers.items():
      p.stdin.write("stop\n")
      p.stdin.flush()
      info[s].update(json.loads(p.stdout.readline()))
      p.wait()
    reference = np.load(os.path.join(folder, f"attr_{settings[0]}.npy"))
    diff = {}
    for s in settings:
      ours = np.load(os.path.join(folder, f"attr_{s.replace(':', '_')}.npy"))
      diff[s] = np.linalg.norm(ours - reference) / np.linalg.norm(reference)

  captum_best = min(min(t) for s, t in times.items() if s.startswith("captum"))
  print(f"{'setting':>16} {'best s':>7} {'median s':>8} {'images/s':>9} {'vs captum':>9} "
        f"{'peak RSS MB':>11} {'XLA temp MB':>11} {'compile s':>9} {'rel. diff':>9}")
  for s in settings:
    best, med = min(times[s]), float(np.median(times[s]))
    i = info[s]
    temp = f"{i['xla_temp_mb']:.0f}" if "xla_temp_mb" in i else "-"
    comp = f"{i['compile_s']:.1f}" if "compile_s" in i else "-"
    print(f"{s:>16} {best:>7.3f} {med:>8.3f} {args.batch / best:>9.1f} {captum_best / best:>8.2f}x "
          f"{i['peak_rss_mb']:>11.0f} {temp:>11} {comp:>9} {diff[s]:>9.1e}")
  print(f"vs captum: against the fastest captum setting's best time. rel. diff: ||attr - a|| / ||a||, "
        f"a = {settings[0]}'s attributions. Load average {os.getloadavg()[0]:.1f} at the end "
        f"({load0:.1f} at the start).")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--n_steps", type=int, default=50)
  parser.add_argument("--method", default="gausslegendre")
  parser.add_argument("--chunks", default="64,128,256,512,1024,all,128@2,256@2",
                      help="cu_jax chunk sizes (path points per pass; 'all' = batch x steps); "
                      "'C@D': chunk C on D XLA CPU devices, the examples sharded over them")
  parser.add_argument("--captum", default="default,1thread,ibs256",
                      help="captum settings: default (all points in one pass, torch's threads), "
                      "1thread (torch.set_num_threads(1)), ibs256 (internal_batch_size=256)")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--folder", help=argparse.SUPPRESS)
  a = parser.parse_args()
  if a.worker:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    worker(a)
  else:
    main(a)

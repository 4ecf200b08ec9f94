"""Does the paper ViT-B/16 run fit one accelerator chip? Compiled abstractly, no weights, no data.

Builds the model of `configs/vit.py` (default variant: ViT-B/16 at 224 px, CIFAR-10's 10 classes
and 32 px stored images resized on device) as `ShapeDtypeStruct`s, lays it out as the pipeline
does (parameters and optimizer state replicated, the batch split over a `data` mesh of N fake CPU
devices) and compiles, for the configured global batches:

- the train step (train and retrain: `cu_jax.training.steps.make_train_step`),
- the unlearning step (`cu_jax.unlearning.methods.unlearning_loss`, with SCRUB's teacher logits),
- the input-space IG of the attribute and poison stages (`cu_jax.attribution.saliency`): one call
  of 128 images x `attribution.saliency_steps` path points, at the default 128 points per pass
  and at the points per pass sized to the budget (`ig_points_per_pass`).

XLA's memory and cost analyses of each compiled program give per-device memory (arguments,
temporaries, outputs) and FLOPs per call; with `--utilisation` and a chip's peak rate they give
the expected wall time of each stage (BUILD.md, "Time at paper scale").

    python benchmarks/vit_memory.py [--devices 8] [--budget_gib 16] [--config configs/vit.py]
        [--set model.dtype=float32 --set train.grad_accum=2 ...]

The compiler is XLA:CPU: TPU and GPU layouts (and fusions) differ, so keep a margin.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--budget_gib", type=float, default=16.0)
parser.add_argument("--config", default="configs/vit.py")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override, as --config.KEY=VALUE on the CLI (repeatable)")
parser.add_argument("--ig_images", type=int, default=128, help="images per IG call (the saliency chunk)")
parser.add_argument("--skip_ig_budget", action="store_true", help="only the default IG chunk (faster)")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from cu_jax.attribution.ig import DEFAULT_CHUNK_POINTS, make_ig_fn  # noqa: E402
from cu_jax.attribution.saliency import ig_points_per_pass  # noqa: E402
from cu_jax.data.preprocess import preprocess  # noqa: E402
from cu_jax.models.factory import vit_config  # noqa: E402
from cu_jax.models.vit import ViT  # noqa: E402
from cu_jax.parallel.memory import GIB, flops, peak_bytes  # noqa: E402
from cu_jax.parallel.mesh import data_sharded, make_mesh, replicated  # noqa: E402
from cu_jax.training import optim, steps  # noqa: E402
from cu_jax.unlearning.methods import unlearning_loss  # noqa: E402
from cu_jax.utils.config import load_config  # noqa: E402

STORED, NUM_CLASSES = (32, 32, 3), 10  # CIFAR-10


def parse_override(kv: str) -> tuple[str, object]:
  key, _, value = kv.partition("=")
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def spec(shape, dtype, sharding):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def abstract(tree, sharding):
  return jax.tree.map(lambda x: spec(np.shape(x), x.dtype, sharding), tree)


def report(name: str, compiled, budget: float, *, repeats: int = 1) -> dict:
  """Prints a compiled program's per-device memory and FLOPs. XLA's cost analysis counts a loop
  body once, so the FLOPs of a program that loops (gradient accumulation, IG's chunks) are its
  body's times `repeats`."""
  peak, f = peak_bytes(compiled), flops(compiled) * repeats
  m = compiled.memory_analysis()
  print(f"{name:<44} {peak / GIB:6.2f} GiB/device (args {m.argument_size_in_bytes / GIB:.2f}, temp "
        f"{m.temp_size_in_bytes / GIB:.2f}, out {m.output_size_in_bytes / GIB:.2f})  {f / 1e12:6.2f} TFLOP/device  "
        f"{'fits' if peak <= budget else 'DOES NOT FIT'}")
  return {"bytes": peak, "flops": f}


def main():
  cfg = load_config(args.config, dict(map(parse_override, args.set)))
  mesh = make_mesh()
  budget = args.budget_gib * GIB
  model_cfg = vit_config(cfg.model, image_size=cfg.data.image_size or STORED[0], channels=STORED[2],
                         num_classes=NUM_CLASSES)
  model = nnx.eval_shape(lambda: ViT(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model, nnx.Param)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  rep, data = replicated(mesh), data_sharded(mesh)
  print(f"model: ViT {model_cfg.depth} x {model_cfg.width} patch {model_cfg.patch_size} at {model_cfg.image_size} px, "
        f"{n_params / 1e6:.1f} M parameters; compute {model_cfg.dtype}, remat {model_cfg.remat}; "
        f"mesh {dict(mesh.shape)}; budget {args.budget_gib:g} GiB/device")

  results = {}
  for name, section, loss_fn, extra in (
      ("train / retrain step", cfg.train, steps.classification_loss(), {"label": ((), jnp.int32)}),
      ("unlearn step", cfg.unlearn.train, unlearning_loss(cfg.unlearn.ascent_cap),
       {"target": ((NUM_CLASSES,), jnp.float32), "ce_weight": ((), jnp.float32),
        "kl_weight": ((), jnp.float32), "teacher": ((NUM_CLASSES,), jnp.float32)})):
    optim_cfg = cfg.optim if section is cfg.train else cfg.unlearn.optim
    tx, _ = optim.make_optimizer(optim_cfg, 1000)
    state = jax.eval_shape(lambda p: {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}, params)
    b = section.batch_size
    batch = {"image": spec((b, *STORED), jnp.uint8, data),
             **{k: spec((b, *shape), dt, data) for k, (shape, dt) in extra.items()}}
    step = steps.make_train_step(graphdef, tx, cfg.data, mesh, loss_fn, seed=0, microbatches=section.grad_accum)
    t0 = time.perf_counter()
    compiled = step.lower(abstract(state, rep), batch).compile()
    label = f"{name} (batch {b}, accum {section.grad_accum})"
    results[name] = report(label, compiled, budget, repeats=section.grad_accum) | {"examples": b}
    print(f"{'':44} compiled in {time.perf_counter() - t0:.0f} s")

  # Input-space IG of a concept score through the backbone (attribute and poison stages).
  width = model_cfg.width

  def score(pixels, state, v, b):
    embedding = nnx.merge(graphdef, state).embed(preprocess(pixels, cfg.data))
    return (embedding @ v + b) / jnp.linalg.norm(v)

  ig_args = (abstract(params, rep), spec((width,), jnp.float32, rep), spec((), jnp.float32, rep))
  inputs = spec((args.ig_images, *STORED), jnp.float32, data)
  n_steps = cfg.attribution.saliency_steps
  build = lambda c: make_ig_fn(score, n_steps=n_steps, chunk_size=c, mesh=mesh)
  per_device = -(-args.ig_images // args.devices) * n_steps  # path points per device per call
  for points in (DEFAULT_CHUNK_POINTS, None if args.skip_ig_budget else "budget"):
    if points is None:
      continue
    t0 = time.perf_counter()
    if points == "budget":
      points = ig_points_per_pass(build, inputs, ig_args, n_steps=n_steps, memory_gib=0.9 * args.budget_gib,
                                  mesh=mesh)
    compiled = build(points).lower(inputs, 0.0, args=ig_args).compile()
    # The chunk loop's body is one pass of `points` path points per device.
    results[f"IG at {points} points/pass"] = report(
        f"IG, {points} points/pass ({args.ig_images} images x {n_steps})", compiled, budget,
        repeats=-(-per_device // points)) | {"examples": args.ig_images}
    print(f"{'':44} compiled in {time.perf_counter() - t0:.0f} s")

  # What one example costs, all devices together: the basis of BUILD.md's time estimates.
  print("FLOPs per example: " + ", ".join(f"{k} {v['flops'] * args.devices / v['examples'] / 1e9:.0f} GFLOP"
                                          for k, v in results.items()))

if __name__ == "__main__":
  main()

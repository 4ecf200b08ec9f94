"""Checks that batches and predictions line up with their examples on meshes whose device order
interleaves processes. Run by tests/test_multiprocess.py, in one process of 4 CPU devices and as
2 processes x 2 devices:

    python launch/local_multiprocess.py --num_processes=2 --devices_per_process=2 \
        --script=tests/multihost_order_check.py -- --out=/tmp/order.npz

The global device list (sorted by process, then id) is permuted to [0, 2, 1, 3], so with 2
processes the mesh's device order is [p0d0, p1d0, p0d1, p1d1]: along a 1-D `data` axis process 0
owns the first and third quarters of every batch, not the first half. Example i of the in-memory
source has an image filled with the value i and label i % 3, so a row's image says which example
landed there. Checked on every mesh (each process, exact equality):
- TrainLoader batches: every device's shard holds the rows of `global_indices(step)` it should,
  and the gathered batch is `global_indices(step)` in row order (`iterate` too);
- `predict` of the image mean returns 0, 1, ..., N-1 (every example once, in order; the last
  batch padded), and with explicit `indices` returns those indices.
Process 0 writes what it gathered to `--out` (an .npz) so the test can compare job layouts.
Exits 1 after printing every mismatch.
"""

from __future__ import annotations

import argparse
import sys

from cu_jax.parallel.distributed import maybe_initialize

NUM_CLASSES = 3


def _meshes(jax, np) -> dict:
  from jax.sharding import AxisType, Mesh
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  assert len(devices) == 4, f"expected 4 devices, got {len(devices)}"
  order = np.asarray(devices, dtype=object)[[0, 2, 1, 3]]
  auto = lambda n: (AxisType.Auto,) * n
  return {
      # The batch split 4 ways; each process owns non-contiguous quarters.
      "data": Mesh(order, ("data",), axis_types=auto(1)),
      # The batch split over data x fsdp (the LLM mesh), same interleaving.
      "data_fsdp": Mesh(order.reshape(2, 2), ("data", "fsdp"), axis_types=auto(2)),
      # An axis that does not split the batch: every process holds every row (on 2 devices each).
      "replicated_across": Mesh(order.reshape(2, 2), ("data", "model"), axis_types=auto(2)),
      # ... or each process holds one half, on both of its devices.
      "replicated_within": Mesh(order.reshape(2, 2), ("model", "data"), axis_types=auto(2)),
  }


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  maybe_initialize()
  import jax
  import numpy as np
  from cu_jax.data.datasets import ArraySource
  from cu_jax.data.loader import TrainLoader
  from cu_jax.parallel.host import to_host
  from cu_jax.training.predict import predict

  def source(n: int) -> ArraySource:
    values = np.arange(n, dtype=np.float32)
    return ArraySource(image=np.broadcast_to(values[:, None, None, None], (n, 2, 2, 1)).copy(),
                       label=(np.arange(n) % NUM_CLASSES).astype(np.int32))

  failures, saved = [], {}

  def check(name: str, got, want) -> None:
    if not np.array_equal(np.asarray(got), np.asarray(want)):
      failures.append(f"{name}: got {np.asarray(got).tolist()}, want {np.asarray(want).tolist()}")

  mean = jax.jit(lambda params, batch: batch["image"].mean(axis=(1, 2, 3)))
  for case, mesh in _meshes(jax, np).items():
    train = TrainLoader(source(40), global_batch=8, mesh=mesh, seed=0)  # 5 steps an epoch
    for step in range(7):
      want = train.global_indices(step)
      batch = train.to_device(train.host_batch(step))
      for shard in batch["image"].addressable_shards:
        check(f"{case} train step {step} shard on {shard.device}", np.asarray(shard.data)[:, 0, 0, 0],
              want[shard.index[0]])
      got = to_host(batch)
      check(f"{case} train step {step} images", got["image"][:, 0, 0, 0], want)
      check(f"{case} train step {step} labels", got["label"], want % NUM_CLASSES)
      saved[f"{case}/train/{step}"] = got["image"][:, 0, 0, 0]
    for step, batch in train.iterate(3, 7):
      check(f"{case} iterate step {step}", to_host(batch["image"])[:, 0, 0, 0], train.global_indices(step))

    n = 22  # 3 batches of 8, the last one padded
    out = predict(mean, None, source(n), global_batch=8, mesh=mesh)
    check(f"{case} predict", out, np.arange(n))
    check(f"{case} predict labels", out.astype(np.int64) % NUM_CLASSES, source(n).arrays["label"])
    subset = np.random.default_rng(1).permutation(n)[:13]
    out_subset = predict(mean, None, source(n), global_batch=8, mesh=mesh, indices=subset)
    check(f"{case} predict indices", out_subset, subset)
    saved[f"{case}/predict"], saved[f"{case}/predict_indices"] = out, out_subset

  for line in failures:
    print(f"MISMATCH {line}", flush=True)
  if jax.process_index() == 0:
    np.savez(args.out, **saved)
  print(f"order check: {len(failures)} mismatches on process {jax.process_index()} of {jax.process_count()}",
        flush=True)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

"""Global batches sharded over the mesh's `data` axis, deterministic for (seed, step).

Batch `step` of a run is a pure function of (seed, step): epoch `e = step // steps_per_epoch`
shuffles the example indices with a permutation drawn from (seed, e), and the batch is slice
`step % steps_per_epoch` of it. A resumed run therefore sees exactly the batches the interrupted
run would have seen. Each host reads only the rows of the global batch that its own devices hold
(which rows those are follows the mesh's device order: `cu_jax.parallel.host`), and the global
array is assembled from one piece per device, so row r of every batch array is example
`global_indices[r]` on any mesh. Images stay uint8 until they are on device
(`cu_jax.data.preprocess`).
"""

from __future__ import annotations

import concurrent.futures
import itertools
from typing import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from cu_jax.data.datasets import RandomAccessSource
from cu_jax.parallel.host import assemble, host_rows
from cu_jax.parallel.mesh import check_global_batch, data_sharded


def _read_local(source: RandomAccessSource, indices: np.ndarray, keys: Sequence[str]) -> dict[str, np.ndarray]:
  records = source.__getitems__(indices.tolist())
  return {k: np.stack([np.asarray(r[k]) for r in records]) for k in keys}


def _place(mesh: Mesh, rows: np.ndarray, n: int, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Global (n, ...) batch arrays, sharded over the batch axes, from this host's `rows` of them."""
  sharding = data_sharded(mesh)
  return {k: assemble(sharding, n, rows, v) for k, v in host_batch.items()}


class TrainLoader:
  """Shuffled, epoch-aware global batches (the remainder of each epoch is dropped)."""

  def __init__(self, source: RandomAccessSource, *, global_batch: int, mesh: Mesh, seed: int,
               keys: Sequence[str] = ("image", "label"), prefetch: int = 2):
    check_global_batch(global_batch, mesh)
    if len(source) < global_batch:
      raise ValueError(f"the training set has {len(source)} examples, fewer than one global batch "
                       f"({global_batch}); lower train.batch_size")
    self.source, self.global_batch, self.mesh, self.seed = source, global_batch, mesh, seed
    self.keys, self.prefetch = tuple(keys), prefetch
    self.steps_per_epoch = len(source) // global_batch
    # The rows of every global batch this host's devices hold (the same for every step).
    self.rows = host_rows(data_sharded(mesh), global_batch)
    self._perm_cache: tuple[int, np.ndarray] | None = None

  def global_indices(self, step: int) -> np.ndarray:
    """Example indices of global batch `step` (all hosts agree on them)."""
    epoch, i = divmod(step, self.steps_per_epoch)
    if self._perm_cache is None or self._perm_cache[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._perm_cache = (epoch, rng.permutation(len(self.source)))
    return self._perm_cache[1][i * self.global_batch:(i + 1) * self.global_batch]

  def host_batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's rows (`self.rows`, ascending) of global batch `step`."""
    return _read_local(self.source, self.global_indices(step)[self.rows], self.keys)

  def to_device(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return _place(self.mesh, self.rows, self.global_batch, host_batch)

  def iterate(self, start_step: int, stop_step: int) -> Iterator[tuple[int, dict[str, jax.Array]]]:
    """Yields `(step, global batch)` for steps [start_step, stop_step), reading ahead in a thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      pending = [pool.submit(self.host_batch, s)
                 for s in range(start_step, min(stop_step, start_step + self.prefetch))]
      for step in range(start_step, stop_step):
        batch = pending.pop(0).result()
        ahead = step + self.prefetch
        if ahead < stop_step:
          pending.append(pool.submit(self.host_batch, ahead))
        yield step, self.to_device(batch)


def eval_batches(source: RandomAccessSource, *, global_batch: int, mesh: Mesh,
                 keys: Sequence[str] = ("image", "label"), indices: np.ndarray | None = None
                 ) -> Iterator[dict[str, jax.Array]]:
  """Every example once, in order; the last batch is padded and carries `mask` (1 = real)."""
  check_global_batch(global_batch, mesh, "eval batch size")
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)
  rows = host_rows(data_sharded(mesh), global_batch)
  for start in itertools.count(0, global_batch):
    if start >= len(indices):
      return
    chunk = indices[start:start + global_batch]
    n_real = len(chunk)
    padded = np.concatenate([chunk, np.full(global_batch - n_real, chunk[0])])
    mask = (np.arange(global_batch) < n_real).astype(np.float32)
    batch = _read_local(source, padded[rows], keys)
    batch["mask"] = mask[rows]
    yield _place(mesh, rows, global_batch, batch)

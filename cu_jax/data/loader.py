"""Global batches sharded over the mesh's `data` axis, deterministic for (seed, step).

Batch `step` of a run is a pure function of (seed, step): epoch `e = step // steps_per_epoch`
shuffles the example indices with a permutation drawn from (seed, e), and the batch is slice
`step % steps_per_epoch` of it. A resumed run therefore sees exactly the batches the interrupted
run would have seen. Each host reads only its own contiguous part of the global batch
(`jax.process_index()`), and `jax.make_array_from_process_local_data` assembles the global array.
Images stay uint8 until they are on device (`cu_jax.data.preprocess`).
"""

from __future__ import annotations

import concurrent.futures
import itertools
from typing import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from cu_jax.data.datasets import RandomAccessSource
from cu_jax.parallel.mesh import check_global_batch, data_sharded


def _read_local(source: RandomAccessSource, indices: np.ndarray, keys: Sequence[str]) -> dict[str, np.ndarray]:
  records = source.__getitems__(indices.tolist())
  return {k: np.stack([np.asarray(r[k]) for r in records]) for k in keys}


def _host_slice(global_indices: np.ndarray) -> np.ndarray:
  per_host = len(global_indices) // jax.process_count()
  start = jax.process_index() * per_host
  return global_indices[start:start + per_host]


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
    self._perm_cache: tuple[int, np.ndarray] | None = None

  def global_indices(self, step: int) -> np.ndarray:
    """Example indices of global batch `step` (all hosts agree on them)."""
    epoch, i = divmod(step, self.steps_per_epoch)
    if self._perm_cache is None or self._perm_cache[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._perm_cache = (epoch, rng.permutation(len(self.source)))
    return self._perm_cache[1][i * self.global_batch:(i + 1) * self.global_batch]

  def host_batch(self, step: int) -> dict[str, np.ndarray]:
    return _read_local(self.source, _host_slice(self.global_indices(step)), self.keys)

  def to_device(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    sharding = data_sharded(self.mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}

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
  sharding = data_sharded(mesh)
  for start in itertools.count(0, global_batch):
    if start >= len(indices):
      return
    chunk = indices[start:start + global_batch]
    n_real = len(chunk)
    padded = np.concatenate([chunk, np.full(global_batch - n_real, chunk[0])])
    mask = (np.arange(global_batch) < n_real).astype(np.float32)
    local_idx, local_mask = _host_slice(padded), _host_slice(mask)
    batch = _read_local(source, local_idx, keys)
    batch["mask"] = local_mask
    yield {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}

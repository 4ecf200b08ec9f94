"""Moving batch-sharded arrays between host memory and a mesh that may span several processes.

A global batch of `n` rows sharded over the mesh's batch axes (`mesh.data_sharded`) is held by
devices of every process, and which rows a process's devices hold is decided by the mesh's device
order, not by the process index: on a TPU slice `jax.make_mesh` orders devices (e.g. a ring over
a 4x4 v5e) so that one host's devices own rows that are not contiguous. So a host never assumes
"my part is rows [pid * n / P, (pid + 1) * n / P)": it asks the sharding which rows each of its
devices holds (`device_rows`), reads exactly those (`host_rows`), and builds the global array from
one piece per device (`assemble`). Devices that hold the same rows (a mesh axis that does not split
the batch) get the same piece.

`to_host` is the way back: every process gets the whole global value in global row order (a
collective when the array spans processes, so every process must call it on the same arrays).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding


def device_rows(sharding: Sharding, n: int) -> dict[jax.Device, np.ndarray]:
  """The global rows (of a leading dimension of size `n`) that each of this process's devices holds."""
  return {d: np.arange(n)[index[0]] for d, index in sharding.addressable_devices_indices_map((n,)).items()}


def host_rows(sharding: Sharding, n: int) -> np.ndarray:
  """The distinct global rows this process's devices hold, ascending: the rows it must read."""
  return np.unique(np.concatenate(list(device_rows(sharding, n).values())))


def assemble(sharding: Sharding, n: int, rows: np.ndarray, local: np.ndarray) -> jax.Array:
  """The global (n, ...) array whose row `rows[i]` is `local[i]`, laid out by `sharding`.

  `rows` must cover this process's `host_rows` (ascending); each device gets its own rows (and its
  part of the other dimensions, should `sharding` split them too).
  """
  local = np.asarray(local)
  shape = (n, *local.shape[1:])
  devices, pieces = [], []
  for d, index in sharding.addressable_devices_indices_map(shape).items():
    wanted = np.arange(n)[index[0]]
    pos = np.searchsorted(rows, wanted)
    if np.any(pos >= len(rows)) or np.any(rows[np.minimum(pos, len(rows) - 1)] != wanted):
      raise ValueError(f"device {d} holds rows {wanted.tolist()}, which are not all among the rows read")
    contiguous = len(pos) > 0 and pos[-1] - pos[0] == len(pos) - 1
    piece = local[pos[0]:pos[-1] + 1] if contiguous else local[pos]
    devices.append(d)
    pieces.append(piece[(slice(None), *index[1:])])
  return jax.make_array_from_single_device_arrays(shape, sharding, jax.device_put(pieces, devices))


def to_host(tree: Any) -> Any:
  """Every array of `tree` as a numpy array holding its whole global value, in global order.

  An array split over devices of several processes is all-gathered (a collective: every process
  must make the same call); a replicated one is read from a local copy; the rest is local already.
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(one, tree)

"""The device mesh and the shardings the train step uses.

Training is data-parallel: the batch is sharded over the mesh's `data` axis and parameters are
replicated; `jax.jit` inserts the gradient all-reduce (this is what `pmap` + `lax.pmean` did, see
DESIGN §6). Axes are `Auto` so that XLA propagates shardings through the model; the default
`Explicit` axes of `jax.make_mesh` make a ViT fail with `ShardingTypeError`.
"""

from __future__ import annotations

import numpy as np
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from cu_jax.utils.errors import UserError

DATA = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D `data` mesh over the first `num_devices` devices (0 = all)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise UserError(f"mesh.num_devices={num_devices} but {len(devices)} devices are visible; "
                    "use 0 (all) or a number up to that")
  n = num_devices or len(devices)
  if n == len(devices):
    return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,))
  return Mesh(np.asarray(devices[:n]), (DATA,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over `data`, the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def check_global_batch(global_batch: int, mesh: Mesh, what: str = "train.batch_size") -> int:
  """Returns the per-host batch; the global batch is fixed by config, never by the device count."""
  n = mesh.shape[DATA]
  if global_batch <= 0 or global_batch % n:
    lo = max(n, global_batch // n * n)
    raise UserError(f"{what}={global_batch} is not divisible by the {n} devices of the mesh's "
                    f"data axis; use a multiple of {n} (e.g. {lo} or {lo + n})")
  if global_batch % jax.process_count():
    raise UserError(f"{what}={global_batch} is not divisible by the {jax.process_count()} hosts")
  return global_batch // jax.process_count()

"""The device mesh and the shardings the train step uses.

Training is data-parallel: the batch is sharded over the mesh's `data` axis and parameters are
replicated; `jax.jit` inserts the gradient all-reduce that `pmap` + `lax.pmean` spelled out by
hand, so one program serves any device count. For an LLM the mesh gets a second axis, `fsdp`: the
batch is split over both axes (every device sees its own examples) and each large parameter is
split over `fsdp` (`fsdp_sharding`); XLA all-gathers a layer's weights where it is used and
reduce-scatters their gradients (ZeRO-3 / FSDP). Axes are `Auto` so that XLA propagates shardings
through the model; the default `Explicit` axes of `jax.make_mesh` make a ViT fail with
`ShardingTypeError`.
"""

from __future__ import annotations

import numpy as np
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from cu_jax.utils.errors import UserError

DATA = "data"
FSDP = "fsdp"


def make_mesh(num_devices: int = 0, fsdp: int = 0) -> Mesh:
  """A `data` mesh over the first `num_devices` devices (0 = all).

  `fsdp` > 0 adds an `fsdp` axis of that size: the mesh is (devices / fsdp, fsdp); -1 puts every
  device on the `fsdp` axis.
  """
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise UserError(f"mesh.num_devices={num_devices} but {len(devices)} devices are visible; "
                    "use 0 (all) or a number up to that")
  n = num_devices or len(devices)
  fsdp = n if fsdp == -1 else fsdp
  if fsdp < 0 or (fsdp and n % fsdp):
    raise UserError(f"mesh.fsdp={fsdp} does not divide the {n} devices; use a divisor of {n}, or -1 for all")
  shape, names = ((n // fsdp, fsdp), (DATA, FSDP)) if fsdp else ((n,), (DATA,))
  types = (AxisType.Auto,) * len(names)
  if n == len(devices):
    return jax.make_mesh(shape, names, axis_types=types)
  return Mesh(np.asarray(devices[:n]).reshape(shape), names, axis_types=types)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes the batch is split over: `data`, and `fsdp` where the mesh has one."""
  return tuple(a for a in (DATA, FSDP) if a in mesh.axis_names)


def batch_devices(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over `data` (and `fsdp`), the rest replicated."""
  axes = batch_axes(mesh)
  return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))


def fsdp_spec(shape: tuple[int, ...], mesh: Mesh, min_size: int = 2**14) -> NamedSharding:
  """Where an array of `shape` lives: its largest dimension divisible by the `fsdp` axis is split
  over it; arrays under `min_size` elements (norm scales, LoRA adapters), arrays with no divisible
  dimension, and every array of a mesh without an `fsdp` axis are replicated."""
  n = mesh.shape.get(FSDP, 1)
  dims = [d for d in np.argsort(shape)[::-1] if shape[d] % n == 0]
  if n == 1 or np.prod(shape) < min_size or not dims:
    return NamedSharding(mesh, P())
  return NamedSharding(mesh, P(*[FSDP if d == dims[0] else None for d in range(len(shape))]))


def fsdp_sharding(tree, mesh: Mesh):
  """`fsdp_spec` of every array of `tree` (parameters, optimizer state, abstract or concrete)."""
  return jax.tree.map(lambda x: fsdp_spec(np.shape(x), mesh), tree)


def check_global_batch(global_batch: int, mesh: Mesh, what: str = "train.batch_size", microbatches: int = 1) -> int:
  """Returns the per-host batch; the global batch is fixed by config, never by the device count.

  `microbatches` > 1 (gradient accumulation, the section's `grad_accum`): each device's share of
  the batch must divide into that many microbatches too."""
  n = batch_devices(mesh)
  if global_batch <= 0 or global_batch % n:
    lo = max(n, global_batch // n * n)
    raise UserError(f"{what}={global_batch} is not divisible by the {n} devices the batch is split "
                    f"over; use a multiple of {n} (e.g. {lo} or {lo + n})")
  if global_batch % jax.process_count():
    raise UserError(f"{what}={global_batch} is not divisible by the {jax.process_count()} hosts")
  if (global_batch // n) % microbatches:
    accum = f"{what.rsplit('.', 1)[0]}.grad_accum" if "." in what else "grad_accum"
    raise UserError(f"{what}={global_batch} gives {global_batch // n} examples per device ({n} devices), which "
                    f"{accum}={microbatches} microbatches do not divide; use a {what} that is a multiple of "
                    f"{n * microbatches}, or a {accum} that divides {global_batch // n}")
  return global_batch // jax.process_count()

"""Device memory: what a compiled program needs per device, what a device has, and the largest
work size that fits a budget.

XLA's memory analysis of a compiled (SPMD) program is per device: its arguments (the device's
shards), temporaries (activations, gradients, gathered weights) and outputs, less the outputs that
reuse donated arguments. That is what `peak_bytes` adds up; it is known before anything runs, from
abstract shapes alone.
"""

from __future__ import annotations

import math
from typing import Callable

import jax

GIB = 2**30


def peak_bytes(compiled) -> int:
  """Per-device bytes a compiled program holds at once (arguments + temporaries + outputs - aliased
  + generated code)."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + getattr(m, "generated_code_size_in_bytes", 0))


def flops(compiled) -> float:
  """XLA's count of floating-point operations of one call of a compiled program (per device)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def free_device_bytes(fraction: float = 0.9) -> int | None:
  """`fraction` of what the first local device reports free (limit - in use), None where the
  platform reports no memory statistics (CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" not in stats:
    return None
  return int(fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))


def largest_fitting(memory_of: Callable[[int], int], budget_bytes: int, *, most: int,
                    probes: tuple[int, int] = (8, 32)) -> tuple[int, int]:
  """The largest size n <= `most` (e.g. IG path points per pass) with memory_of(n) <= budget, and
  its memory: (n, bytes).

  Memory is near-linear in a work size (a fixed part plus activations per item), so two probes
  give the slope and a first guess; each guess is compiled and checked, and shrunk in proportion
  while it does not fit. Raises `MemoryError` when even n = 1 needs more than the budget.
  """
  lo, hi = (min(p, most) for p in probes)
  if lo == hi:
    lo = max(1, hi // 2)
  m_lo, m_hi = memory_of(lo), memory_of(hi)
  per_item = max((m_hi - m_lo) / max(hi - lo, 1), 1.0)
  n = max(1, min(most, math.floor(lo + (budget_bytes - m_lo) / per_item)))
  for _ in range(6):
    m = m_hi if n == hi else m_lo if n == lo else memory_of(n)
    if m <= budget_bytes:
      return n, m
    if n == 1:
      break
    n = max(1, math.floor(n * budget_bytes / m * 0.95))
  raise MemoryError(f"needs {memory_of(1) / GIB:.2f} GiB per device at a work size of 1, more than the "
                    f"budget of {budget_bytes / GIB:.2f} GiB")

"""What the image and the LLM reports have in common: the run's facts (devices, platform, seed,
package versions), number formatting and Markdown tables."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any, Sequence

import jax
import numpy as np

from cu_jax.pipeline.artifacts import Workdir

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn", "tensorflow-datasets")


def versions() -> dict[str, str]:
  """Versions of the packages the numbers depend on, and of Python."""
  return {n: importlib.metadata.version(n) for n in PACKAGES} | {"python": platform.python_version()}


def run_facts(ctx) -> dict[str, Any]:
  """Where and how the run ran: devices, platform, processes, seed and versions."""
  return {"seed": ctx.config.seed, "num_devices": int(ctx.mesh.size), "platform": jax.devices()[0].platform,
          "num_processes": jax.process_count(), "versions": versions()}


def stage_summaries(ctx, exclude: Sequence[str] = ("report",)) -> dict[str, dict | None]:
  """`done.json` of every configured stage (None for one that has not finished)."""
  work = Workdir(ctx)
  return {name: work.done(name) for name in ctx.config.stages if name not in exclude}


def fmt(value, ref=None, percent: bool = False) -> str:
  """A table cell: ints as they are, floats to 3 decimals (or as a percentage to 2), '–' for a
  missing value; with `ref`, the difference to it in brackets."""
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return "–"
  if isinstance(value, int) and not isinstance(value, bool):
    text = str(value)
  else:
    text = f"{100 * value:.2f}" if percent else f"{value:.3f}"
  if ref is not None and not isinstance(ref, (list, dict)) and ref == ref:
    delta = (value - ref) * (100 if percent else 1)
    text += f" ({delta:+.2f})" if not isinstance(value, int) else f" ({delta:+d})"
  return text


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """Markdown lines of a table with `header` and `rows` of already formatted cells."""
  return (["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
          + ["| " + " | ".join(row) + " |" for row in rows])

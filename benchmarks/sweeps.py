"""What the sweep benchmarks share: running the CLI, copying a run's shared stages into a new
workdir, and mean +- sd tables over runs."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
# glibc keeps large buffers instead of returning them to the OS (XLA:CPU is ~3x slower otherwise)
ENV = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="100000000000")


def tuple_value(names) -> str:
  """A tuple config override's value: ("a", "b",)."""
  return "(" + ",".join(f'"{n}"' for n in names) + ",)"


def cli(config: str, workdir: pathlib.Path, overrides: Sequence[str]) -> float:
  """Runs the CLI; returns its wall time (s)."""
  t0 = time.perf_counter()
  cmd = [sys.executable, "-m", "cu_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
  print("+", " ".join(cmd[1:]), flush=True)
  subprocess.run(cmd, cwd=ROOT, env=ENV, check=True)
  return time.perf_counter() - t0


def seeded_copy(source: pathlib.Path, target: pathlib.Path, stages: Sequence[str]) -> None:
  """A workdir holding `source`'s `stages` (their outputs and records, not their checkpoints),
  nothing after them: a run there reuses them and runs the rest."""
  target.mkdir(parents=True, exist_ok=True)
  for stage in stages:
    if (source / stage).exists() and not (target / stage).exists():
      shutil.copytree(source / stage, target / stage, ignore=shutil.ignore_patterns("checkpoints"))


def _stats(values: list[float]) -> dict:
  return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          "n": len(values)}


def summarise(runs: list[dict], figures: Sequence[str], rank_by: str, lower_is_better: bool = True) -> dict:
  """Mean, sd and count of every figure per model over `runs` ({"figures": model -> figure ->
  value}), and each model's mean rank by `rank_by` within a run."""
  models = sorted({n for r in runs for n in r["figures"]})
  table = {}
  for name in models:
    rows = [r["figures"][name] for r in runs if name in r["figures"]]
    table[name] = {k: _stats(v) for k in figures if (v := [row[k] for row in rows if k in row])}
  ranks = {}
  for r in runs:
    scores = {n: f[rank_by] for n, f in r["figures"].items() if rank_by in f}
    for i, n in enumerate(sorted(scores, key=scores.get, reverse=not lower_is_better)):
      ranks.setdefault(n, []).append(i + 1)
  for n, rs in ranks.items():
    table[n]["rank"] = _stats(rs)
  return table


def print_table(table: dict, figures: Sequence[str]) -> None:
  """One line per model (by the mean rank), mean +- sd of each figure any model has."""
  shown = [k for k in figures if any(k in row for row in table.values())]
  order = sorted(table.items(), key=lambda kv: kv[1].get("rank", {}).get("mean", float("inf")))
  cells = {name: [f"{row[k]['mean']:.4g} +- {row[k]['sd']:.2g}" if k in row else "-" for k in shown]
           for name, row in order}
  widths = [max(len(k), *(len(c[i]) for c in cells.values())) + 2 for i, k in enumerate(shown)]
  first = max(len("model"), *map(len, cells)) + 2
  print("model".ljust(first) + "".join(k.rjust(w) for k, w in zip(shown, widths)))
  for name, row in cells.items():
    print(name.ljust(first) + "".join(c.rjust(w) for c, w in zip(row, widths)))


def finish(workdir: pathlib.Path, title: str, runs: list[dict], table: dict, walls: dict[str, float],
           figures: Sequence[str], t_start: float) -> None:
  """Writes `<workdir>/sweep.json` and prints the table under `title`, each run's cost and the total."""
  total = time.perf_counter() - t_start
  (workdir / "sweep.json").write_text(json.dumps({"runs": runs, "summary": table, "wall_s": walls,
                                                  "total_s": total}, indent=1))
  print(f"\n{title}; {os.cpu_count()} CPU cores")
  print_table(table, ("rank",) + tuple(figures))
  print("\ncost (wall s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()) + f"; total {total:.0f} s")
  print(f"written: {workdir / 'sweep.json'}")

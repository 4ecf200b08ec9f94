"""Progress lines (step, loss, steps/s, examples/s, ETA), JSON-lines metric files and TensorBoard
event files beside them (tensorboardX: no TensorFlow; view with `tensorboard --logdir=<workdir>`)."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
from absl import logging


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Measures throughput between reports and estimates the time left."""

  def __init__(self, name: str, total_steps: int, start_step: int = 0, examples_per_step: int = 0):
    self.name, self.total, self.examples_per_step = name, total_steps, examples_per_step
    self._t0, self._s0 = time.perf_counter(), start_step
    self._t_last, self._s_last = self._t0, start_step

  def report(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
    """Logs one line for `step` (completed steps) and returns the timing figures."""
    now = time.perf_counter()
    rate = (step - self._s_last) / max(now - self._t_last, 1e-9)
    overall = (step - self._s0) / max(now - self._t0, 1e-9)
    self._t_last, self._s_last = now, step
    eta = (self.total - step) / max(overall, 1e-9)
    timing = {"steps_per_s": rate, "examples_per_s": rate * self.examples_per_step, "eta_s": eta}
    shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
    logging.info("%s step %d/%d | %s | %.2f steps/s %.0f ex/s | ETA %s", self.name, step, self.total,
                 shown, rate, timing["examples_per_s"], format_seconds(eta))
    return timing


class JsonlWriter:
  """Appends one JSON object a line (process 0 only), and every number of it as a TensorBoard
  scalar at its `step` to an event file in the same folder.

  `resume_step`: the training step the run starts from. Records of later steps, left by a run
  that was killed after its last checkpoint, are dropped first (the resumed run logs them again),
  so every step appears once; TensorBoard is told the same (`purge_step`: it drops those steps).
  """

  def __init__(self, path: str | pathlib.Path, resume_step: int | None = None):
    self.path = pathlib.Path(path)
    self._primary = jax.process_index() == 0
    self._board = None
    self._purge_step = resume_step + 1 if resume_step else None
    if resume_step is not None and self._primary and self.path.exists():
      lines = self.path.read_text().splitlines()
      kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= resume_step]
      if len(kept) != len(lines):
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

  def write(self, record: dict[str, Any]) -> None:
    if not self._primary:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if "step" in record:
      if self._board is None:
        self._board = board(self.path.parent, purge_step=self._purge_step)
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._board.add_scalar(key, value, int(record["step"]))

  def close(self) -> None:
    if self._board is not None:
      self._board.close()
      self._board = None


def board(folder: str | pathlib.Path, **kwargs):
  """A TensorBoard event-file writer for `folder` (one TensorBoard run per folder)."""
  from tensorboardX import SummaryWriter
  return SummaryWriter(str(folder), flush_secs=10, **kwargs)


def _step_of(line: str) -> int | None:
  """The `step` of one JSON-lines record (None for a line a killed run left half-written)."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def write_json(path: str | pathlib.Path, obj: Any) -> None:
  """Writes JSON atomically (temp file + rename), process 0 only."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)

"""The training loop: mesh -> data -> optimizer -> state (init or resume) -> step -> checkpoints.

One loop serves base training here and every fine-tuning method later; what differs is the data
source, the loss function and the config section.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from flax import nnx

from cu_jax.data.datasets import RandomAccessSource
from cu_jax.data.loader import TrainLoader
from cu_jax.parallel.checkpoint import Checkpointer
from cu_jax.parallel.mesh import check_global_batch
from cu_jax.training import optim, steps
from cu_jax.utils.errors import UserError
from cu_jax.utils.progress import JsonlWriter, Progress


@dataclasses.dataclass
class TrainResult:
  graphdef: nnx.GraphDef
  state: steps.TrainState
  total_steps: int
  resumed_from: int | None
  wall_s: float  # time spent in this call (not counting an interrupted earlier run)
  examples_per_s: float


def total_steps_for(train_cfg, steps_per_epoch: int) -> int:
  if train_cfg.get("num_steps", 0):
    return int(train_cfg.num_steps)
  return int(round(train_cfg.num_epochs * steps_per_epoch))


def check_steps(train_cfg, num_examples: int, section: str) -> int:
  """The run's step count for a training set of `num_examples`, refused (`UserError`) when it is 0:
  a run of no step would record a finished stage with an untrained model."""
  steps = total_steps_for(train_cfg, num_examples // train_cfg.batch_size)
  if steps < 1:
    raise UserError(f"{section}.num_epochs={train_cfg.num_epochs} and {section}.num_steps={train_cfg.num_steps} "
                    f"give 0 training steps on {num_examples} examples at batch {train_cfg.batch_size}; set "
                    f"--config.{section}.num_epochs or --config.{section}.num_steps to more")
  return steps


def train(model: nnx.Module, source: RandomAccessSource, *, train_cfg, optim_cfg, data_cfg, mesh,
          checkpoint_dir: str | pathlib.Path, seed: int, loss_fn: steps.LossFn | None = None,
          metrics_path: str | pathlib.Path | None = None, name: str = "train",
          on_step: Callable[[int, steps.TrainState], None] | None = None,
          keys: tuple[str, ...] = ("image", "label"), update_mask: Any = None) -> TrainResult:
  """Trains `model` on `source`, checkpointing under `checkpoint_dir`, resuming from it if present.

  `train_cfg`: batch_size (global), num_epochs or num_steps, log_every_steps,
  checkpoint_every_steps, keep_checkpoints, label_smoothing, grad_accum (microbatches a step
  accumulates its gradient over; default 1). `on_step(step, state)` runs after each
  step (tests use it to interrupt a run). `keys`: the source's columns each batch carries (what
  `loss_fn` reads). `update_mask`: only parameters where it is 1 are trained (`optim.mask_updates`).
  """
  microbatches = train_cfg.get("grad_accum", 1)
  check_global_batch(train_cfg.batch_size, mesh, microbatches=microbatches)
  loader = TrainLoader(source, global_batch=train_cfg.batch_size, mesh=mesh, seed=seed, keys=keys)
  total = total_steps_for(train_cfg, loader.steps_per_epoch)
  tx, schedule = optim.make_optimizer(optim_cfg, total, update_mask)
  graphdef, state = steps.init_state(model, tx)
  state = steps.replicate(state, mesh)

  ckpt, state, resumed_from = open_checkpoints(checkpoint_dir, train_cfg, state, name, total)
  start = int(jax.device_get(state["step"]))
  loss_fn = loss_fn or steps.classification_loss(train_cfg.get("label_smoothing", 0.0))
  train_step = steps.make_train_step(graphdef, tx, data_cfg, mesh, loss_fn, seed=seed, microbatches=microbatches)
  state, wall = run_steps(name, loader, train_step, state, ckpt, schedule, total, train_cfg,
                          metrics_path, on_step)
  rate = (total - start) * train_cfg.batch_size / wall if total > start else 0.0
  return TrainResult(graphdef, state, total, resumed_from, wall, rate)


def open_checkpoints(checkpoint_dir, train_cfg, state, name: str, total: int
                     ) -> tuple[Checkpointer, Any, int | None]:
  """The run's checkpointer, and `state` restored from its latest checkpoint if there is one
  (into `state`'s shapes and shardings). Returns (checkpointer, state, step resumed from or None)."""
  ckpt = Checkpointer(checkpoint_dir, save_every=train_cfg.checkpoint_every_steps,
                      keep=train_cfg.get("keep_checkpoints", 2))
  resumed_from = ckpt.latest_step()
  if resumed_from is not None:
    state = ckpt.restore(resumed_from, state)
    logging.info("%s: resumed from the checkpoint at step %d of %d", name, resumed_from, total)
  return ckpt, state, resumed_from


def run_steps(name: str, loader: TrainLoader, train_step, state, ckpt: Checkpointer, schedule,
              total: int, train_cfg, metrics_path=None, on_step=None) -> tuple[Any, float]:
  """The loop every trainer shares: step, log (progress + JSON lines), checkpoint; from the
  state's step to `total`. Closes `ckpt`. Returns (state, wall seconds)."""
  start = int(jax.device_get(state["step"]))
  writer = JsonlWriter(metrics_path, resume_step=start) if metrics_path else None
  progress = Progress(name, total, start, train_cfg.batch_size)
  log_every = max(1, train_cfg.get("log_every_steps", 50))
  t0 = time.perf_counter()
  try:
    for step, batch in loader.iterate(start, total):
      state, metrics = train_step(state, batch)
      done = step + 1
      log = done % log_every == 0 or done == total
      if log or ckpt.should_save(done):  # never log or checkpoint a diverged state
        record = {k: float(v) for k, v in jax.device_get(metrics).items()}
        check_finite(name, record["loss"], done, float(schedule(step)), ckpt)
      if log:
        record["lr"] = float(schedule(step))
        timing = progress.report(done, record)
        if writer:
          writer.write({"step": done, "epoch": done / loader.steps_per_epoch, **record, **timing})
      ckpt.save(done, state, force=done == total)
      if on_step is not None:
        on_step(done, state)
  finally:
    ckpt.close()
    if writer:
      writer.close()
  return state, time.perf_counter() - t0


def check_finite(name: str, loss: float, step: int, lr: float, ckpt: Checkpointer) -> None:
  """Stops a diverged run (NaN or infinite loss) in one line; its checkpoints stay as they were."""
  if not math.isfinite(loss):
    kept = ckpt.latest_step()
    raise UserError(f"{name}: the loss is {loss} at step {step} (learning rate {lr:.3g}); training stopped, "
                    + (f"the last good checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint was written")
                    + ": lower the learning rate (or raise the warm-up) and run again")


def param_count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))

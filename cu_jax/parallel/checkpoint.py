"""orbax checkpoints: save every N steps and at the end, keep the last k, restore into abstract
targets with shardings, refuse a checkpoint whose shapes do not match the model.

Checkpoints are written asynchronously and committed atomically by orbax (a temporary folder is
renamed when complete), so a run killed mid-save resumes from the last complete step.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cu_jax.utils.errors import UserError
from cu_jax.utils.files import DamagedFile, load_safetensors, save_safetensors


# The suffix of the folder orbax writes a step into before renaming it to the step's number: one
# left behind by a killed run is an unfinished save, never read, and replaced if that step is saved again.
UNFINISHED_SAVE = ".orbax-checkpoint-tmp"


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays: an orbax restore target."""
  def leaf(x):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))
  return jax.tree.map(leaf, tree)


def _path(path) -> str:
  """A key path as 'a/0/b', whatever the container types (metadata stores tuples as dicts)."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _shape_mismatches(saved: Any, target: Any) -> list[str]:
  saved_flat = {_path(p): tuple(getattr(v, "shape", ()) or ())
                for p, v in jax.tree_util.tree_leaves_with_path(saved)}
  target_flat = {_path(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(target)}
  problems = [f"{k}: checkpoint {saved_flat.get(k, 'missing')} vs model {v}"
              for k, v in target_flat.items() if saved_flat.get(k) != v]
  problems += [f"{k}: in checkpoint but not in model" for k in saved_flat if k not in target_flat]
  return problems


_CLOSED_LOOP_NOISE = ("Traceback (most recent call last)", "asyncio/base_events.py", "self._check_closed()",
                      "Event loop is closed", "call_soon_threadsafe")


def _drop_closed_loop_tracebacks(text: str) -> str:
  """`text` without the tracebacks tensorstore's reader threads print, interleaved, when a failed
  restore has closed orbax's event loop under reads still in flight (`call_soon_threadsafe` ->
  `_check_closed` -> "RuntimeError: Event loop is closed")."""
  return "".join(line for line in text.splitlines(keepends=True)
                 if not any(noise in line for noise in _CLOSED_LOOP_NOISE))


@contextlib.contextmanager
def _without_closed_loop_noise(settle_s: float = 0.5):
  """Runs a checkpoint read with the process's stderr (fd 2, where native threads write) captured,
  then writes back what was captured. When the read fails, the reader threads of the failed restore
  may still report into orbax's closed event loop: the block waits `settle_s` for them and leaves
  their tracebacks out, so a damaged checkpoint ends in cu_jax's one error line, not in noise."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    failed = False
    try:
      yield
    except BaseException:
      failed = True
      time.sleep(settle_s)
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = captured.read().decode(errors="replace")
      os.write(2, (_drop_closed_loop_tracebacks(text) if failed else text).encode())


class Checkpointer:
  """A thin, opinionated wrapper over `ocp.CheckpointManager` for one pytree of arrays."""

  def __init__(self, directory: str | pathlib.Path, *, save_every: int, keep: int = 2,
               async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(1, save_every), max_to_keep=keep,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_handlers={"state": ocp.StandardCheckpointHandler()})

  def latest_step(self) -> int | None:
    with self._reading(None):
      return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` would write a checkpoint (the save interval)."""
    return self._manager.should_save(step)

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves if `step` is on the save interval (or `force`); returns whether it saved."""
    return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                              force=force)

  @contextlib.contextmanager
  def _reading(self, step: int | None):
    """Any failure to read a checkpoint (orbax, tensorstore and JSON raise many kinds) becomes one
    `DamagedFile` naming it; cu_jax's own `UserError`s pass through."""
    try:
      with _without_closed_loop_noise():
        yield
    except UserError:
      raise
    except Exception as e:  # noqa: BLE001 (see the docstring)
      where = self.directory if step is None else self.directory / str(step)
      text = str(e).strip().splitlines()
      raise DamagedFile(where, f"orbax cannot read it: {type(e).__name__}: {text[0][:200] if text else ''}") from None

  def check(self, step: int | None = None) -> int | None:
    """Reads the metadata of `step` (default: latest), cheaply; returns that step (None: no checkpoint)."""
    step = self.latest_step() if step is None else step
    if step is not None:
      with self._reading(step):
        self._manager.item_metadata(step)
    return step

  def restore(self, step: int | None, target: Any) -> Any:
    """Restores `step` (default: latest) into `target` (arrays or ShapeDtypeStructs with shardings)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"no checkpoint in {self.directory}; train first or point at another folder")
    abstract = abstract_like(target)
    with self._reading(step):
      saved = self._manager.item_metadata(step)["state"]
    if saved is not None:
      problems = _shape_mismatches(saved, abstract)
      if problems:
        raise UserError(
            f"checkpoint {self.directory}/{step} does not match the model ({len(problems)} "
            f"mismatches, first: {problems[0]}); use the config it was written with or a new workdir")
    with self._reading(step):
      restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return restored["state"]

  def _saved_params(self, step: int | None, field: str) -> tuple[int, Any]:
    step = self.latest_step() if step is None else step
    with self._reading(step):
      saved = self._manager.item_metadata(step)["state"]
    if saved is None or "params" not in saved:
      raise UserError(f"{field}: the checkpoint {self.directory}/{step} holds no 'params'; give a checkpoint "
                      "written by a cu_jax training run (its train/checkpoints folder)")
    return step, saved

  def check_params(self, step: int | None, target: Any, field: str) -> tuple[int, Any]:
    """Checks that the `params` of checkpoint `step` (default: latest; any optimizer state beside
    them is ignored) have `target`'s names and shapes; returns (the step, its metadata tree)."""
    step, saved = self._saved_params(step, field)
    problems = _shape_mismatches(saved["params"], abstract_like(target))
    if problems:
      raise UserError(f"{field}: the checkpoint {self.directory}/{step} does not match the model "
                      f"({len(problems)} mismatches, first: {problems[0]}); set --config.model.* to the "
                      "architecture it was trained with")
    return step, saved

  def restore_params(self, step: int | None, target: Any) -> Any:
    """Only the `params` of checkpoint `step` (default: latest), whatever optimizer wrote it, into
    `target` (an `nnx.State` of ShapeDtypeStructs with shardings, every leaf the same sharding)."""
    step, saved = self.check_params(step, target, str(self.directory))
    sharding = jax.tree.leaves(target)[0].sharding
    everything = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved)
    with self._reading(step):
      restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(everything)))
    by_path = {_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(restored["state"]["params"])}
    return jax.tree_util.tree_map_with_path(lambda p, _: by_path[_path(p)], target)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def save_params(params: Any, path: str | pathlib.Path) -> None:
  """Writes a model's parameters (an `nnx.State`) as one safetensors file ('blocks/0/attn/...' keys).

  The portable form of a finished model (what `unlearn` and `retrain` hand to `evaluate`), written
  atomically (`files.save_safetensors`).
  """
  from flax import nnx
  flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(params))
  save_safetensors({"/".join(map(str, k)): np.asarray(jax.device_get(v)) for k, v in flat.items()}, path)


def load_params(model: Any, path: str | pathlib.Path) -> None:
  """Sets `model`'s parameters from a `save_params` file, every name and shape checked first."""
  from flax import nnx
  from cu_jax.models.weights import assign_checked
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"no saved model at {path}; run the stage that writes it first")
  saved = load_safetensors(path)
  names = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  params = {k: saved["/".join(map(str, k))] for k in names if "/".join(map(str, k)) in saved}
  assign_checked(model, nnx.traversals.unflatten_mapping(params), path,
                 kind="cu_jax model", fix="it was saved from a model with another config")

"""Stage registry and runner, shared by every pipeline.

A pipeline is a package `cu_jax.pipeline.<name>` (`config.pipeline`: "image" or "llm") whose
stage modules register themselves here when it is imported; `pipeline_stages` imports the one a
config names, so a run loads only its own pipeline's code.

A stage is a function `run(ctx) -> summary` that writes its artifacts under `workdir/<stage>/`.
Each stage records the part of the config it depends on (its sections plus everything the
stages before it depend on) in `workdir/<stage>/config.json` before it starts and `done.json`
when it ends. On the next run a stage is
- skipped when `done.json` exists and the recorded config matches;
- resumed (from its own checkpoints) when it started but did not finish;
- refused with a clear error when the recorded config differs, unless `--overwrite` (then that
  stage and the ones after it are deleted and run again).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import pathlib
import shutil
import time
from typing import Any, Callable

import jax
from absl import logging

from cu_jax.utils.config import flatten
from cu_jax.utils.errors import UserError
from cu_jax.utils.files import DamagedFile, read_json
from cu_jax.utils.progress import format_seconds, write_json
from cu_jax.utils.ranges import check_ranges
from cu_jax.utils.registry import Registry

# Config fields, in any section, that say where things are, how often to log and checkpoint, or
# how work is cut to fit memory (examples per evaluation call, recomputed activations, IG path
# points per pass), not what is computed: never fingerprinted.
NOT_FINGERPRINTED = frozenset({"data_dir", "idx_dir", "archive_dir", "log_every_steps", "checkpoint_every_steps",
                               "keep_checkpoints", "eval_batch_size", "remat", "memory_gib"})


def fingerprinted(key: str) -> bool:
  """Whether a flattened config key ("train.log_every_steps") is part of a stage's fingerprint."""
  return key.rsplit(".", 1)[-1] not in NOT_FINGERPRINTED


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  run: Callable[["Context"], dict[str, Any]]
  config_keys: tuple[str, ...]  # top-level config sections the artifact depends on
  # Checks the stage's inputs (config, data, shapes) without writing anything; raises UserError.
  validate: Callable[["Context"], None] | None = None


# One stage registry per pipeline (`config.pipeline`): image classifiers and LLMs; each fills when
# its package is imported.
PIPELINES: dict[str, Registry[Stage]] = {"image": Registry("stage"), "llm": Registry("LLM stage")}


def stage(name: str, config_keys: tuple[str, ...], validate: Callable[["Context"], None] | None = None,
          pipeline: str = "image"):
  def deco(fn):
    PIPELINES[pipeline].register(name)(Stage(name, fn, config_keys, validate))
    return fn
  return deco


def pipeline_stages(config) -> Registry[Stage]:
  """The stage registry of the config's pipeline, its package imported (which registers them)."""
  name = config.get("pipeline", "image")
  if name not in PIPELINES:
    raise UserError(f"unknown pipeline {name!r} (set --config.pipeline=...); valid: {', '.join(PIPELINES)}")
  if not PIPELINES[name].names():
    importlib.import_module(f"cu_jax.pipeline.{name}")
  return PIPELINES[name]


class Context:
  """What stages share: the config, the workdir, the mesh and lazily loaded data."""

  def __init__(self, config, workdir: str | pathlib.Path, mesh):
    self.config, self.workdir, self.mesh = config, pathlib.Path(workdir), mesh
    # Values read from the data that several stages of one run need (validation included), read once.
    self.cache: dict[str, Any] = {}

  def stage_dir(self, name: str) -> pathlib.Path:
    return self.workdir / name

  @property
  def primary(self) -> bool:
    """Whether this process writes the run's files (process 0; every process computes)."""
    return jax.process_index() == 0

  @functools.cached_property
  def dataset(self):
    """The image dataset of `config.data` (an empty `data_dir` resolves to TFDS's default)."""
    from cu_jax.data.datasets import load_dataset  # (TFDS: imported by the image pipeline only)
    return load_dataset(self.config.data)


def stage_fingerprint(config, stages: list[Stage], index: int) -> dict[str, Any]:
  """The flattened config fields that stage `index` depends on (its own and its predecessors')."""
  sections = []
  for s in stages[:index + 1]:
    sections += [k for k in s.config_keys if k not in sections]
  full = flatten(config.to_dict())
  keys = {k for k in full if k.split(".")[0] in sections and fingerprinted(k)}
  return {k: full[k] for k in sorted(keys)}


def _describe_difference(old: dict, new: dict) -> str:
  diffs = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
           for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  return "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")


def plan(config, workdir: pathlib.Path, overwrite: bool) -> list[tuple[Stage, dict, str]]:
  """Decides, before anything is written, what each stage will do: 'skip', 'run' or 'resume'.

  Raises `UserError` (and changes nothing) if the workdir holds a stage with another config.
  """
  registry = pipeline_stages(config)
  stages = [registry.get(name, "stages") for name in config.stages]
  decisions, invalid = [], False
  for i, st in enumerate(stages):
    fp = stage_fingerprint(config, stages, i)
    recorded = workdir / st.name / "config.json"
    if invalid or not recorded.exists():
      decisions.append((st, fp, "run"))
      continue
    # Fields recorded before they joined NOT_FINGERPRINTED do not count either.
    old = {k: v for k, v in read_json(recorded).items() if fingerprinted(k)}
    if old != fp:
      if not overwrite:
        raise UserError(
            f"--workdir {str(workdir)!r} holds a {st.name!r} stage run with a different config "
            f"({_describe_difference(old, fp)}); use another --workdir, or pass --overwrite to "
            f"delete that stage and the ones after it")
      invalid = True
      decisions.append((st, fp, "run"))
      continue
    decisions.append((st, fp, "skip" if (workdir / st.name / "done.json").exists() else "resume"))
  return decisions


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# pipeline -> verify(ctx, stage, finished): cheap checks (headers, sizes, JSON) of a finished or started
# stage's files, registered by the pipeline's package; run before anything is written.
VERIFIERS: dict[str, Callable[["Context", str, bool], None]] = {}


def _check_workdir(workdir: pathlib.Path) -> None:
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir {str(workdir)!r} is a file, not a folder; give a folder (created if missing)")
  parent = next(p for p in (workdir, *workdir.parents) if p.exists())
  if not parent.is_dir():
    raise UserError(f"--workdir {str(workdir)!r}: {parent} is a file, not a folder; give a path under a folder")
  if not os.access(parent, os.W_OK):
    raise UserError(f"--workdir {str(workdir)!r}: {parent} is not writable; give a folder you can write to")


def _damage_message(error: DamagedFile, workdir: pathlib.Path, stages) -> str:
  """What to do about a damaged file: redo the stage that wrote it (and the later ones)."""
  try:
    stage = error.path.relative_to(workdir).parts[0]
  except (ValueError, IndexError):
    return f"{error}; replace it with an intact copy"
  order = list(stages)
  later = order[order.index(stage) + 1:] if stage in order else []
  redo = ", ".join(str(workdir / s) for s in [stage, *later] if (workdir / s).exists())
  return f"{error}: it was written by stage {stage!r}; delete {redo} and run again to redo it"


def run_pipeline(config, workdir: str | pathlib.Path, mesh, *, overwrite: bool = False) -> dict[str, Any]:
  """Runs the configured stages in order; returns each stage's summary.

  Everything is checked before anything is written: value ranges, the workdir, each stage's
  inputs (`validate`) and the files of the stages that are skipped or resumed (`VERIFIERS`). A
  damaged file found then or later, and a path that cannot be read or written, end in one
  `UserError` naming it.
  """
  if "://" in str(workdir):
    # JSON, .npy and safetensors files are written by local file operations with atomic renames,
    # which object stores do not have; a mount gives them (and orbax, which could write gs://).
    raise UserError(f"--workdir {str(workdir)!r} is a URL: cu_jax writes its workdir through a file system; mount the "
                    "bucket on every host (e.g. gcsfuse) or use a shared file system (Filestore, NFS) and give that "
                    "path")
  workdir = pathlib.Path(workdir).expanduser().absolute()
  check_ranges(config)  # before anything is planned, deleted (--overwrite) or written
  _check_workdir(workdir)
  try:
    return _run(config, workdir, mesh, overwrite)
  except DamagedFile as e:
    raise UserError(_damage_message(e, workdir, config.stages)) from None
  except OSError as e:
    where = e.filename or workdir
    raise UserError(f"{where}: {e.strerror or e} (check that the path exists, is writable and has free "
                    "space)") from None


def _run(config, workdir: pathlib.Path, mesh, overwrite: bool) -> dict[str, Any]:
  decisions = plan(config, workdir, overwrite)
  ctx = Context(config, workdir, mesh)
  verify = VERIFIERS.get(config.get("pipeline", "image"))
  for st, _, action in decisions:  # every input is checked before anything is written
    if action != "skip" and st.validate is not None:
      st.validate(ctx)
    if action != "run" and verify is not None:
      verify(ctx, st.name, action == "skip")
  # Every process decides what to delete before any of them writes (a shared workdir on a pod).
  replace = {st.name for st, _, action in decisions if action == "run" and ctx.stage_dir(st.name).exists()}
  _sync("cu_jax plan")
  summaries = {}
  for st, fp, action in decisions:
    stage_dir = ctx.stage_dir(st.name)
    if action == "skip":
      summaries[st.name] = read_json(stage_dir / "done.json")
      logging.info("stage %s: done already (%s), skipped", st.name, stage_dir)
      continue
    if st.name in replace:
      if ctx.primary:
        logging.warning("stage %s: --overwrite, deleting %s", st.name, stage_dir)
        shutil.rmtree(stage_dir)
      _sync(f"cu_jax overwrite {st.name}")
    new = not stage_dir.exists()
    write_json(stage_dir / "config.json", fp)
    logging.info("stage %s: %s", st.name, "resuming" if action == "resume" else "running")
    t0 = time.perf_counter()
    try:
      summary = st.run(ctx)
    except (UserError, OSError):
      # A stage refused before it wrote anything of its own leaves no trace of this attempt.
      if new and ctx.primary and [p.name for p in stage_dir.iterdir()] == ["config.json"]:
        shutil.rmtree(stage_dir)
      raise
    summary["wall_s"] = time.perf_counter() - t0
    write_json(stage_dir / "done.json", summary)
    _sync(f"cu_jax stage {st.name}")  # later stages read what this one wrote
    summaries[st.name] = summary
    logging.info("stage %s: finished in %s", st.name, format_seconds(summary["wall_s"]))
  write_json(workdir / "config.json", config.to_dict())
  return summaries

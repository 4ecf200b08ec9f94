"""Command line: `python -m cu_jax.main --config=configs/vit.py:demo --workdir=DIR`.

Runs the stages of the config (`config.stages`) under DIR, skipping those already done and
resuming an interrupted one. Bad input (config, data, checkpoint, workdir) ends with a one-line
`error: ...` on stderr and exit status 2, before anything is written.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for every artifact of the run.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace stages of --workdir that were run with another config.")
flags.mark_flags_as_required(["config", "workdir"])

_QUIET_INFO = ("orbax", "tensorflow_datasets", "etils", "jax/_src")


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax / TFDS / JAX; their warnings and errors still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno > std_logging.INFO or not any(q in record.pathname for q in _QUIET_INFO)


def setup_logging() -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())


def set_cpu_device_count(n: int) -> None:
  """Splits the host CPU into `n` XLA devices (data parallelism on a CPU); before jax starts."""
  if n and "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  if "jax" in sys.modules:  # in a multi-process job, do not wait for the others at shutdown
    from cu_jax.parallel.distributed import exit_now
    exit_now(2)
  sys.exit(2)


def main(argv):
  del argv
  setup_logging()
  config = _CONFIG.value
  try:
    cpu_devices = config.mesh.get("cpu_devices", 0)
  except OSError as e:  # config_flags defers a missing/broken config file until first use
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    _fail(f"cannot load {flags.FLAGS['config'].serialize()}: {lines[-1]}")
  set_cpu_device_count(cpu_devices)
  from cu_jax.parallel.distributed import maybe_initialize
  maybe_initialize()
  from cu_jax.parallel.mesh import make_mesh
  from cu_jax.pipeline.runner import run_pipeline
  from cu_jax.utils.errors import UserError

  try:
    mesh = make_mesh(config.mesh.num_devices, config.mesh.get("fsdp", 0))
    summaries = run_pipeline(config, _WORKDIR.value, mesh, overwrite=_OVERWRITE.value)
  except UserError as e:
    _fail(str(e))
  logging.info("done: %s", json.dumps({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, (dict, list))}
                                       for k, v in summaries.items()}))


def _config_error(error: Exception, argv: list[str]) -> str:
  """A one-line message for a bad --config / --config.x=y flag (absl prints tracebacks)."""
  text = str(error.args[0] if error.args else error)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if "Traceback" in text or any(line.startswith("[Errno") for line in lines):
    return " ".join(lines[:1] + lines[-1:])  # the flag, and the exception that ended the traceback
  key = lines[0].strip("'\"\\") if lines else "?"
  if isinstance(error, (AttributeError, KeyError)) and re.fullmatch(r"[\w.]+", key):
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and key in a.split("=")[0].split(".")), f"--config.{key}")
    hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
    return f"unknown config key {key!r} in {flag}{hint}; the valid keys are the fields of the config file"
  return " ".join(lines)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    cause = e.__cause__ or e.__context__
    _fail(_config_error(cause if isinstance(cause, (AttributeError, KeyError)) else e, argv))


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()

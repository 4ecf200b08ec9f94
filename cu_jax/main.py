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

# transformers announces at import that PyTorch is absent (the JAX install has none, and needs none).
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for every artifact of the run.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace stages of --workdir that were run with another config.")
flags.mark_flags_as_required(["config", "workdir"])

_QUIET_INFO = ("orbax", "tensorflow_datasets", "etils", "jax/_src")


# Warnings that are not the user's to act on: TFDS lists every dataset version folder it scans,
# including one cu_jax is preparing right now ("Variant folder ... has no dataset_info.json").
_QUIET_WARNINGS = (("tensorflow_datasets", "Variant folder"),)


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax / TFDS / JAX, and the warnings of `_QUIET_WARNINGS`; their other
  warnings and errors still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if any(where in record.pathname and record.getMessage().startswith(start) for where, start in _QUIET_WARNINGS):
      return False
    return record.levelno > std_logging.INFO or not any(q in record.pathname for q in _QUIET_INFO)


def setup_logging() -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())


def set_cpu_device_count(n: int) -> None:
  """Splits the host CPU into `n` XLA devices (data parallelism on a CPU); before jax starts."""
  if n and "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()


def _fail(message: str) -> None:
  """Prints the one `error:` line and exits with status 2.

  Once JAX (and with it orbax's asynchronous checkpointing) is running, the process ends at once
  (`os._exit`): a normal exit would wait for the other processes of a multi-process job, and after
  a failed checkpoint read it prints asyncio's "Event loop is closed" tracebacks. Checkpoints are
  committed atomically, so nothing written is lost.
  """
  print(f"error: {message}", file=sys.stderr)
  if "jax" in sys.modules:
    sys.stdout.flush()
    sys.stderr.flush()
    logging.flush()
    os._exit(2)
  sys.exit(2)


def main(argv):
  del argv
  setup_logging()
  config = _CONFIG.value
  try:
    cpu_devices = config.mesh.get("cpu_devices", 0)
  except OSError as e:  # config_flags defers a missing/broken config file until first use
    _fail(_config_file_error(e, sys.argv))
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


def _config_file_error(error: OSError, argv: list[str]) -> str:
  """A missing or broken config file, seen while an override applies to it (absl loads it then)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")
  return f"cannot load --config={spec}: {lines[-1] if lines else error}"


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except OSError as e:
    _fail(_config_file_error(e, argv))
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    cause = e.__cause__ or e.__context__
    _fail(_config_error(cause if isinstance(cause, (AttributeError, KeyError)) else e, argv))


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()

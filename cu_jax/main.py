"""Command line: `python -m cu_jax.main --config=configs/vit.py:demo --workdir=DIR`.

Runs the stages of the config (`config.stages`) under DIR, skipping those already done and
resuming an interrupted one. Bad input (config, data, checkpoint, workdir) ends with a one-line
`error: ...` on stderr and exit status 2, before anything is written.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
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


def main(argv):
  del argv
  setup_logging()
  set_cpu_device_count(_CONFIG.value.mesh.get("cpu_devices", 0))
  from cu_jax.parallel.distributed import maybe_initialize
  maybe_initialize()
  from cu_jax.parallel.mesh import make_mesh
  from cu_jax.pipeline.runner import run_pipeline
  import cu_jax.pipeline  # noqa: F401  (registers the stages)
  from cu_jax.utils.errors import UserError

  config = _CONFIG.value
  try:
    mesh = make_mesh(config.mesh.num_devices)
    summaries = run_pipeline(config, _WORKDIR.value, mesh, overwrite=_OVERWRITE.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.info("done: %s", json.dumps({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, (dict, list))}
                                       for k, v in summaries.items()}))


def run():
  app.run(main)


if __name__ == "__main__":
  run()

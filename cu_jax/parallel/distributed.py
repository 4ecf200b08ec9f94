"""Multi-host start-up: `jax.distributed.initialize()` on a pod or a multi-process launch."""

import os

import jax
from absl import logging

# Optional overrides of jax.distributed's timeouts (seconds). A process that fails waits in the
# shutdown barrier for the others before it exits: `launch/local_multiprocess.py` lowers that wait so
# that a failed local job ends in seconds instead of JAX's 5 minutes.
_TIMEOUT_ENV = {
    "initialization_timeout": "CU_JAX_INIT_TIMEOUT_S",
    "heartbeat_timeout_seconds": "CU_JAX_HEARTBEAT_TIMEOUT_S",
    "shutdown_timeout_seconds": "CU_JAX_SHUTDOWN_TIMEOUT_S",
}


def _timeouts() -> dict[str, int]:
  out = {}
  for arg, var in _TIMEOUT_ENV.items():
    value = os.environ.get(var, "").strip()
    if value:
      if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{var}={value!r}: expected a positive number of seconds")
      out[arg] = int(value)
  return out


def maybe_initialize() -> None:
  """Joins a multi-host job when the environment describes one, else does nothing.

  - Cloud TPU VM pods: `CU_JAX_DISTRIBUTED=1` (set by `launch/tpu_pod.sh`); JAX discovers the
    coordinator and the process id from the TPU metadata.
  - Any other cluster (e.g. `launch/local_multiprocess.py`, GPU hosts): `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`.

  Must run before anything initialises a JAX backend. On CPU, cross-process collectives use gloo
  over TCP (jax 0.10's default `jax_cpu_collectives_implementation`); it is set explicitly here so
  that a multi-process CPU job never falls back to a backend without collectives.
  """
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif os.environ.get("CU_JAX_DISTRIBUTED") == "1":
    kwargs = {}
  else:
    return
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs, **_timeouts())
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())

"""Multi-host start-up: `jax.distributed.initialize()` on a pod or a multi-process launch."""

import os

import jax
from absl import logging


def maybe_initialize() -> None:
  """Joins a multi-host job when the environment describes one, else does nothing.

  - Cloud TPU VM pods: `CU_JAX_DISTRIBUTED=1` (set by `launch/tpu_pod.sh`); JAX discovers the
    coordinator and the process id from the TPU metadata.
  - Any other cluster (e.g. `launch/local_multiprocess.py`, GPU hosts): `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`.
  """
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif os.environ.get("CU_JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())

#!/usr/bin/env python3
"""Runs one cu_jax command as N cooperating local processes (a multi-host job on one machine).

    python launch/local_multiprocess.py --num_processes=2 --devices_per_process=2 -- \
        --config=configs/vit.py:tiny --workdir=/tmp/mp_run

Every process runs `python -m cu_jax.main <args after -->` (another module with `--module=NAME`, or
a Python file with `--script=PATH`, e.g. a multi-host check under tests/) with
  JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i,
  XLA_FLAGS=--xla_force_host_platform_device_count=<devices per process>, JAX_PLATFORMS=cpu,
so `cu_jax.parallel.distributed.maybe_initialize()` joins them into one JAX job of
N x devices_per_process CPU devices (cross-process collectives over gloo, loopback only). This is
how the multi-host code paths (per-host data shards, process-0-only writes, orbax multi-process
saves) are tested without a pod.

Each output line is prefixed with `[i]`. The launcher waits for all processes; if one fails, the
others are stopped (they would block in a collective) and its exit status is returned: the first
non-zero status (128 + signal for a process killed by a signal), 0 if all succeed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

LOOPBACK = "127.0.0.1"
_DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S*")


def free_port() -> int:
  """A TCP port that is free on the loopback interface right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((LOOPBACK, 0))
    return s.getsockname()[1]


def process_env(base: dict[str, str], *, port: int, num_processes: int, process_id: int,
                devices_per_process: int, platforms: str, shutdown_timeout_s: int = 0) -> dict[str, str]:
  env = dict(base)
  env.pop("CU_JAX_DISTRIBUTED", None)  # that one means "discover a TPU pod"
  env["JAX_COORDINATOR_ADDRESS"] = f"{LOOPBACK}:{port}"
  env["JAX_NUM_PROCESSES"] = str(num_processes)
  env["JAX_PROCESS_ID"] = str(process_id)
  flags = _DEVICE_FLAG.sub("", env.get("XLA_FLAGS", "")).split()
  flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
  env["XLA_FLAGS"] = " ".join(flags)
  if platforms:
    env["JAX_PLATFORMS"] = platforms
  if shutdown_timeout_s > 0:  # read by cu_jax.parallel.distributed
    env["CU_JAX_SHUTDOWN_TIMEOUT_S"] = str(shutdown_timeout_s)
  env["PYTHONUNBUFFERED"] = "1"  # lines reach the prefixer as they are written
  return env


def _exit_status(returncode: int) -> int:
  return 128 - returncode if returncode < 0 else returncode


def _pump(stream, prefix: str, lock: threading.Lock) -> None:
  for raw in iter(stream.readline, b""):
    line = raw.decode("utf-8", "replace").rstrip("\n")
    with lock:
      sys.stdout.write(f"{prefix}{line}\n")
      sys.stdout.flush()
  stream.close()


def _stop(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
  """SIGTERM to each still-running child's process group, SIGKILL after `grace_s`.

  JAX's preemption notifier catches SIGTERM in a distributed process (it treats it as a notice), so
  the SIGKILL is usually what ends a child blocked in a collective.
  """
  live = [p for p in procs if p.poll() is None]
  for p in live:
    try:
      os.killpg(p.pid, signal.SIGTERM)  # the child leads its own session (start_new_session)
    except ProcessLookupError:
      pass
  deadline = time.monotonic() + grace_s
  for p in live:
    try:
      p.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()


class _Terminated(Exception):
  """The launcher got SIGTERM: stop the children (they run in their own sessions) and exit."""


def _on_sigterm(signum, frame):
  raise _Terminated()


def launch(command_args: list[str], *, num_processes: int, devices_per_process: int,
           port: int = 0, module: str = "cu_jax.main", script: str = "", python: str = sys.executable,
           platforms: str = "cpu", timeout_s: float = 0.0, shutdown_timeout_s: int = 60,
           cwd: str | None = None) -> int:
  """Starts the processes, relays their output, returns the job's exit status.

  Each process runs `python -m module command_args`, or `python script command_args` if `script`
  is given.
  """
  port = port or free_port()
  program = [script] if script else ["-m", module]
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)
  lock = threading.Lock()
  procs, pumps = [], []
  print(f"[launch] {num_processes} processes x {devices_per_process} devices, coordinator "
        f"{LOOPBACK}:{port}: {python} {' '.join(program + command_args)}", flush=True)
  try:
    for i in range(num_processes):
      env = process_env(os.environ, port=port, num_processes=num_processes, process_id=i,
                        devices_per_process=devices_per_process, platforms=platforms,
                        shutdown_timeout_s=shutdown_timeout_s)
      p = subprocess.Popen([python, *program, *command_args], env=env, cwd=cwd,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, start_new_session=True)
      procs.append(p)
      t = threading.Thread(target=_pump, args=(p.stdout, f"[{i}] ", lock), daemon=True)
      t.start()
      pumps.append(t)

    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    status = 0
    while True:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        status = _exit_status(code)
        with lock:
          print(f"[launch] process {i} exited with status {status}; stopping the others", flush=True)
        break
      if all(c == 0 for c in codes):
        break
      if deadline is not None and time.monotonic() > deadline:
        with lock:
          print(f"[launch] timed out after {timeout_s:g} s; stopping all processes", flush=True)
        status = 124
        break
      time.sleep(0.1)
  except KeyboardInterrupt:
    status = 130
  except _Terminated:
    status = 143
  finally:
    _stop(procs)
    for t in pumps:
      t.join(timeout=5)
  return status


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" in argv:
    split = argv.index("--")
    own, passed = argv[:split], argv[split + 1:]
  else:
    own, passed = argv, []
  parser = argparse.ArgumentParser(
      prog="local_multiprocess.py",
      description="Run `python -m cu_jax.main ARGS` as N local JAX processes (loopback only).",
      epilog="Example: %(prog)s --num_processes=2 --devices_per_process=2 -- "
             "--config=configs/vit.py:tiny --workdir=/tmp/mp_run")
  parser.add_argument("--num_processes", type=int, default=2, help="processes to start (default 2)")
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="fake CPU devices per process (XLA_FLAGS; default 1)")
  parser.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (0 = a free one)")
  parser.add_argument("--module", default="cu_jax.main", help="module run with `python -m` (default cu_jax.main)")
  parser.add_argument("--script", default="",
                      help="a Python file to run instead of --module (`python SCRIPT ARGS`), e.g. a "
                           "multi-host check that calls cu_jax.parallel.distributed.maybe_initialize()")
  parser.add_argument("--platforms", default="cpu",
                      help="JAX_PLATFORMS for the processes (default cpu; '' keeps the environment's)")
  parser.add_argument("--timeout", type=float, default=0.0,
                      help="stop everything after this many seconds and exit 124 (0 = no limit)")
  parser.add_argument("--shutdown_timeout", type=int, default=60,
                      help="seconds a finished (or failed) process waits for the others in JAX's "
                           "shutdown barrier (default 60; 0 keeps JAX's 300)")
  args = parser.parse_args(own)
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be >= 1")
  if not 0 <= args.port < 65536:
    parser.error("--port must be in 0..65535")
  return launch(passed, num_processes=args.num_processes, devices_per_process=args.devices_per_process,
                port=args.port, module=args.module, script=args.script, platforms=args.platforms,
                timeout_s=args.timeout, shutdown_timeout_s=args.shutdown_timeout)


if __name__ == "__main__":
  sys.exit(main())

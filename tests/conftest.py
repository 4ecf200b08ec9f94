"""Test set-up: 8 fake CPU devices (set before jax is imported) and shared tiny fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session, shared with the CLI subprocesses the tests
# start: the tiny pipelines compile the same programs over and over, and compilation dominates
# their time (a tiny CLI run: ~120 s cold, ~40 s with a warm cache on a 2-core machine). Fresh
# per session, so nothing carries over between runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cu_jax_test_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cu_jax.data.datasets import ArraySource  # noqa: E402
from cu_jax.utils.config import load_config as _load  # noqa: E402


def pytest_configure(config):
  assert jax.device_count() == 8, "tests expect 8 fake CPU devices (XLA_FLAGS was set too late)"


def snapshot(folder) -> dict[str, str]:
  """relative path -> sha256 of every file under `folder` (to assert that a refused run changed nothing)."""
  import hashlib
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def garbage(path) -> None:
  """Overwrites a file with bytes that are no valid JSON, UTF-8, .npy, safetensors or orbax data."""
  path.write_bytes(b"\xff\xfe not what it should be \x00" * 4)


def load_config(variant=None):
  """`get_config(variant)` of configs/vit.py."""
  return _load(f"configs/vit.py:{variant or ''}")


@pytest.fixture(scope="session")
def toy_source() -> ArraySource:
  """256 8x8 one-channel images whose label is the brightest quadrant (learnable in a few steps)."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 256)
  images = rng.integers(0, 60, (256, 8, 8, 1)).astype(np.uint8)
  for i, c in enumerate(labels):
    r, col = divmod(int(c), 2)
    images[i, 4 * r:4 * r + 4, 4 * col:4 * col + 4] += 150
  return ArraySource(image=images, label=labels.astype(np.int64))

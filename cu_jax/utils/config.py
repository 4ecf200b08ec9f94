"""Loading experiment configs outside the CLI (benchmarks, tests): `load_config("configs/vit.py:demo")`."""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections as mlc

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_config(spec: str) -> mlc.ConfigDict:
  """`path[:variant]` -> `get_config(variant)` of that file (relative paths: from the repo root)."""
  path, _, variant = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_absolute() and not file.exists():
    file = REPO_ROOT / file
  module_spec = importlib.util.spec_from_file_location(f"cu_jax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)

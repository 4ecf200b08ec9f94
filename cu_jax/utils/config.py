"""Experiment configs: loading one outside the CLI (benchmarks, tests: `load_config("configs/vit.py:demo")`),
and the variant selection every config file's `get_config` shares."""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any, Callable, Mapping

import ml_collections as mlc

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> mlc.ConfigDict:
  """`path[:variant]` -> `get_config(variant)` of that file (relative paths: from the working
  directory, else the repo root), with `overrides` applied: {"unlearn.method": "scrub", ...}, as
  `--config.unlearn.method=scrub` on the command line."""
  path, _, variant = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_absolute() and not file.exists():
    file = REPO_ROOT / file
  module_spec = importlib.util.spec_from_file_location(f"cu_jax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  for key, value in (overrides or {}).items():
    *sections, field = key.split(".")
    node = config
    try:
      for section in sections:
        node = node[section]
      if field not in node:
        raise KeyError(field)
      node[field] = value
    except (KeyError, TypeError) as e:
      raise ValueError(f"cannot set config field {key!r} to {value!r}: {e}") from None
  return config


def apply_variant(base: Callable[[], mlc.ConfigDict], variants: dict[str, Callable[[mlc.ConfigDict], mlc.ConfigDict]],
                  variant: str | None, *, default: str, file: str) -> mlc.ConfigDict:
  """The `get_config(variant)` of a config file: `variants[variant or default](base())`, or a
  ValueError listing the valid variants of `file`."""
  variant = variant or default
  if variant not in variants:
    valid = ", ".join(f"{v} (default)" if v == default else v for v in variants)
    raise ValueError(f"unknown variant {variant!r} of {file}; valid: {valid}")
  return variants[variant](base())


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """A config's `to_dict()` as {"section.field": value}; tuples become lists (as JSON stores them)."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}

"""Reading the files cu_jax writes and reads (JSON, JSON lines, .npy, safetensors) so that a damaged
one is named in one `DamagedFile` error instead of a library's traceback.

The checks are cheap: headers and sizes, never the data itself. A `.npy` must be a plain array
(no pickled Python objects) whose header fits the file's length; a safetensors file must have a
JSON header whose tensors fit the file; JSON must be UTF-8 and parse.
"""

from __future__ import annotations

import json
import pathlib
import struct
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from cu_jax.utils.errors import UserError


class DamagedFile(UserError):
  """A file that is missing, truncated or not in its format. `path` names it."""

  def __init__(self, path: str | pathlib.Path, reason: str):
    self.path, self.reason = pathlib.Path(path), reason
    super().__init__(f"{self.path} is damaged ({reason})")


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def read_json(path: str | pathlib.Path) -> Any:
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise DamagedFile(path, "missing") from None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DamagedFile(path, f"not JSON: {_first_line(e)}") from None


def read_jsonl(path: str | pathlib.Path) -> list[Any]:
  path = pathlib.Path(path)
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except FileNotFoundError:
    raise DamagedFile(path, "missing") from None
  except UnicodeDecodeError as e:
    raise DamagedFile(path, f"not UTF-8 text: {_first_line(e)}") from None
  out = []
  for i, line in enumerate(lines, 1):
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise DamagedFile(path, f"line {i} is not JSON: {_first_line(e)}") from None
  return out


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def check_npy(path: str | pathlib.Path) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of a .npy file whose header and length are sound and that holds no objects."""
  path = pathlib.Path(path)
  try:
    with path.open("rb") as f:
      version = np.lib.format.read_magic(f)
      if version not in _NPY_HEADERS:
        raise ValueError(f".npy format version {version} (np.save writes 1.0 or 2.0)")
      shape, _, dtype = _NPY_HEADERS[version](f)
      offset = f.tell()
  except FileNotFoundError:
    raise DamagedFile(path, "missing") from None
  except (ValueError, OSError, SyntaxError, EOFError) as e:
    raise DamagedFile(path, f"not a .npy array: {_first_line(e)}") from None
  if dtype.hasobject:
    raise DamagedFile(path, "holds pickled Python objects, which cu_jax never loads")
  expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  size = path.stat().st_size
  if size < expected:
    raise DamagedFile(path, f"truncated: {size} bytes of {expected}")
  return tuple(shape), dtype


def load_npy(path: str | pathlib.Path, mmap: bool = False) -> np.ndarray:
  check_npy(path)
  return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def safetensors_header(path: str | pathlib.Path) -> tuple[dict[str, Any], int]:
  """(JSON header, offset of the tensor data) of a safetensors file whose tensors fit in it."""
  path = pathlib.Path(path)
  try:
    with path.open("rb") as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise ValueError("shorter than the 8-byte header length")
      (n,) = struct.unpack("<Q", raw)
      if n > 100_000_000:
        raise ValueError(f"header length {n} is not plausible")
      header_bytes = f.read(n)
    if len(header_bytes) < n:
      raise ValueError("the header is cut short")
    header = json.loads(header_bytes.decode("utf-8"))
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
  except FileNotFoundError:
    raise DamagedFile(path, "missing") from None
  except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, OSError) as e:
    raise DamagedFile(path, f"not a safetensors file: {_first_line(e)}") from None
  size = path.stat().st_size
  if size < 8 + n + end:
    raise DamagedFile(path, f"truncated: {size} bytes of {8 + n + end}")
  return header, 8 + n


def check_safetensors(path: str | pathlib.Path) -> dict[str, Any]:
  """The JSON header of a safetensors file whose tensors fit in it."""
  return safetensors_header(path)[0]


def save_safetensors(arrays: dict[str, np.ndarray], path: str | pathlib.Path) -> None:
  """Writes `arrays` as one safetensors file, to a temporary name then renamed, so a reader never
  sees half a file."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
  tmp.replace(path)


def load_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  check_safetensors(path)
  try:
    return load_file(str(path))
  except SafetensorError as e:
    raise DamagedFile(path, f"not a safetensors file: {_first_line(e)}") from None

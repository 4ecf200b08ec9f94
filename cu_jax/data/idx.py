"""Reader for the IDX format of (Fashion-)MNIST (LeCun et al.), optionally gzip-compressed."""

import gzip
import pathlib

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | pathlib.Path) -> np.ndarray:
  """Returns the array stored in an IDX file (`.gz` is decompressed transparently)."""
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise ValueError(f"{path} is not an IDX file (bad magic {data[:4]!r})")
  dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  offset = 4 + 4 * ndim
  expected = offset + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(f"{path}: header says {shape} ({expected} bytes) but the file has {len(data)}")
  return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | pathlib.Path, array: np.ndarray) -> None:
  """Writes `array` as IDX (gzip if the name ends in .gz); used to make test fixtures."""
  path = pathlib.Path(path)
  code = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}[array.dtype.newbyteorder("=")]
  header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  big = array.astype(np.dtype(_DTYPES[code]).newbyteorder(">"))
  payload = header + big.tobytes()
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "wb") as f:
    f.write(payload)

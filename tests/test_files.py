"""Damaged files are named in one `DamagedFile` error (no library traceback); sound ones load."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from cu_jax.utils import files


@pytest.fixture
def folder(tmp_path):
  np.save(tmp_path / "a.npy", np.arange(100.0))
  save_file({"w": np.ones((10, 10), np.float32)}, str(tmp_path / "m.safetensors"))
  (tmp_path / "r.json").write_text('{"x": 1}')
  (tmp_path / "r.jsonl").write_text('{"x": 1}\n\n{"x": 2}\n')
  return tmp_path


def test_sound_files_load(folder):
  assert files.check_npy(folder / "a.npy") == ((100,), np.dtype("float64"))
  np.testing.assert_array_equal(files.load_npy(folder / "a.npy", mmap=True), np.arange(100.0))
  assert files.load_safetensors(folder / "m.safetensors")["w"].shape == (10, 10)
  assert files.read_json(folder / "r.json") == {"x": 1} and files.read_jsonl(folder / "r.jsonl") == [{"x": 1}, {"x": 2}]


@pytest.mark.parametrize("name, damage, check, reason", [
    ("a.npy", lambda p: p.write_bytes(p.read_bytes()[:200]), files.check_npy, r"truncated: 200 bytes of 928"),
    ("a.npy", lambda p: p.write_bytes(b"garbage" * 10), files.check_npy, "not a .npy array"),
    ("a.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), files.load_npy,
     "holds pickled Python objects"),
    ("m.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-50]), files.load_safetensors, "truncated"),
    ("m.safetensors", lambda p: p.write_bytes(b"\x00" * 3), files.check_safetensors, "8-byte header length"),
    ("m.safetensors", lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"),
     files.check_safetensors, "not a safetensors file"),
    ("r.json", lambda p: p.write_bytes(b"\xff\xfe{"), files.read_json, "not JSON: UnicodeDecodeError"),
    ("r.json", lambda p: p.write_text('{"x": '), files.read_json, "not JSON: JSONDecodeError"),
    ("r.jsonl", lambda p: p.write_text('{"x": 1}\n{"x"\n'), files.read_jsonl, "line 2 is not JSON"),
    ("r.json", lambda p: p.unlink(), files.read_json, "missing"),
])
def test_damaged_files_are_named(folder, name, damage, check, reason):
  damage(folder / name)
  with pytest.raises(files.DamagedFile, match=reason) as e:
    check(folder / name)
  assert e.value.path == folder / name and str(e.value).startswith(f"{folder / name} is damaged (")

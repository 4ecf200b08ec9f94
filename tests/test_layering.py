"""The package's import structure: the library never imports the pipeline, and a stage never
imports another stage (it reads earlier stages' output through `cu_jax.pipeline.artifacts`)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "cu_jax"
LIBRARY = ("models", "data", "concepts", "attribution", "unlearning", "evaluation", "training", "parallel")
PIPELINES = ("image", "llm")


def _imports(path: pathlib.Path) -> set[str]:
  """Every module `path` imports, at module level or inside a function (absolute names)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      assert node.level == 0, f"{path}: relative import"
      names.add(node.module)
      names |= {f"{node.module}.{a.name}" for a in node.names}
  return names


def _modules(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("floor", LIBRARY)
def test_library_never_imports_the_pipeline(floor):
  for path in _modules(PACKAGE / floor):
    bad = {m for m in _imports(path) if m == "cu_jax.pipeline" or m.startswith("cu_jax.pipeline.")}
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_a_stage_never_imports_another_stage(pipeline):
  folder = PACKAGE / "pipeline" / pipeline
  stages = {f"cu_jax.pipeline.{pipeline}.{p.stem}" for p in _modules(folder) if p.stem != "__init__"}
  assert len(stages) >= 7
  for path in _modules(folder):
    if path.stem == "__init__":
      continue  # the package imports its stages to register them
    bad = {m for m in _imports(path) if m in stages or m == f"cu_jax.pipeline.{pipeline}"}
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}"
    others = {m for m in _imports(path) if m.startswith("cu_jax.pipeline.") and m.split(".")[2] in PIPELINES
              and m.split(".")[2] != pipeline}
    assert not others, f"{path.relative_to(PACKAGE.parent)} imports the other pipeline: {sorted(others)}"


def test_data_floor_imports_no_floor_above_it():
  """Datasets and text encoding sit under every other floor but the device mesh (`parallel`)."""
  above = tuple(f"cu_jax.{f}" for f in LIBRARY if f not in ("data", "parallel"))
  for path in _modules(PACKAGE / "data"):
    bad = {m for m in _imports(path) if m.startswith(above)}
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}"

"""The runner on its own: fingerprints, the skip / run / resume / refuse plan, and what a run
writes or leaves alone, on a fake three-stage pipeline (no model, no data)."""

import json

import ml_collections as mlc
import pytest

from cu_jax.pipeline import runner
from cu_jax.utils.errors import UserError
from cu_jax.utils.registry import Registry

CALLS = []


def _config(**overrides):
  c = mlc.ConfigDict({"pipeline": "fake", "stages": ("a", "b", "c"),
                      "a": {"x": 1, "log_every_steps": 10, "data_dir": "/somewhere"},
                      "b": {"y": 2.0, "checkpoint_every_steps": 5}, "c": {"z": "s"}, "seed": 0})
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


@pytest.fixture(autouse=True)
def fake_pipeline(monkeypatch):
  registry = Registry("fake stage")
  monkeypatch.setitem(runner.PIPELINES, "fake", registry)
  CALLS.clear()

  def make(name, keys, fail_validation=False):
    def run(ctx):
      CALLS.append(name)
      (ctx.stage_dir(name) / "artifact.txt").write_text(f"{name} of {ctx.config[name].to_dict()}")
      return {"name": name}

    def validate(ctx):
      if fail_validation and ctx.config.c.z == "bad":
        raise UserError("c.z='bad' is refused")
    registry.register(name)(runner.Stage(name, run, keys, validate))

  make("a", ("seed", "a"))
  make("b", ("b",))
  make("c", ("c",), fail_validation=True)
  return registry


def _files(folder):
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fingerprint_covers_own_and_earlier_sections_but_not_logistics():
  cfg = _config()
  stages = [runner.PIPELINES["fake"].get(n) for n in cfg.stages]
  assert runner.stage_fingerprint(cfg, stages, 0) == {"a.x": 1, "seed": 0}
  assert runner.stage_fingerprint(cfg, stages, 2) == {"a.x": 1, "b.y": 2.0, "c.z": "s", "seed": 0}
  assert not runner.fingerprinted("a.log_every_steps") and not runner.fingerprinted("train.eval_batch_size")
  assert runner.fingerprinted("a.x") and runner.fingerprinted("unlearn.train.batch_size")


def test_plan_of_a_fresh_workdir_runs_everything(tmp_path):
  assert [a for _, _, a in runner.plan(_config(), tmp_path / "w", overwrite=False)] == ["run"] * 3


def test_finished_stages_are_skipped_and_a_started_one_resumes(tmp_path):
  w = tmp_path / "w"
  runner.run_pipeline(_config(), w, None)
  assert CALLS == ["a", "b", "c"]
  (w / "c" / "done.json").unlink()  # c started (config.json recorded) but did not finish
  assert [a for _, _, a in runner.plan(_config(), w, overwrite=False)] == ["skip", "skip", "resume"]
  # a changed logging field is not a different config
  assert [a for _, _, a in runner.plan(_config(**{"a.log_every_steps": 99}), w, False)][:2] == ["skip", "skip"]
  CALLS.clear()
  summaries = runner.run_pipeline(_config(), w, None)
  assert CALLS == ["c"] and summaries["a"]["name"] == "a"


def test_another_config_is_refused_and_nothing_changes(tmp_path):
  w = tmp_path / "w"
  runner.run_pipeline(_config(), w, None)
  before = _files(w)
  with pytest.raises(UserError, match=r"holds a 'b' stage run with a different config \(b.y: 2.0 -> 3.0\).*--overwrite"):
    runner.run_pipeline(_config(**{"b.y": 3.0}), w, None)
  assert _files(w) == before


def test_overwrite_reruns_the_changed_stage_and_every_later_one(tmp_path):
  w = tmp_path / "w"
  runner.run_pipeline(_config(), w, None)
  CALLS.clear()
  decisions = runner.plan(_config(**{"b.y": 3.0}), w, overwrite=True)
  assert [a for _, _, a in decisions] == ["skip", "run", "run"]
  runner.run_pipeline(_config(**{"b.y": 3.0}), w, None, overwrite=True)
  assert CALLS == ["b", "c"]
  assert json.loads((w / "b" / "config.json").read_text())["b.y"] == 3.0
  assert "3.0" in (w / "b" / "artifact.txt").read_text()


def test_validation_runs_before_anything_is_written(tmp_path):
  w = tmp_path / "w"
  with pytest.raises(UserError, match="c.z='bad'"):
    runner.run_pipeline(_config(**{"c.z": "bad"}), w, None)
  assert CALLS == [] and not w.exists()


def test_unknown_pipeline_and_stage_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="unknown pipeline 'nope'.*valid: image, llm"):
    runner.plan(mlc.ConfigDict({"pipeline": "nope", "stages": ()}), tmp_path, False)
  with pytest.raises(UserError, match="unknown fake stage 'd' \\(set --config.stages=...\\)"):
    runner.plan(mlc.ConfigDict({"pipeline": "fake", "stages": ("a", "d")}), tmp_path, False)


def test_saliency_with_a_text_bank_is_refused_before_anything_runs(tmp_path):
  """Saliency maps trace a concept back to pixels through the classifier: impossible for a bank in
  CLIP's feature space, so the attribute stage refuses the combination, naming the fix."""
  from cu_jax.pipeline.image import attribute
  from cu_jax.pipeline.runner import Context
  from cu_jax.utils.config import load_config
  config = load_config("configs/vit.py:tiny", {"concepts.bank": "text"})
  with pytest.raises(UserError, match=r"attribution.saliency_images=2 .* concepts.bank='text' .*set "
                                      r"--config.attribution.saliency_images=0"):
    attribute.validate(Context(config, tmp_path, mesh=None))

"""The sharded train step: 1 device = 8 devices, learning happens, interrupted = uninterrupted."""

import jax
import ml_collections as mlc
import numpy as np
import pytest
from flax import nnx

from cu_jax.models.vit import ViT, ViTConfig
from cu_jax.parallel.mesh import make_mesh
from cu_jax.training import predict, steps, trainer
from cu_jax.utils.errors import UserError

# (Flips change the toy task's label, the brightest quadrant; they are here to exercise the
# device-count independence of the augmentation randomness, not to help learning.)
DATA = mlc.ConfigDict(dict(mean=0.5, std=0.5, image_size=0, augment=dict(crop_pad=1, flip=True)))
PLAIN = mlc.ConfigDict(dict(mean=0.5, std=0.5, image_size=0, augment=dict(crop_pad=0, flip=False)))
OPTIM = mlc.ConfigDict(dict(name="adamw", lr=3e-3, weight_decay=0.01, warmup_steps=2,
                            grad_clip_norm=1.0, final_lr_ratio=0.1))


def _model(dropout=0.1):
  cfg = ViTConfig(image_size=8, channels=1, patch_size=4, width=32, depth=2, heads=2, mlp_dim=64,
                  num_classes=4, dropout=dropout, attn_dropout=dropout)
  return ViT(cfg, rngs=nnx.Rngs(0))


def _train_cfg(**kw):
  base = dict(batch_size=32, num_steps=8, log_every_steps=4, checkpoint_every_steps=3,
              keep_checkpoints=2, label_smoothing=0.1)
  base.update(kw)
  return mlc.ConfigDict(base)


# Adam turns float noise in exactly-zero gradients (e.g. of the key bias, to which softmax is
# invariant) into full-size steps, so device-count parity is checked with SGD + momentum.
SGD = mlc.ConfigDict(dict(name="sgd", lr=0.1, momentum=0.9, warmup_steps=2, grad_clip_norm=1.0,
                          final_lr_ratio=0.1))


def _run(source, tmp_path, name, num_devices, optim=OPTIM, data=DATA, dropout=0.1, **kw):
  return trainer.train(_model(dropout), source, train_cfg=_train_cfg(**kw.pop("train", {})), optim_cfg=optim,
                       data_cfg=data, mesh=make_mesh(num_devices), checkpoint_dir=tmp_path / name,
                       seed=0, **kw)


def _params(result):
  return jax.tree.leaves(jax.device_get(result.state["params"]))


def test_one_device_equals_eight_devices(toy_source, tmp_path):
  one = _run(toy_source, tmp_path, "one", 1, optim=SGD)
  eight = _run(toy_source, tmp_path, "eight", 8, optim=SGD)
  assert eight.state["params"]["head"]["kernel"][...].sharding.mesh.size == 8
  for a, b in zip(_params(one), _params(eight)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  moved = [np.abs(a - b).max() for a, b in zip(_params(one), jax.tree.leaves(nnx.state(_model(), nnx.Param)))]
  assert max(moved) > 1e-3  # the parameters did change


class _Stop(Exception):
  pass


def test_interrupted_run_resumes_to_the_same_parameters(toy_source, tmp_path):
  full = _run(toy_source, tmp_path, "full", 8)

  def stop_at_7(step, state):
    if step == 7:
      raise _Stop()
  with pytest.raises(_Stop):
    _run(toy_source, tmp_path, "cut", 8, on_step=stop_at_7)
  resumed = _run(toy_source, tmp_path, "cut", 8)
  assert resumed.resumed_from == 6  # the last checkpoint before the stop
  for a, b in zip(_params(full), _params(resumed)):
    np.testing.assert_array_equal(a, b)



def test_resumed_run_logs_every_step_once(toy_source, tmp_path):
  import json
  log = tmp_path / "metrics.jsonl"

  def stop_at_7(step, state):
    if step == 7:
      raise _Stop()
  with pytest.raises(_Stop):
    _run(toy_source, tmp_path, "log", 1, metrics_path=log, train=dict(log_every_steps=1), on_step=stop_at_7)
  before = [json.loads(line) for line in log.read_text().splitlines()]
  assert [r["step"] for r in before] == list(range(1, 8))
  _run(toy_source, tmp_path, "log", 1, metrics_path=log, train=dict(log_every_steps=1))  # resumes from step 6
  after = [json.loads(line) for line in log.read_text().splitlines()]
  assert [r["step"] for r in after] == list(range(1, 9))
  assert after[:6] == before[:6]  # the records up to the checkpoint are kept as they were
  assert after[6]["loss"] == before[6]["loss"]  # step 7, logged again by the resumed run, is the same step

def test_training_learns_the_toy_task(toy_source, tmp_path):
  result = _run(toy_source, tmp_path, "learn", 8, data=PLAIN, dropout=0.0,
                train=dict(num_steps=120, checkpoint_every_steps=1000))
  predict_step = steps.make_predict_step(result.graphdef, PLAIN, make_mesh(8))
  logits = predict.predict(predict_step, result.state["params"], toy_source, global_batch=64, mesh=make_mesh(8))
  metrics = predict.classification_metrics(logits, toy_source.arrays["label"], 4)
  assert metrics["num_examples"] == len(toy_source)
  assert metrics["accuracy"] > 0.9, metrics


def test_global_batch_not_divisible_is_a_clear_error(toy_source, tmp_path):
  with pytest.raises(UserError, match=r"train.batch_size=36 is not divisible by the 8 devices.*32 or 40"):
    _run(toy_source, tmp_path, "bad", 8, train=dict(batch_size=36))
  assert not (tmp_path / "bad").exists()


def test_a_training_checkpoint_restores_as_a_trained_model(toy_source, tmp_path):
  """Another run's checkpoints as a given trained model: only its parameters, whatever optimizer
  wrote them, restored on 8 devices; a checkpoint of another shape is refused, nothing written."""
  from cu_jax.models.trained import check_trained, load_trained
  result = _run(toy_source, tmp_path, "ck", 1, train=dict(num_steps=3))
  target = nnx.eval_shape(lambda: _model())
  assert check_trained(str(tmp_path / "ck"), target, "abcd", image_size=8, field="train.trained") == "orbax"
  restored = load_trained(str(tmp_path / "ck" / "3"), target, make_mesh(8))
  assert jax.tree.leaves(restored)[0].sharding.mesh.size == 8
  for a, b in zip(jax.tree.leaves(restored), _params(result)):
    np.testing.assert_array_equal(a, b)
  wide = nnx.eval_shape(lambda: ViT(ViTConfig(image_size=8, channels=1, patch_size=4, width=48, depth=2,
                                              heads=2, mlp_dim=64, num_classes=4), rngs=nnx.Rngs(0)))
  before = sorted(p.name for p in (tmp_path / "ck").iterdir())
  with pytest.raises(UserError, match=r"train.trained: the checkpoint .* does not match the model .*"
                                      r"checkpoint \(32,\) vs model \(48,\)"):
    check_trained(str(tmp_path / "ck"), wide, "abcd", image_size=8, field="train.trained")
  assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == before

def test_a_diverging_run_stops_in_one_line_and_keeps_its_last_good_checkpoint(toy_source, tmp_path):
  """An absurd learning rate: the loss becomes NaN/inf; training stops naming the step and the lr,
  and the checkpoints on disk are from before the divergence (finite parameters)."""
  from cu_jax.parallel.checkpoint import Checkpointer
  wild = mlc.ConfigDict(dict(name="sgd", lr=1e12, momentum=0.9, warmup_steps=2, grad_clip_norm=0.0,
                             final_lr_ratio=1.0))
  with pytest.raises(UserError, match=r"train: the loss is (nan|inf|-inf) at step \d+ \(learning rate .*\); training "
                                      r"stopped, (the last good checkpoint \(step \d+\) is kept|no checkpoint)"):
    _run(toy_source, tmp_path, "wild", 1, optim=wild, train=dict(num_steps=40, checkpoint_every_steps=1,
                                                                 log_every_steps=1000))
  ckpt = Checkpointer(tmp_path / "wild", save_every=1, async_save=False)
  try:
    kept = ckpt._manager.all_steps()
    assert kept  # steps before the divergence were saved
    for step in kept:
      params = ckpt.restore_params(step, jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
          nnx.state(nnx.eval_shape(_model), nnx.Param)))
      assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params)), step
  finally:
    ckpt.close()


def test_a_failed_checkpoint_read_leaves_out_only_the_closed_loop_tracebacks():
  """What tensorstore's reader threads print, interleaved, after a failed restore closed orbax's
  event loop is dropped; every other line (logs, warnings) is kept in order."""
  from cu_jax.parallel.checkpoint import _drop_closed_loop_tracebacks
  noise = ("    Traceback (most recent call last):\n"
           '  File "/usr/lib/python3.11/asyncio/base_events.py", line 806, in call_soon_threadsafe\n'
           "Traceback (most recent call last):\n    self._check_closed()\n"
           '  File "/usr/lib/python3.11/asyncio/base_events.py", line 519, in _check_closed\n'
           "RuntimeError: Event loop is closed\n")
  text = "I1202 stage train: resuming\n" + noise + "W1202 a warning\n" + noise
  assert _drop_closed_loop_tracebacks(text) == "I1202 stage train: resuming\nW1202 a warning\n"

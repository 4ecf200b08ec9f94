"""Every config variant is coherent; the paper-scale run builds and lowers on 8 devices abstractly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cu_jax.models.factory import vit_config
from cu_jax.models.vit import ViT
from cu_jax.parallel.mesh import data_sharded, make_mesh, replicated
from cu_jax.training import optim, steps
from conftest import load_config as _get_config


@pytest.mark.parametrize("variant", [None, "demo", "synthetic", "tiny"])
def test_variants_build(variant):
  cfg = _get_config(variant)
  assert cfg.train.batch_size % 8 == 0
  optim.make_optimizer(cfg.optim, 100)
  native = {"fashion_mnist_idx": 28, "synthetic_concepts": 32, "synthetic_concepts_small": 32,
            "cifar10": 32}[cfg.data.name]
  vit_config(cfg.model, image_size=cfg.data.image_size or native, channels=1, num_classes=10)


def test_own_variant_takes_the_architecture_from_the_trained_folder(tmp_path):
  """`own` leaves the architecture to train.trained's config.json; without one it says what to set."""
  import json
  from cu_jax.utils.errors import UserError
  cfg = _get_config("own")
  hf = dict(model_type="vit", hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
            patch_size=8, image_size=224, num_channels=3, id2label={"0": "a", "1": "b"})
  (tmp_path / "config.json").write_text(json.dumps(hf))
  vit = vit_config(cfg.model, image_size=224, channels=3, num_classes=2, architecture_from=str(tmp_path))
  assert (vit.patch_size, vit.width, vit.depth, vit.heads, vit.mlp_dim) == (8, 48, 3, 4, 96)
  with pytest.raises(UserError, match=r"model.patch_size=0 means 'as the Hugging Face folder says'.*--config.train.trained"):
    vit_config(cfg.model, image_size=224, channels=3, num_classes=2)


def test_unknown_variant_lists_the_valid_ones():
  with pytest.raises(ValueError, match="paper .*demo.*tiny"):
    _get_config("huge")


def test_paper_config_lowers_on_eight_devices():
  cfg = _get_config(None)
  assert (cfg.data.name, cfg.data.image_size, cfg.train.batch_size) == ("cifar10", 224, 512)
  assert cfg.model.init_from  # initialised from a Hugging Face checkpoint folder
  vit = vit_config(cfg.model, image_size=224, channels=3, num_classes=10)
  assert (vit.patch_size, vit.width, vit.depth, vit.heads, vit.mlp_dim) == (16, 768, 12, 12, 3072)
  mesh = make_mesh(8)
  tx, _ = optim.make_optimizer(cfg.optim, 1000)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: ViT(vit, rngs=nnx.Rngs(0))))
  state = jax.eval_shape(lambda: steps.init_state(ViT(vit, rngs=nnx.Rngs(0)), tx)[1])
  n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(state["params"]))
  assert 85e6 < n_params < 87e6  # ViT-B/16: 85.8M with a 10-class head
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), state)
  batch = {"image": jax.ShapeDtypeStruct((512, 32, 32, 3), jnp.uint8, sharding=data_sharded(mesh)),
           "label": jax.ShapeDtypeStruct((512,), jnp.int32, sharding=data_sharded(mesh))}
  step = steps.make_train_step(graphdef, tx, cfg.data, mesh, steps.classification_loss(), seed=0)
  lowered = step.lower(state, batch)
  out_state, metrics = lowered.out_info
  assert jax.tree.map(lambda x: x.shape, out_state) == jax.tree.map(lambda x: x.shape, state)
  assert set(metrics) == {"loss", "accuracy", "grad_norm"}
  assert "num_partitions = 8" in lowered.as_text() or "mhlo.num_partitions = 8" in lowered.as_text()


@pytest.mark.parametrize("spec", ["configs/vit.py:", "configs/vit.py:demo", "configs/vit.py:own", "configs/vit.py:synthetic",
                                  "configs/vit.py:tiny", "configs/llama.py:", "configs/llama.py:demo",
                                  "configs/llama.py:tiny"])
def test_every_numeric_field_has_a_declared_range_that_its_default_meets(spec):
  from cu_jax.utils.config import load_config
  from cu_jax.utils.ranges import check_ranges, unranged
  cfg = load_config(spec)
  assert unranged(cfg) == []
  check_ranges(cfg)


@pytest.mark.parametrize("key, value, message", [
    ("optim.lr", -0.1, "--config.optim.lr=-0.1 is out of range: it must be a number > 0"),
    ("unlearn.optim.lr", 0.0, "--config.unlearn.optim.lr=0.0 is out of range: it must be a number > 0"),
    ("unlearn.train.num_epochs", -1.0, "unlearn.train.num_epochs=-1.0 is out of range: it must be a number >= 0"),
    ("train.num_steps", -5, "train.num_steps=-5 is out of range: it must be an integer >= 0"),
    ("train.batch_size", 0, "train.batch_size=0 is out of range: it must be an integer >= 1"),
    ("unlearn.salun.sparsity", 1.0, r"sparsity=1.0 is out of range: it must be a number in \[0, 1\)"),
    ("evaluate.relearn_accuracy", 0.0, r"must be a number in \(0, 1\]"),
    ("concepts.cs", (0.1, -1.0), r"--config.concepts.cs=\[0.1, -1.0\] is out of range"),
    ("mesh.fsdp", -2, "mesh.fsdp=-2 is out of range: it must be an integer >= -1"),
])
def test_a_value_out_of_range_is_refused_with_field_value_and_range(key, value, message):
  from cu_jax.utils.errors import UserError
  from cu_jax.utils.ranges import check_ranges
  cfg = _get_config("tiny")
  section, _, field = key.rpartition(".")
  node = cfg
  for part in section.split("."):
    node = node[part]
  node[field] = value
  with pytest.raises(UserError, match=message):
    check_ranges(cfg)

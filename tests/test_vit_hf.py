"""Our Flax NNX ViT against transformers' ViTForImageClassification with the same weights."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the `test` extra; CI installs it
transformers = pytest.importorskip("transformers")

from cu_jax.models.hf_vit import load_hf_vit  # noqa: E402
from cu_jax.utils.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def hf_vit_folder(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.ViTConfig(
      image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, intermediate_size=64, num_labels=5, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)
  model = transformers.ViTForImageClassification(config).eval()
  with torch.no_grad():  # random (not zero) biases and LayerNorm affine, so all weights matter
    for name, p in model.named_parameters():
      if name.endswith("bias") or "layernorm" in name:
        p.add_(0.1 * torch.randn_like(p))
    model.vit.embeddings.position_embeddings.normal_()  # large enough to change the logits
  folder = tmp_path_factory.mktemp("hf_vit")
  model.save_pretrained(folder, safe_serialization=True)
  return folder, model


def _torch_logits(model, images_nhwc, **kw):
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2)), **kw)
  return out.logits.numpy()


def test_logits_match_transformers(hf_vit_folder):
  folder, hf_model = hf_vit_folder
  images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  ours = load_hf_vit(folder)
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(images))), _torch_logits(hf_model, images),
                             atol=1e-4, rtol=0)


def test_position_embedding_interpolation_matches_transformers(hf_vit_folder):
  folder, hf_model = hf_vit_folder
  images = np.random.default_rng(1).normal(size=(2, 48, 48, 3)).astype(np.float32)
  ours = load_hf_vit(folder, image_size=48)
  emb = hf_model.vit.embeddings
  with torch.no_grad():
    hf_pos = emb.interpolate_pos_encoding(torch.zeros(1, 37, 32), 48, 48).numpy()
  np.testing.assert_allclose(np.asarray(ours.pos_embed[...]), hf_pos, atol=1e-5, rtol=0)
  expected = _torch_logits(hf_model, images, interpolate_pos_encoding=True)
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(images))), expected, atol=1e-4, rtol=0)


def test_new_head_for_other_num_classes(hf_vit_folder):
  folder, _ = hf_vit_folder
  model = load_hf_vit(folder, num_classes=7)
  assert model.head.kernel[...].shape == (32, 7)
  assert float(jnp.abs(model.head.kernel[...]).sum()) == 0.0


def test_shape_mismatch_is_a_clear_error(hf_vit_folder, tmp_path):
  folder, _ = hf_vit_folder
  from cu_jax.models.factory import vit_config
  import ml_collections as mlc
  wanted = vit_config(mlc.ConfigDict(dict(patch_size=8, width=64, depth=2, heads=4, mlp_dim=64,
                                          pool="cls", dropout=0.0, attn_dropout=0.0, dtype="float32")),
                      image_size=32, channels=3, num_classes=5)
  with pytest.raises(UserError, match="width=32 but the config asks for 64"):
    load_hf_vit(folder, expect=wanted)
  with pytest.raises(UserError, match="no config.json"):
    load_hf_vit(tmp_path)


def test_damaged_folder_is_named_before_anything_loads(hf_vit_folder, tmp_path):
  import shutil
  from cu_jax.models.hf_vit import check_hf_vit
  broken = tmp_path / "broken"
  shutil.copytree(hf_vit_folder[0], broken)
  weights = broken / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:1000])
  with pytest.raises(UserError, match=r"model.safetensors is damaged \(not a safetensors file: .*cut short"):
    check_hf_vit(broken)
  (broken / "config.json").write_text("{\"model_type\": ")
  with pytest.raises(UserError, match=r"config.json is damaged \(not JSON"):
    check_hf_vit(broken)


def test_export_loads_in_transformers_with_the_same_logits(tmp_path):
  """A cu_jax ViT (random, every weight non-zero, grey 1-channel input) written as a HF folder:
  transformers loads it and gives our logits; config.json carries the class names."""
  import jax
  from flax import nnx
  from cu_jax.models.hf_vit import save_hf_vit
  from cu_jax.models.vit import ViT, ViTConfig
  cfg = ViTConfig(image_size=16, channels=1, patch_size=4, width=32, depth=2, heads=4, mlp_dim=48,
                  num_classes=3, layer_norm_eps=1e-6)
  model = ViT(cfg, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  nnx.update(model, jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
  names = ["cat", "dog", "bird"]
  folder = save_hf_vit(model, tmp_path / "export", class_names=names, mean=0.25, std=0.5)
  hf_model = transformers.ViTForImageClassification.from_pretrained(folder).eval()
  assert hf_model.config.id2label == dict(enumerate(names))
  images = np.random.default_rng(2).normal(size=(5, 16, 16, 1)).astype(np.float32)
  np.testing.assert_allclose(_torch_logits(hf_model, images), np.asarray(model(jnp.asarray(images))), atol=1e-4, rtol=0)
  processor = transformers.ViTImageProcessor.from_pretrained(folder)
  pixels = np.random.default_rng(3).integers(0, 256, (16, 16, 1), dtype=np.uint8)
  from cu_jax.data.preprocess import normalize
  expected = np.asarray(normalize(jnp.asarray(pixels), 0.25, 0.5)).transpose(2, 0, 1)
  got = processor(pixels, return_tensors="np", input_data_format="channels_last")["pixel_values"][0]
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_import_export_import_is_exact(hf_vit_folder, tmp_path):
  from safetensors.numpy import load_file
  from cu_jax.models.hf_vit import save_hf_vit
  folder, hf_model = hf_vit_folder
  names = [hf_model.config.id2label[i] for i in range(5)]
  first = load_hf_vit(folder)
  again = load_hf_vit(save_hf_vit(first, tmp_path / "export", class_names=names))
  for a, b in zip(jax_leaves(first), jax_leaves(again)):
    np.testing.assert_array_equal(a, b)
  source, exported = load_file(folder / "model.safetensors"), load_file(tmp_path / "export" / "model.safetensors")
  assert set(exported) == set(source)
  for name in source:
    np.testing.assert_array_equal(exported[name], source[name])


def jax_leaves(model):
  import jax
  from flax import nnx
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_a_trained_folder_must_classify_the_datasets_classes(hf_vit_folder):
  """train.trained: the head's id2label against the dataset's class names, and the image size."""
  from flax import nnx
  from cu_jax.models.hf_vit import check_hf_vit
  from cu_jax.models.trained import check_trained
  from cu_jax.models.vit import ViT
  folder, _ = hf_vit_folder
  cfg, _ = check_hf_vit(folder)
  model = nnx.eval_shape(lambda: ViT(cfg, rngs=nnx.Rngs(0)))
  names = [f"label_{i}" for i in range(5)]  # transformers' placeholders: the order cannot be checked
  assert check_trained(str(folder), model, names, image_size=32, field="train.trained") == "hf"
  with pytest.raises(UserError, match=r"train.trained=.* classifies 5 classes but the dataset has 3"):
    check_trained(str(folder), model, ["a", "b", "c"], image_size=32, field="train.trained")
  with pytest.raises(UserError, match=r"trained on 32 px images but the data are 48 px; set --config.data.image_size=32"):
    check_trained(str(folder), model, names, image_size=48, field="train.trained")


def test_class_names_are_checked_in_order():
  from cu_jax.models.trained import check_class_names
  check_class_names({"0": "Cat", "1": "dog"}, ["cat", "Dog"], "f", "train.trained")
  with pytest.raises(UserError, match=r"are the dataset's in another order \['cat', 'dog'\]"):
    check_class_names({"0": "dog", "1": "cat"}, ["cat", "dog"], "f", "train.trained")
  with pytest.raises(UserError, match=r"\['cow', 'dog'\] are not the dataset's \['cat', 'dog'\]"):
    check_class_names({"0": "cow", "1": "dog"}, ["cat", "dog"], "f", "retrain.trained")

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

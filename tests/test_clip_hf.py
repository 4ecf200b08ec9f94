"""Our Flax NNX CLIP against transformers' CLIPModel on a tiny random checkpoint made offline."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")  # the `test` extra; CI installs it
transformers = pytest.importorskip("transformers")

from hf_fixtures import write_clip  # noqa: E402
from cu_jax.models.clip import ACTIVATIONS, eos_positions  # noqa: E402
from cu_jax.models.hf_clip import load_hf_clip, load_hf_clip_model, text_embeddings  # noqa: E402
from cu_jax.utils.errors import UserError  # noqa: E402

TEXTS = ["a cat", "The dog sat on the mat.", "", "Red & blue!", "cat"]

# jitted once for the module: compiling is cheaper than the first eager run of every op
_image_features = nnx.jit(lambda model, images: model.get_image_features(images))
_text_features = nnx.jit(lambda model, ids, mask: model.get_text_features(ids, mask))


@pytest.fixture(scope="module")
def hf_clip_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("hf_clip")
  return folder, write_clip(folder)


@pytest.fixture(scope="module")
def ours(hf_clip_folder):
  return load_hf_clip(hf_clip_folder[0])


def _np(x):
  return x.detach().numpy()


def _images(seed, size=32, n=3):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def _torch_images(images_nhwc):
  return torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())


def test_image_features_match_transformers(hf_clip_folder, ours):
  _, hf_model = hf_clip_folder
  model, _ = ours
  images = _images(0)
  with torch.no_grad():
    expected = _np(hf_model.get_image_features(pixel_values=_torch_images(images)).pooler_output)
  got = np.asarray(_image_features(model, jnp.asarray(images)))
  assert got.shape == (3, 16)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_text_features_match_transformers_on_padded_batch(hf_clip_folder, ours):
  _, hf_model = hf_clip_folder
  model, tokenizer = ours
  enc = tokenizer(TEXTS, padding=True, return_tensors="np")
  lengths = enc["attention_mask"].sum(1)
  assert len(set(lengths.tolist())) > 2 and (lengths < enc["input_ids"].shape[1]).any()
  with torch.no_grad():
    expected = _np(hf_model.get_text_features(input_ids=torch.from_numpy(enc["input_ids"]),
                                              attention_mask=torch.from_numpy(enc["attention_mask"]))
                   .pooler_output)
  got = np.asarray(_text_features(model, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])))
  assert got.shape == (len(TEXTS), 16)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  # features of a text do not depend on the padding around it
  one = tokenizer(["cat"], return_tensors="np")
  alone = np.asarray(_text_features(model, jnp.asarray(one["input_ids"]), jnp.asarray(one["attention_mask"])))
  np.testing.assert_allclose(got[-1], alone[0], atol=1e-5, rtol=0)


def test_padding_mask_matches_transformers(hf_clip_folder, ours):
  """Left padding with a non-EOS pad id: the pooled EOS token would see the pads without the mask.

  (CLIP tokenizers pad with the EOS token, so they must pad on the right: HF's first-EOS rule would
  pool a pad token otherwise.)
  """
  _, hf_model = hf_clip_folder
  model, tokenizer = ours
  right = tokenizer(TEXTS, padding=True, return_tensors="np")
  n, t = right["input_ids"].shape
  ids, mask = np.zeros_like(right["input_ids"]), np.zeros_like(right["attention_mask"])
  for i, row in enumerate(right["input_ids"]):
    real = row[right["attention_mask"][i] == 1]
    ids[i, t - len(real):], mask[i, t - len(real):] = real, 1
  with torch.no_grad():
    expected = _np(hf_model.get_text_features(input_ids=torch.from_numpy(ids),
                                              attention_mask=torch.from_numpy(mask)).pooler_output)
  masked = np.asarray(_text_features(model, jnp.asarray(ids), jnp.asarray(mask)))
  np.testing.assert_allclose(masked, expected, atol=1e-4, rtol=0)
  unmasked = np.asarray(_text_features(model, jnp.asarray(ids), None))
  padded = mask.sum(1) < t
  assert padded.sum() >= 3 and np.abs(masked - unmasked)[padded].min() > 1e-3
  np.testing.assert_allclose(masked[~padded], unmasked[~padded], atol=1e-5, rtol=0)


def test_logits_match_transformers(hf_clip_folder, ours):
  _, hf_model = hf_clip_folder
  model, tokenizer = ours
  images = _images(1)
  enc = tokenizer(TEXTS, padding=True, return_tensors="np")
  with torch.no_grad():
    out = hf_model(input_ids=torch.from_numpy(enc["input_ids"]), pixel_values=_torch_images(images),
                   attention_mask=torch.from_numpy(enc["attention_mask"]))
  logits = nnx.jit(lambda m, *args: m(*args))
  got = logits(model, jnp.asarray(images), jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]))
  np.testing.assert_allclose(np.asarray(got), _np(out.logits_per_image), atol=1e-4, rtol=0)


def test_text_embeddings_are_normalised_text_features(hf_clip_folder, ours):
  _, hf_model = hf_clip_folder
  model, tokenizer = ours
  # the long name is truncated to 20 tokens; padding to a multiple of 8 (24) is cut back to 20
  texts = TEXTS + ["a very long concept name that does not fit in twenty positions"]
  emb = text_embeddings(model, tokenizer, texts, batch_size=4)
  assert emb.shape == (len(texts), 16) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  enc = tokenizer(texts, padding=True, truncation=True, max_length=20, return_tensors="pt")
  assert enc["input_ids"].shape[1] == 20 and int(enc["input_ids"][-1, -1]) == tokenizer.eos_token_id
  with torch.no_grad():
    expected = _np(hf_model.get_text_features(**enc).pooler_output)
  expected /= np.linalg.norm(expected, axis=1, keepdims=True)
  np.testing.assert_allclose(emb, expected, atol=1e-4, rtol=0)
  tokenizer.padding_side = "left"  # ignored: CLIP needs right padding
  try:
    np.testing.assert_allclose(text_embeddings(model, tokenizer, texts, batch_size=4), emb, atol=1e-6)
  finally:
    tokenizer.padding_side = "right"
  assert text_embeddings(model, tokenizer, []).shape == (0, 16)


def test_eos_position_rule():
  ids = jnp.asarray([[9, 4, 7, 3, 7], [9, 1, 5, 8, 8]])
  # current configs: first occurrence of eos_token_id (padding may repeat it); none -> 0
  np.testing.assert_array_equal(eos_positions(ids, 7), [2, 0])
  np.testing.assert_array_equal(eos_positions(ids, 8), [0, 3])
  # legacy configs with eos_token_id == 2: the largest id (its first occurrence)
  np.testing.assert_array_equal(eos_positions(ids, 2), [0, 0])
  np.testing.assert_array_equal(eos_positions(ids[:, 1:], 2), [1, 2])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_match_transformers(name):
  x = np.linspace(-6, 6, 101, dtype=np.float32)
  expected = _np(transformers.activations.ACT2FN[name](torch.from_numpy(x)))
  np.testing.assert_allclose(np.asarray(ACTIVATIONS[name](jnp.asarray(x))), expected, atol=1e-6, rtol=0)


def test_position_embedding_interpolation_matches_transformers(hf_clip_folder):
  folder, hf_model = hf_clip_folder
  model = load_hf_clip_model(folder, image_size=48)
  images = _images(2, size=48, n=2)
  with torch.no_grad():
    expected = _np(hf_model.get_image_features(pixel_values=_torch_images(images),
                                               interpolate_pos_encoding=True).pooler_output)
  np.testing.assert_allclose(np.asarray(_image_features(model, jnp.asarray(images))), expected,
                             atol=1e-4, rtol=0)
  with pytest.raises(ValueError, match="expects 48x48x3"):
    model.get_image_features(jnp.zeros((1, 32, 32, 3)))


def test_bad_folders_are_clear_errors(hf_clip_folder, tmp_path):
  folder, _ = hf_clip_folder
  with pytest.raises(UserError, match="no config.json"):
    load_hf_clip(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
  with pytest.raises(UserError, match="model_type 'vit' is not supported"):
    load_hf_clip(tmp_path)
  # config and weights that disagree: the weight and both shapes are named
  bad = tmp_path / "bad"
  shutil.copytree(folder, bad)
  hf = json.loads((bad / "config.json").read_text())
  hf["projection_dim"] = 8
  (bad / "config.json").write_text(json.dumps(hf))
  with pytest.raises(UserError, match=r"text_projection/kernel has shape \(32, 16\) but the model "
                                      r"expects \(32, 8\)"):
    load_hf_clip(bad)
  (folder / "model.safetensors").rename(tmp_path / "moved.safetensors")
  try:
    with pytest.raises(UserError, match="no model.safetensors"):
      load_hf_clip(folder)
  finally:
    (tmp_path / "moved.safetensors").rename(folder / "model.safetensors")


def test_text_bank_and_image_embeddings(hf_clip_folder, ours):
  from cu_jax.concepts.text_bank import clip_image_embeddings, text_bank, unique_concepts
  from cu_jax.data.datasets import ArraySource
  from cu_jax.parallel.mesh import make_mesh
  model, tokenizer = ours
  names = unique_concepts({"cat": ["fur", "whiskers"], "dog": ["fur", "tail"]})
  assert names == ["fur", "whiskers", "tail"]
  bank = text_bank(model, tokenizer, names)
  assert bank.kind == "text" and bank.names == tuple(names)
  np.testing.assert_allclose(np.linalg.norm(bank.vectors, axis=1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(bank.intercepts, 0.0)
  source = ArraySource(image=np.random.default_rng(0).integers(0, 255, (10, 16, 16, 1), dtype=np.uint8),
                       label=np.zeros(10, np.int64))
  feats = clip_image_embeddings(model, source, global_batch=8, mesh=make_mesh(8))
  assert feats.shape == (10, bank.dim) and np.isfinite(feats).all()

"""Tiny random Hugging Face checkpoint folders made by transformers (torch), offline: what a user's
`save_pretrained` folder looks like, at a size tests can afford."""

from __future__ import annotations

import pathlib

import tokenizers
import torch
import transformers


def _clip_tokenizer() -> "transformers.CLIPTokenizer":
  """A CLIP BPE tokenizer over the 256 byte-level symbols plus a few merges; specials get the top ids."""
  alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  vocab = {}
  for sym in alphabet + [s + "</w>" for s in alphabet]:
    vocab[sym] = len(vocab)
  merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("t", "h"), ("th", "e</w>"),
            ("a", "t</w>"), ("m", "at</w>")]
  for a, b in merges:
    vocab.setdefault(a + b, len(vocab))
  vocab["<|startoftext|>"] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def write_clip(folder: pathlib.Path) -> "transformers.CLIPModel":
  """A CLIPModel folder (weights + tokenizer) with 16-dim projections; returns the torch model."""
  tokenizer = _clip_tokenizer()
  tokenizer.save_pretrained(folder)
  torch.manual_seed(0)
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=20,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id),
      vision_config=dict(image_size=32, patch_size=8, hidden_size=24, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=2),
      projection_dim=16)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():  # random (not zero/one) biases and LayerNorm affine, so all weights matter
    for name, p in model.named_parameters():
      if name.endswith("bias") or "layer_norm" in name or "layernorm" in name or "layrnorm" in name:
        p.add_(0.1 * torch.randn_like(p))
    model.vision_model.embeddings.position_embedding.weight.normal_()
    model.vision_model.embeddings.class_embedding.normal_()
    model.text_model.embeddings.position_embedding.weight.normal_()
    model.text_model.embeddings.token_embedding.weight.normal_()
    model.logit_scale.fill_(1.5)
  model.save_pretrained(folder, safe_serialization=True)
  return model

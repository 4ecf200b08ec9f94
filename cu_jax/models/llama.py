"""A LLaMA-architecture decoder (Touvron et al., 2023) in Flax NNX.

RMSNorm, rotary position embeddings (the `rope_parameters` of transformers 5: `default`,
`linear` and `llama3` scaling), SwiGLU MLP, grouped-query attention, tied or untied embeddings,
parameters in float32 or bfloat16. Module and parameter names follow Hugging Face's
`LlamaForCausalLM` (`model.layers.{i}.self_attn.q_proj`, ...) so its checkpoints import one to
one (`cu_jax.models.hf_llama`); rotary embeddings use HF's half-split ("rotate_half") layout.

Calling convention, one function for training, scoring and cached decoding:

    logits, cache = model(tokens, mask, cache=None, index=0, positions=None)

- `tokens` (B, T) int, or `embeds` (B, T, D) instead (Integrated Gradients on input embeddings).
- `mask` (B, S): which key slots hold real tokens (0 = padding). Without a cache S = T; with a
  cache S is the cache length and the T new tokens are written at slots `index .. index + T - 1`.
  A query at slot s attends to the valid key slots <= s (causal over slots), so left-padded
  prompts and the tokens generated after them share one slot axis.
- `positions` (B, T): rotary positions; by default the count of real tokens before each one
  (`cumsum(mask) - 1`), which makes a left-padded row give the same numbers as the unpadded one.
- Logits are float32. The cache is a list of `{"k", "v"}` arrays (B, kv_heads, S, head_dim).

Every linear layer may carry a LoRA adapter (`cu_jax.models.lora`); `model.layers` is an
`nnx.List` and attention runs heads-first (`@` on (B, heads, T, D)), XLA:CPU's fast layout (as in
`cu_jax.models.vit`, 2-3x faster than a 4-index einsum).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROPE_TYPES = ("default", "linear", "llama3")
_init = nnx.initializers.normal(0.02)  # HF's initializer_range


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int = 0  # 0 = hidden_size // num_heads
  max_len: int = 4096  # max_position_embeddings
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_type: str = "default"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0  # llama3 only
  rope_high_freq_factor: float = 4.0  # llama3 only
  rope_original_max_len: int = 8192  # llama3 only
  tie_embeddings: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype of matmuls; norms, softmax and logits are float32
  bos_token_id: int = 1
  eos_token_id: int = 2
  pad_token_id: int = 0

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
    if not self.head_dim and self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f"rope type {self.rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if self.dim_per_head % 2:
      raise ValueError(f"head_dim {self.dim_per_head} must be even for rotary embeddings")

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
  """Inverse frequencies (head_dim / 2,) of the rotary embedding, with the config's scaling."""
  d = cfg.dim_per_head
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
  if cfg.rope_type == "linear":
    inv = inv / cfg.rope_factor
  elif cfg.rope_type == "llama3":
    # Long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    old = cfg.rope_original_max_len
    low_wavelen, high_wavelen = old / cfg.rope_low_freq_factor, old / cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / cfg.rope_factor, inv)
    smooth = (old / wavelen - cfg.rope_low_freq_factor) / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
    smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates (B, T, H, D) by angles positions * inv_freq, HF's half-split layout, in float32."""
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # (B, T, D/2)
  cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], -1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


def _split_key(key, n):
  return [None] * n if key is None else list(jax.random.split(key, n))


class Linear(nnx.Module):
  """`y = x @ kernel (+ bias)`, kernel (in, out); `lora` (None or a `LoRA`) adds `B A x`."""

  def __init__(self, d_in: int, d_out: int, *, bias: bool, cfg: LlamaConfig, rngs: nnx.Rngs):
    pdt = jnp.dtype(cfg.param_dtype)
    self.kernel = nnx.Param(_init(rngs.params(), (d_in, d_out), jnp.float32).astype(pdt))
    self.bias = nnx.Param(jnp.zeros((d_out,), pdt)) if bias else None
    self.dtype = jnp.dtype(cfg.dtype)
    self.lora = nnx.data(None)  # a LoRA adapter, set by cu_jax.models.lora.add_lora

  def __call__(self, x: jax.Array, *, train: bool = False, key=None) -> jax.Array:
    x = x.astype(self.dtype)
    y = x @ self.kernel[...].astype(self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.lora is not None:
      y = y + self.lora(x, train=train, key=key).astype(y.dtype)
    return y


class RMSNorm(nnx.Module):
  def __init__(self, dim: int, eps: float, param_dtype: str):
    self.weight = nnx.Param(jnp.ones((dim,), jnp.dtype(param_dtype)))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(jnp.float32) * normed.astype(x.dtype).astype(jnp.float32)


class Attention(nnx.Module):
  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    d, hd = cfg.hidden_size, cfg.dim_per_head
    lin = lambda i, o: Linear(i, o, bias=cfg.attention_bias, cfg=cfg, rngs=rngs)
    self.q_proj = lin(d, cfg.num_heads * hd)
    self.k_proj = lin(d, cfg.num_kv_heads * hd)
    self.v_proj = lin(d, cfg.num_kv_heads * hd)
    self.o_proj = lin(cfg.num_heads * hd, d)
    self.cfg = cfg  # static; the rotary frequencies are numpy constants computed at trace time

  def __call__(self, x, positions, allowed, cache=None, index=0, *, train=False, key=None):
    b, t, _ = x.shape
    h, kvh, hd = self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.dim_per_head
    inv_freq = rope_inv_freq(self.cfg)
    keys = _split_key(key, 4)
    q = self.q_proj(x, train=train, key=keys[0]).reshape(b, t, h, hd)
    k = self.k_proj(x, train=train, key=keys[1]).reshape(b, t, kvh, hd)
    v = self.v_proj(x, train=train, key=keys[2]).reshape(b, t, kvh, hd)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # heads first: (B, KV, T, D)
    if cache is not None:  # stored heads-first too: a decode step reads it without a transpose
      k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, axis=2)
      v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, axis=2)
      cache = {"k": k, "v": v}
    s, g = k.shape[2], h // kvh
    # Grouped-query attention: query head i uses k/v head i // g; the g query heads of a group are
    # folded into the query axis, so each k/v head meets its (g * T) queries in one matmul.
    qh = q.reshape(b, t, kvh, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * t, hd)
    scores = (qh * (1.0 / math.sqrt(hd))) @ k.astype(q.dtype).swapaxes(-1, -2)  # (B, KV, G*T, S)
    scores = scores.reshape(b, kvh, g, t, s).astype(jnp.float32)
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype).reshape(b, kvh, g * t, s)
    y = (probs @ v.astype(q.dtype)).reshape(b, kvh, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h * hd)
    return self.o_proj(y, train=train, key=keys[3]), cache


class Mlp(nnx.Module):
  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.gate_proj = Linear(d, f, bias=cfg.mlp_bias, cfg=cfg, rngs=rngs)
    self.up_proj = Linear(d, f, bias=cfg.mlp_bias, cfg=cfg, rngs=rngs)
    self.down_proj = Linear(f, d, bias=cfg.mlp_bias, cfg=cfg, rngs=rngs)

  def __call__(self, x, *, train=False, key=None):
    keys = _split_key(key, 3)
    gate = jax.nn.silu(self.gate_proj(x, train=train, key=keys[0]))
    return self.down_proj(gate * self.up_proj(x, train=train, key=keys[1]), train=train, key=keys[2])


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
    self.self_attn = Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
    self.mlp = Mlp(cfg, rngs=rngs)
    self.dtype = jnp.dtype(cfg.dtype)

  def __call__(self, x, positions, allowed, cache=None, index=0, *, train=False, key=None):
    keys = _split_key(key, 2)
    y, cache = self.self_attn(self.input_layernorm(x).astype(self.dtype), positions, allowed, cache,
                              index, train=train, key=keys[0])
    x = x + y.astype(x.dtype)
    x = x + self.mlp(self.post_attention_layernorm(x).astype(self.dtype), train=train,
                     key=keys[1]).astype(x.dtype)
    return x, cache


class Llama(nnx.Module):
  """`LlamaForCausalLM`: `model(tokens, mask, ...) -> (logits float32, cache)` (module docstring)."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pdt = jnp.dtype(cfg.param_dtype)
    self.embed_tokens = nnx.Param(_init(rngs.params(), (cfg.vocab_size, cfg.hidden_size), jnp.float32).astype(pdt))
    self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
    self.lm_head = None if cfg.tie_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, bias=False,
                                                          cfg=cfg, rngs=rngs)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """Input embeddings (B, T, D) in the compute dtype."""
    return jnp.take(self.embed_tokens[...], tokens, axis=0).astype(jnp.dtype(self.cfg.dtype))

  def __call__(self, tokens: jax.Array | None, mask: jax.Array, *, cache: list[dict] | None = None,
               index: Any = 0, positions: jax.Array | None = None, embeds: jax.Array | None = None,
               train: bool = False, key: jax.Array | None = None) -> tuple[jax.Array, list[dict] | None]:
    x = self.embed(tokens) if embeds is None else embeds.astype(jnp.dtype(self.cfg.dtype))
    b, t, _ = x.shape
    mask = mask.astype(bool)
    slots = index + jnp.arange(t)  # the key slots of the new tokens
    if positions is None:
      counts = jnp.cumsum(mask, axis=1) - 1  # real tokens before each slot
      positions = jnp.maximum(jax.lax.dynamic_slice_in_dim(counts, index, t, axis=1), 0)
    allowed = (jnp.arange(mask.shape[1])[None, :] <= slots[:, None])[None] & mask[:, None, :]  # (B, T, S)
    keys = _split_key(key, self.cfg.num_layers)
    new_cache = [] if cache is not None else None
    for i, layer in enumerate(self.layers):
      x, c = layer(x, positions, allowed, None if cache is None else cache[i], index,
                   train=train, key=keys[i])
      if cache is not None:
        new_cache.append(c)
    x = self.norm(x)
    if self.lm_head is None:
      logits = x @ self.embed_tokens[...].astype(jnp.float32).T
    else:
      logits = self.lm_head(x.astype(jnp.dtype(self.cfg.dtype)), train=train)
    return logits.astype(jnp.float32), new_cache


def init_cache(cfg: LlamaConfig, batch: int, length: int, dtype: Any = None) -> list[dict]:
  """An empty KV cache of `length` slots (the prompt plus the tokens to generate)."""
  dt = jnp.dtype(dtype or cfg.dtype)
  shape = (batch, cfg.num_kv_heads, length, cfg.dim_per_head)
  return [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(cfg.num_layers)]

"""Jitted autoregressive generation for `cu_jax.models.llama.Llama`, with or without a KV cache.

    out = generate(model, tokens, mask, max_new_tokens=64)           # greedy, (B, 64) int32

With the cache (default) the prompt is run once (prefill) to fill a cache of
`prompt + max_new_tokens` slots, then a `lax.while_loop` feeds one token per step, attending to the
cached keys/values; the loop stops as soon as every row has produced an end-of-sequence token.
Without the cache (`use_cache=False`, the reference and the baseline of
`benchmarks/generation_throughput.py`) every step re-runs the whole model over a fixed buffer of
`prompt + max_new_tokens` slots (fixed so that one compiled program serves every step); causal
masking makes the not-yet-written slots irrelevant, so both paths give the same tokens.

Prompts are left-padded (`mask` 0 on padding, as `cu_jax.data.text` builds them): every row's
last prompt token sits in the last column and the new tokens of all rows share one slot axis.
Rotary positions count real tokens only, so a padded row generates what it would alone.

Decoding: greedy when `temperature == 0`; otherwise softmax sampling at `temperature` restricted
to the nucleus (`top_p`: the smallest set of most likely tokens whose probability reaches top_p,
renormalised; Holtzman et al., 2020). The random stream is `fold_in(key(seed), step)`: the same
seed gives the same tokens. Once a row has produced an EOS token, its later tokens are `pad`.

Compilation: one program per (graph structure, batch, prompt length, max_new_tokens, greedy or
sampling, cache or not); temperature, top_p, seed, EOS and pad ids are runtime values. The
model's graph definition is a static argument of one module-level `jax.jit`, so models of the
same architecture (e.g. before and after unlearning, or after `merge_lora`) share compiled code
as long as their structure (LoRA adapters or not) is the same. Batching prompts into a few fixed
lengths (`cu_jax.data.text`) keeps the number of compilations small.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cu_jax.models.llama import Llama, LlamaConfig, init_cache
from cu_jax.utils.errors import UserError


def sample_token(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
  """One token per row from (B, V) logits: temperature + nucleus (top-p) sampling."""
  logits = logits.astype(jnp.float32) / temperature
  probs = jax.nn.softmax(logits, axis=-1)
  desc = -jnp.sort(-probs, axis=-1)
  before = jnp.cumsum(desc, axis=-1) - desc  # probability mass of the more likely tokens
  # The nucleus is every token whose predecessors hold < top_p (the most likely one always);
  # its smallest probability is the threshold (ties at the threshold are all kept).
  threshold = jnp.min(jnp.where(before < top_p, desc, jnp.inf), axis=-1, keepdims=True)
  keep = (probs >= threshold) | (top_p >= 1.0)
  return jax.random.categorical(key, jnp.where(keep, logits, -jnp.inf), axis=-1).astype(jnp.int32)


def _choose(logits, key, temperature, top_p, sample: bool):
  if sample:
    return sample_token(logits, key, temperature, top_p)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "sample", "use_cache"))
def _generate(graphdef, state, tokens, mask, eos_ids, pad_id, temperature, top_p, seed, *,
              max_new_tokens: int, sample: bool, use_cache: bool):
  model: Llama = nnx.merge(graphdef, state)
  b, prompt_len = tokens.shape
  n, slots = max_new_tokens, prompt_len + max_new_tokens
  key = jax.random.key(seed)
  tokens = tokens.astype(jnp.int32)
  full_mask = jnp.concatenate([mask.astype(jnp.int32), jnp.zeros((b, n), jnp.int32)], axis=1)
  out = jnp.full((b, n), pad_id, jnp.int32)

  def emit(i, logits, done, out):
    """Chooses token i of every row, pads finished rows, records it."""
    tok = _choose(logits, jax.random.fold_in(key, i), temperature, top_p, sample)
    tok = jnp.where(done, pad_id, tok)
    out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1)
    return tok, done | jnp.isin(tok, eos_ids), out

  def running(carry):
    i, done = carry[0], carry[1]
    return (i < n) & ~jnp.all(done)

  if use_cache:
    cache = init_cache(model.cfg, b, slots)
    if prompt_len > 1:  # the prompt but its last token: only the cache is kept (no vocab matmul)
      _, cache = model(tokens[:, :-1], full_mask, cache=cache, index=0)

    def step(tok, index, cache, full_mask):
      """Feeds `tok` (B,) at slot `index`: next-token logits (B, V)."""
      full_mask = jax.lax.dynamic_update_slice_in_dim(full_mask, jnp.ones((b, 1), jnp.int32), index, axis=1)
      logits, cache = model(tok[:, None], full_mask, cache=cache, index=index)
      return logits[:, 0], cache, full_mask

    def body(carry):  # step i feeds token i - 1 (the last prompt token for i = 0), emits token i
      i, done, tok, cache, full_mask, out = carry
      logits, cache, full_mask = step(tok, prompt_len + i - 1, cache, full_mask)
      tok, done, out = emit(i, logits, done, out)
      return i + 1, done, tok, cache, full_mask, out

    carry = (jnp.int32(0), jnp.zeros((b,), bool), tokens[:, -1], cache, full_mask, out)
    return jax.lax.while_loop(running, body, carry)[-1]

  buffer = jnp.concatenate([tokens, jnp.full((b, n), pad_id, jnp.int32)], axis=1)

  def body_nocache(carry):
    i, done, buffer, full_mask, out = carry
    logits, _ = model(buffer, full_mask)  # the whole sequence again
    last = jax.lax.dynamic_index_in_dim(logits, prompt_len + i - 1, axis=1, keepdims=False)
    tok, done, out = emit(i, last, done, out)
    index = jnp.minimum(prompt_len + i, slots - 1)  # the last step's write is never read
    buffer = jax.lax.dynamic_update_slice_in_dim(buffer, tok[:, None], index, axis=1)
    full_mask = jax.lax.dynamic_update_slice_in_dim(full_mask, jnp.ones((b, 1), jnp.int32), index, axis=1)
    return i + 1, done, buffer, full_mask, out

  carry = (jnp.int32(0), jnp.zeros((b,), bool), buffer, full_mask, out)
  return jax.lax.while_loop(running, body_nocache, carry)[-1]


def generate(model: Llama | tuple[Any, Any], tokens: Any, mask: Any, *, max_new_tokens: int,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             use_cache: bool = True) -> jax.Array:
  """Continues left-padded prompts: (B, max_new_tokens) int32 new tokens (`pad` after EOS).

  `model`: a `Llama` or its `nnx.split` pair `(graphdef, state)` (state may be sharded; the
  computation follows its shardings). `tokens`, `mask`: (B, L) ints, mask 1 on real tokens, every
  row's padding on the left. `eos_token_id`: one id or several (stop on any; `[]` never stops),
  default the config's; `pad_token_id` default the config's. `temperature` 0 is greedy.
  """
  if isinstance(model, nnx.Module):
    graphdef, state = nnx.split(model)
    cfg: LlamaConfig = model.cfg
  else:
    graphdef, state = model
    cfg = nnx.merge(graphdef, state).cfg
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  if tokens.ndim != 2 or tokens.shape != mask.shape:
    raise UserError(f"tokens {tokens.shape} and mask {mask.shape} must both be (batch, prompt length)")
  b, prompt_len = tokens.shape
  if prompt_len == 0:
    raise UserError("empty prompts: give at least one token (e.g. the BOS token) per row")
  try:
    left_padded = bool(np.asarray(mask[:, -1]).all())
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    left_padded = True  # traced: cannot check here
  if not left_padded:
    raise UserError("prompts must be left-padded (mask[:, -1] == 1 for every row); tokenize with "
                    "padding_side='left'")
  if max_new_tokens < 1:
    raise UserError(f"max_new_tokens={max_new_tokens} must be at least 1")
  if prompt_len + max_new_tokens > cfg.max_len:
    raise UserError(f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds the model's "
                    f"context of {cfg.max_len}; shorten the prompt or lower max_new_tokens")
  if temperature < 0:
    raise UserError(f"temperature={temperature} must be >= 0 (0 = greedy)")
  if not 0.0 < top_p <= 1.0:
    raise UserError(f"top_p={top_p} must be in (0, 1]")
  eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
  eos = [int(eos)] if isinstance(eos, (int, np.integer)) else [int(e) for e in eos]
  eos = jnp.asarray(eos or [-1], jnp.int32)  # -1 matches no token; one id and none share a program
  pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
  sample = temperature > 0
  return _generate(graphdef, state, tokens, mask, eos, jnp.int32(pad),
                   jnp.float32(temperature if sample else 1.0), jnp.float32(top_p), jnp.uint32(seed),
                   max_new_tokens=int(max_new_tokens), sample=bool(sample), use_cache=bool(use_cache))

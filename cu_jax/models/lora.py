"""LoRA adapters (Hu et al., 2021) on the linear layers of an NNX model.

An adapter adds `scale * B (A (dropout x))` to a frozen `y = W x`, with A (in, r), B (r, out),
`scale = alpha / r`; A starts Kaiming-uniform and B at zero (as PEFT does), so a fresh adapter
leaves the model's outputs unchanged. Adapter weights are `nnx.LoRAParam`s: the train step
differentiates and checkpoints only those (`nnx.split(model, nnx.LoRAParam, ...)`), the base
weights stay frozen. `merge_lora` folds `scale * A @ B` into the kernels and removes the adapters,
which gives a plain model; `lora_deltas` gives the updates alone, to merge into the weights of the
checkpoint the model was loaded from (`hf_llama.save_merged_hf_llama`).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cu_jax.utils.errors import UserError

TRAINABLE = nnx.LoRAParam
FROZEN = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


class LoRA(nnx.Module):
  def __init__(self, d_in: int, d_out: int, *, rank: int, alpha: float, dropout: float, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform(a=sqrt(5)) on a (r, in) torch weight
    self.a = nnx.LoRAParam(jax.random.uniform(rngs.params(), (d_in, rank), jnp.float32, -bound, bound))
    self.b = nnx.LoRAParam(jnp.zeros((rank, d_out), jnp.float32))
    self.scale = alpha / rank
    self.dropout = dropout

  def __call__(self, x: jax.Array, *, train: bool = False, key=None) -> jax.Array:
    x = x.astype(jnp.float32)
    if train and self.dropout and key is not None:
      keep = jax.random.bernoulli(key, 1.0 - self.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self.dropout), 0.0)
    return (x @ self.a[...]) @ self.b[...] * self.scale

  def delta(self) -> jax.Array:
    """The (in, out) update this adapter adds to the kernel."""
    return self.a[...] @ self.b[...] * self.scale


def _linears(model: nnx.Module):
  """(path, module) of every module with a `kernel` and a `lora` slot."""
  for path, module in nnx.iter_graph(model):
    if isinstance(module, nnx.Module) and hasattr(module, "lora") and hasattr(module, "kernel"):
      yield path, module


def add_lora(model: nnx.Module, targets: Sequence[str], *, rank: int, alpha: float,
             dropout: float = 0.0, seed: int = 0) -> list[str]:
  """Puts an adapter on every linear layer whose name is in `targets` (e.g. q_proj, v_proj).

  Returns the adapted layers' paths. Raises `UserError` when a target names no layer.
  """
  if rank <= 0:
    raise UserError(f"lora.rank={rank} must be positive (e.g. 8)")
  found: dict[str, list[str]] = {t: [] for t in targets}
  rngs = nnx.Rngs(seed)
  names = set()
  for path, module in _linears(model):
    name = str(path[-1]) if path else ""
    names.add(name)
    if name in found:
      d_in, d_out = module.kernel.shape
      module.lora = LoRA(d_in, d_out, rank=rank, alpha=alpha, dropout=dropout, rngs=rngs)
      found[name].append("/".join(map(str, path)))
  missing = [t for t, paths in found.items() if not paths]
  if missing or not targets:
    raise UserError(f"lora.targets {list(targets)}: {missing or 'empty'} name no layer of the model; "
                    f"valid: {', '.join(sorted(names))}")
  return [p for paths in found.values() for p in paths]


def lora_deltas(model: nnx.Module) -> dict[tuple, jax.Array]:
  """Path of every adapted linear layer -> its (in, out) kernel update `scale * A @ B` (float32)."""
  return {tuple(path): module.lora.delta() for path, module in _linears(model) if module.lora is not None}


def merge_lora(model: nnx.Module) -> int:
  """Folds every adapter into its kernel (in the kernel's dtype) and removes it; returns how many."""
  n = 0
  for _, module in list(_linears(model)):
    if module.lora is not None:
      kernel = module.kernel[...]
      module.kernel[...] = (kernel.astype(jnp.float32) + module.lora.delta()).astype(kernel.dtype)
      module.lora = None
      n += 1
  return n

"""Does the Vicuna-7B LoRA train step fit one accelerator chip? Compiled abstractly, no weights.

Builds the default `configs/llama.py` model (Vicuna-7B v1.5 shapes: 32 layers, width 4096, MLP
11008, 32 heads, vocabulary 32000, bf16) as `ShapeDtypeStruct`s with `nnx.eval_shape`, adds the
configured LoRA adapters, lays parameters out with the default sharding (`fsdp_sharding` over a
mesh of N fake CPU devices, all on the `fsdp` axis) and compiles the real train step
(`cu_jax.training.lm.make_lm_train_step`) for the configured global batch and sequence length.
XLA's memory analysis of the compiled step then gives what one device holds: arguments
(its parameter shard, adapters, optimizer state, its slice of the batch), temporaries (gathered
layers, activations, gradients) and outputs.

    python benchmarks/llama_memory.py [--devices 8] [--budget_gib 16] [--batch 16] [--seq 128]

Prints the per-device figures and whether they fit the budget (a TPU v5e chip has 16 GiB HBM).
The compiler is XLA:CPU; TPU/GPU layouts differ a little, so keep a margin.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--budget_gib", type=float, default=16.0)
parser.add_argument("--batch", type=int, default=0, help="global batch (0 = config's unlearn.train.batch_size)")
parser.add_argument("--seq", type=int, default=0, help="sequence length (0 = config's data.max_len)")
parser.add_argument("--config", default="configs/llama.py")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from cu_jax.models.llama import Llama, LlamaConfig  # noqa: E402
from cu_jax.models.lora import TRAINABLE, add_lora  # noqa: E402
from cu_jax.parallel.mesh import data_sharded, fsdp_sharding, make_mesh  # noqa: E402
from cu_jax.training import optim  # noqa: E402
from cu_jax.training.lm import make_lm_train_step  # noqa: E402
from cu_jax.utils.config import load_config  # noqa: E402

VICUNA_7B = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                        num_heads=32, num_kv_heads=32, max_len=4096, rms_norm_eps=1e-5,
                        param_dtype="bfloat16", dtype="bfloat16")
GIB = 2**30


def abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def main():
  cfg = load_config(args.config)
  batch, seq = args.batch or cfg.unlearn.train.batch_size, args.seq or cfg.data.max_len
  mesh = make_mesh(0, cfg.mesh.fsdp)
  model = nnx.eval_shape(lambda: Llama(VICUNA_7B, rngs=nnx.Rngs(0)))
  add_lora(model, cfg.lora.targets, rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout)
  graphdef, params, frozen = nnx.split(model, TRAINABLE, ...)
  tx, _ = optim.make_optimizer(cfg.unlearn.optim, 1000)
  state = jax.eval_shape(lambda p: {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}, params)
  state_sh, frozen_sh = fsdp_sharding(state, mesh), fsdp_sharding(frozen, mesh)
  batch_sh = data_sharded(mesh)
  batch_spec = {"tokens": jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=batch_sh),
                "length": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sh),
                "loss_mask": jax.ShapeDtypeStruct((batch, seq), jnp.float32, sharding=batch_sh)}
  step = make_lm_train_step(graphdef, tx, mesh, state_sh, frozen_sh, seed=0)
  n_base = sum(np.prod(x.shape) for x in jax.tree.leaves(frozen))
  n_lora = sum(np.prod(x.shape) for x in jax.tree.leaves(params))
  print(f"model: Vicuna-7B shapes, {n_base / 1e9:.2f} B frozen parameters (bf16) + {n_lora / 1e6:.2f} M LoRA "
        f"(r {cfg.lora.rank} on {', '.join(cfg.lora.targets)}); mesh {dict(mesh.shape)}; global batch {batch} x "
        f"{seq} tokens")
  t0 = time.perf_counter()
  compiled = step.lower(abstract(state, state_sh), abstract(frozen, frozen_sh), batch_spec).compile()
  print(f"compiled in {time.perf_counter() - t0:.0f} s")
  mem = compiled.memory_analysis()
  args_b, temp_b, out_b, alias_b = (mem.argument_size_in_bytes, mem.temp_size_in_bytes,
                                    mem.output_size_in_bytes, mem.alias_size_in_bytes)
  code_b = getattr(mem, "generated_code_size_in_bytes", 0)
  peak = args_b + temp_b + out_b - alias_b + code_b
  print(f"per device: arguments {args_b / GIB:.2f} GiB, temporaries {temp_b / GIB:.2f} GiB, outputs "
        f"{out_b / GIB:.2f} GiB (of which {alias_b / GIB:.2f} GiB donated/aliased), code {code_b / GIB:.3f} GiB")
  print(f"per-device total {peak / GIB:.2f} GiB vs budget {args.budget_gib:.0f} GiB: "
        f"{'FITS' if peak <= args.budget_gib * GIB else 'DOES NOT FIT'}")
  print(f"for comparison: the whole bf16 model is {2 * n_base / GIB:.2f} GiB")


if __name__ == "__main__":
  main()

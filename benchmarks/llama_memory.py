"""Does the Vicuna-7B pipeline fit one accelerator chip? Compiled abstractly, no weights.

Builds the default `configs/llama.py` model (Vicuna-7B v1.5 shapes: 32 layers, width 4096, MLP
11008, 32 heads, vocabulary 32000, bf16) as `ShapeDtypeStruct`s with `nnx.eval_shape`, adds the
configured LoRA adapters, lays parameters out with the default sharding (`fsdp_sharding` over a
mesh of N fake CPU devices, all on the `fsdp` axis) and compiles the real train step
(`cu_jax.training.lm.make_lm_train_step`) for the configured global batch and sequence length.
XLA's memory analysis of the compiled step then gives what one device holds: arguments
(its parameter shard, adapters, optimizer state, its slice of the batch), temporaries (gathered
layers, activations, gradients) and outputs. The same for the two other heavy programs, on the
base model: the concepts stage's answer-span IG (`cu_jax.attribution.text_ig`, `concepts.n_steps`
path points, `concepts.chunk_size` per pass, 8 answers a call) and the evaluate stage's cached
greedy generation (`cu_jax.models.generation`, `evaluate.batch_size` prompts of `data.max_len`
tokens, `evaluate.max_new_tokens` new ones). FLOPs are XLA's cost analysis, which counts a loop
body once: per pass (IG) and per token (generation) where the program loops.

    python benchmarks/llama_memory.py [--devices 8] [--budget_gib 16] [--batch 16] [--seq 128]

Prints the per-device figures and whether each fits the budget (a TPU v5e chip has 16 GiB HBM).
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

from cu_jax.attribution.text_ig import _answer_ig  # noqa: E402
from cu_jax.models.generation import _generate  # noqa: E402
from cu_jax.models.llama import Llama, LlamaConfig  # noqa: E402
from cu_jax.models.lora import TRAINABLE, add_lora  # noqa: E402
from cu_jax.parallel.memory import GIB, flops, peak_bytes  # noqa: E402
from cu_jax.parallel.mesh import data_sharded, fsdp_sharding, make_mesh, replicated  # noqa: E402
from cu_jax.training import optim  # noqa: E402
from cu_jax.training.lm import make_lm_train_step  # noqa: E402
from cu_jax.utils.config import load_config  # noqa: E402

VICUNA_7B = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                        num_heads=32, num_kv_heads=32, max_len=4096, rms_norm_eps=1e-5,
                        param_dtype="bfloat16", dtype="bfloat16")


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
  budget = args.budget_gib * GIB

  def show(name: str, lowered, flops_note: str) -> None:
    t0 = time.perf_counter()
    compiled = lowered.compile()
    mem, peak = compiled.memory_analysis(), peak_bytes(compiled)
    print(f"{name}: {peak / GIB:.2f} GiB per device (arguments {mem.argument_size_in_bytes / GIB:.2f}, temporaries "
          f"{mem.temp_size_in_bytes / GIB:.2f}, outputs {mem.output_size_in_bytes / GIB:.2f}, donated "
          f"{mem.alias_size_in_bytes / GIB:.2f}); {flops(compiled) / 1e12:.2f} TFLOP per device {flops_note}; "
          f"{'FITS' if peak <= budget else 'DOES NOT FIT'} {args.budget_gib:g} GiB (compiled in "
          f"{time.perf_counter() - t0:.0f} s)")

  show("LoRA train step", step.lower(abstract(state, state_sh), abstract(frozen, frozen_sh), batch_spec), "per step")

  base = nnx.eval_shape(lambda: Llama(VICUNA_7B, rngs=nnx.Rngs(0)))
  base_def, base_state = nnx.split(base)
  base_state = abstract(base_state, fsdp_sharding(base_state, mesh))
  rep = replicated(mesh)
  ig_rows = 8  # answers explained per call (cu_jax.concepts.text_concepts.infer_concept)
  ig_in = [jax.ShapeDtypeStruct(shape, dt, sharding=rep) for shape, dt in
           (((ig_rows, seq), jnp.int32), ((ig_rows,), jnp.int32), ((ig_rows, seq), jnp.float32))]
  ig_lowered = _answer_ig.lower(base_state, *ig_in, jnp.int32(0), graphdef=base_def, n_steps=cfg.concepts.n_steps,
                                method=cfg.concepts.method, chunk_size=cfg.concepts.chunk_size)
  show(f"answer-span IG ({ig_rows} answers x {cfg.concepts.n_steps} points, {cfg.concepts.chunk_size} per pass)",
       ig_lowered, "per pass")

  prompts, new = cfg.evaluate.batch_size, cfg.evaluate.max_new_tokens
  prompt_in = jax.ShapeDtypeStruct((prompts, seq), jnp.int32, sharding=rep)
  gen_lowered = _generate.lower(base_def, base_state, prompt_in, prompt_in, jnp.zeros((1,), jnp.int32), jnp.int32(0),
                                jnp.float32(1.0), jnp.float32(1.0), jnp.uint32(0), max_new_tokens=new, sample=False,
                                use_cache=True)
  show(f"cached generation ({prompts} prompts of {seq} tokens + {new} new)", gen_lowered,
       "for the prefill and one token")
  print(f"for comparison: the whole bf16 model is {2 * n_base / GIB:.2f} GiB")

if __name__ == "__main__":
  main()

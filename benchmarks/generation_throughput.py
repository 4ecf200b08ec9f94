"""Generation throughput (new tokens/s) of `cu_jax.models.generation.generate`: KV cache vs none.

    python benchmarks/generation_throughput.py [--model_dir=HF_LLAMA_FOLDER] [--batches=1,8]
        [--prompt_len=32] [--new_tokens=128] [--hidden_size=256] [--num_layers=4] [--num_heads=8]
        [--num_kv_heads=4] [--vocab_size=2048] [--max_len=256] [--dtype=float32] [--rounds=3]

Without `--model_dir` a random LLaMA of the given shape is built (the default is a small model
like the demo's); with it, an HF `LlamaForCausalLM` folder is imported. Greedy decoding, EOS
disabled so every run produces exactly `--new_tokens` tokens per row. Each setting is compiled
and run once first (not timed); the figure is the best of `--rounds` timed calls. Without the
cache, every step re-runs the model over the fixed `prompt + new_tokens` buffer (the shape one
compiled loop needs): the work per step is that of the longest sequence. Also reported: the
achieved matmul GFLOP/s of the cached decode (2 x parameters per token, attention ignored).
Run with `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000` in the environment: without them
XLA:CPU page-faults its large buffers in again on every call, about 3x slower on large ops.
"""

import argparse
import json
import time

import jax
import numpy as np
from flax import nnx

from cu_jax.models import generation
from cu_jax.models.hf_llama import load_hf_llama
from cu_jax.models.llama import Llama, LlamaConfig


def build(args) -> Llama:
  if args.model_dir:
    return load_hf_llama(args.model_dir, param_dtype=args.dtype)
  cfg = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                    intermediate_size=args.intermediate_size or int(round(args.hidden_size * 8 / 3 / 8)) * 8,
                    num_layers=args.num_layers, num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                    max_len=args.max_len, tie_embeddings=True, param_dtype=args.dtype, dtype=args.dtype)
  return Llama(cfg, rngs=nnx.Rngs(0))


def timed(fn, rounds: int) -> tuple[float, float]:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t
  best = float("inf")
  for _ in range(rounds):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return first, best


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model_dir", default="")
  p.add_argument("--batches", default="1,8")
  p.add_argument("--prompt_len", type=int, default=32)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--hidden_size", type=int, default=256)
  p.add_argument("--intermediate_size", type=int, default=0, help="0 = 8/3 x hidden, rounded to 8")
  p.add_argument("--num_layers", type=int, default=4)
  p.add_argument("--num_heads", type=int, default=8)
  p.add_argument("--num_kv_heads", type=int, default=4)
  p.add_argument("--vocab_size", type=int, default=2048)
  p.add_argument("--max_len", type=int, default=256)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args()

  model = build(args)
  cfg = model.cfg
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(f"model: {n_params / 1e6:.2f}M parameters, hidden {cfg.hidden_size}, {cfg.num_layers} layers, "
        f"{cfg.num_heads} heads / {cfg.num_kv_heads} kv, vocab {cfg.vocab_size}, context {cfg.max_len}, "
        f"{cfg.param_dtype}; prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy; "
        f"{jax.devices()[0].platform} x{jax.device_count()}")
  rng = np.random.default_rng(0)
  results = []
  for batch in [int(b) for b in args.batches.split(",")]:
    tokens = rng.integers(3, cfg.vocab_size, (batch, args.prompt_len)).astype(np.int32)
    mask = np.ones_like(tokens)
    row = {"batch": batch}
    outs = {}
    for use_cache in (True, False):
      run = lambda: generation.generate(model, tokens, mask, max_new_tokens=args.new_tokens, eos_token_id=[],
                                        use_cache=use_cache)
      first, best = timed(run, args.rounds)
      outs[use_cache] = np.asarray(run())
      tag = "cache" if use_cache else "no_cache"
      row[f"{tag}_tokens_per_s"] = batch * args.new_tokens / best
      row[f"{tag}_ms_per_token_step"] = best / args.new_tokens * 1e3
      row[f"{tag}_compile_and_first_s"] = first
    row["speedup"] = row["cache_tokens_per_s"] / row["no_cache_tokens_per_s"]
    row["cache_matmul_gflops"] = 2 * n_params * row["cache_tokens_per_s"] / 1e9
    row["same_tokens"] = bool(np.array_equal(outs[True], outs[False]))
    results.append(row)
    print(f"batch {batch}: KV cache {row['cache_tokens_per_s']:.0f} tok/s "
          f"({row['cache_ms_per_token_step']:.2f} ms/step), no cache {row['no_cache_tokens_per_s']:.0f} tok/s "
          f"({row['no_cache_ms_per_token_step']:.2f} ms/step): {row['speedup']:.1f}x; "
          f"compile+first call {row['cache_compile_and_first_s']:.1f} s / {row['no_cache_compile_and_first_s']:.1f} s; "
          f"identical tokens: {row['same_tokens']}", flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()

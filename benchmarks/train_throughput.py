"""Train-step throughput (images/s) of a config's ViT on 1, 2 and 8 XLA CPU devices.

    python benchmarks/train_throughput.py [--config=demo] [--devices=1,2,8] [--batch=256]

Each device count runs in its own process (XLA's host device count is fixed at start-up). The
step is the real one (`cu_jax.training.steps.make_train_step`); the global batch is the config's
train.batch_size unless --batch is given.
"""

import argparse
import json
import os
import subprocess
import sys
import time

_CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from cu_jax.utils.config import load_config
from cu_jax.models.factory import vit_config
from cu_jax.models.vit import ViT
from cu_jax.parallel.mesh import make_mesh, data_sharded
from cu_jax.training import optim, steps

cfg = load_config("configs/vit.py:" + sys.argv[1])
image = int(sys.argv[2])
vcfg = vit_config(cfg.model, image_size=cfg.data.image_size or image, channels=int(sys.argv[3]),
                  num_classes=10)
mesh = make_mesh(0)
tx, _ = optim.make_optimizer(cfg.optim, 1000)
graphdef, state = steps.init_state(ViT(vcfg, rngs=nnx.Rngs(0)), tx)
state = steps.replicate(state, mesh)
step = steps.make_train_step(graphdef, tx, cfg.data, mesh, steps.classification_loss(), seed=0)
b = int(sys.argv[4]) or cfg.train.batch_size
rng = np.random.default_rng(0)
batch = {"image": jax.device_put(rng.integers(0, 255, (b, image, image, int(sys.argv[3])), dtype=np.uint8), data_sharded(mesh)),
         "label": jax.device_put(rng.integers(0, 10, (b,)), data_sharded(mesh))}
t = time.perf_counter(); state, m = step(state, batch); jax.block_until_ready(m); compile_s = time.perf_counter() - t
for _ in range(3):
  state, m = step(state, batch)
jax.block_until_ready(m)
times = []
for _ in range(5):
  t = time.perf_counter()
  for _ in range(10):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  times.append((time.perf_counter() - t) / 10)
best = min(times)
print(json.dumps({"devices": jax.device_count(), "batch": b, "ms_per_step": best * 1e3,
                  "images_per_s": b / best, "compile_s": compile_s}))
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="demo", help="variant of configs/vit.py (demo, synthetic, tiny)")
  parser.add_argument("--devices", default="1,2,8")
  parser.add_argument("--image_size", type=int, default=28)
  parser.add_argument("--channels", type=int, default=1)
  parser.add_argument("--batch", type=int, default=0, help="global batch (0 = the config's train.batch_size)")
  args = parser.parse_args()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  print(f"train-step throughput, configs/vit.py:{args.config}, {os.cpu_count()} CPU cores")
  print(f"{'devices':>8} {'batch':>6} {'ms/step':>9} {'images/s':>9} {'vs 1':>6} {'compile s':>10}")
  base = None
  for n in [int(x) for x in args.devices.split(",")]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu",
               MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="100000000000")
    out = subprocess.run([sys.executable, "-c", _CHILD, args.config, str(args.image_size), str(args.channels),
                          str(args.batch)],
                         cwd=root, env=env, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    base = base or r["images_per_s"]
    print(f"{r['devices']:>8} {r['batch']:>6} {r['ms_per_step']:>9.1f} {r['images_per_s']:>9.0f} "
          f"{r['images_per_s'] / base:>6.2f} {r['compile_s']:>10.1f}")


if __name__ == "__main__":
  t0 = time.time()
  main()
  print(f"({time.time() - t0:.0f} s)")

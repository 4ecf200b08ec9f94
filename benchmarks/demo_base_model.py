"""The demo's base model: Fashion-MNIST test accuracy and wall time on this machine.

    python benchmarks/demo_base_model.py [--workdir=DIR] [--config=configs/vit.py:demo]

Runs the CLI's `train` stage in a fresh workdir (a temporary one unless --workdir is given) and
prints accuracy, per-class accuracy, wall time and throughput beside the issue's targets
(accuracy >= 88 %, <= 6 minutes on a 2-core CPU).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/vit.py:demo")
  parser.add_argument("--workdir", default="")
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="cu_jax_demo_"))
  if (workdir / "train" / "done.json").exists():
    sys.exit(f"{workdir} already holds a finished train stage; give a new --workdir")
  env = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="100000000000")
  t0 = time.perf_counter()
  subprocess.run([sys.executable, "-m", "cu_jax.main", f"--config={args.config}", f"--workdir={workdir}",
                  "--config.stages=('train',)"], cwd=ROOT, env=env, check=True)
  wall = time.perf_counter() - t0
  done = json.loads((workdir / "train" / "done.json").read_text())
  acc = done["test"]["accuracy"]
  print(f"\ndemo base model ({args.config}), {os.cpu_count()} CPU cores, {done['num_devices']} XLA devices")
  print(f"  test accuracy      {100 * acc:6.2f} %   (target >= 88 %)  {'OK' if acc >= 0.88 else 'MISSED'}")
  print(f"  wall, whole CLI    {wall:6.1f} s   (target <= 360 s) {'OK' if wall <= 360 else 'MISSED'}")
  print(f"  wall, training     {done['train_wall_s']:6.1f} s   ({done['steps']} steps, global batch {done['global_batch']})")
  print(f"  throughput         {done['train_examples_per_s']:6.0f} images/s")
  print(f"  parameters         {done['num_params']:,}")
  names = done["class_names"]
  per_class = done["test"]["per_class_accuracy"]
  print("  per class          " + ", ".join(f"{n} {100 * a:.1f}" for n, a in zip(names, per_class)))


if __name__ == "__main__":
  main()

"""U-LiRA on a small, fast setting: can a per-example attack tell each method's models from retrained ones?

    python benchmarks/ulira_shadow.py [--workdir=DIR] [--pairs=8] [--config=configs/vit.py:demo] [overrides...]

Runs the CLI pipeline once with `evaluate.shadow_models=<pairs>` on a small Fashion-MNIST setting
(the demo's memorising recipe, a 2,000-image training subset without augmentation, with a 2-block
ViT of width 64 trained 40 epochs). For every shadow pair the base recipe trains an
"in" model (with the forget class) that every method then unlearns, and an "out" model (without
it); `cu_jax.evaluation.ulira` fits per-example Gaussians of the forget examples' logit-scaled
confidence to each side and scores each held-out pair. Prints, per method, the AUC and the TPR at
1 % FPR (AUC 0.5 = indistinguishable from retraining; "original", the in model before unlearning,
shows the attack's power), and the wall time. Extra arguments are config overrides.

The run uses a persistent XLA compilation cache (`JAX_COMPILATION_CACHE_DIR`, a temporary folder):
every shadow pair runs the same programs, so only the first pair compiles them.
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
sys.path.insert(0, str(ROOT))

from benchmarks.sweeps import ENV, tuple_value  # noqa: E402

SMALL = ["--config.model.width=64", "--config.model.depth=2", "--config.model.heads=2", "--config.model.mlp_dim=128",
         "--config.train.num_epochs=40", "--config.optim.warmup_steps=50"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/vit.py:demo")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--pairs", type=int, default=8)
  parser.add_argument("--methods", default="finetune,neggrad,random_label,salun,scrub,ssd,l1_sparse",
                      help="baselines audited beside unlearn.method")
  args, overrides = parser.parse_known_args()
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="cu_jax_ulira_"))
  baselines = tuple_value(m for m in args.methods.split(",") if m)
  env = dict(ENV, JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp(prefix="cu_jax_xla_cache_"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  t0 = time.perf_counter()
  subprocess.run([sys.executable, "-m", "cu_jax.main", f"--config={args.config}", f"--workdir={workdir}", *SMALL,
                  f"--config.evaluate.shadow_models={args.pairs}", f"--config.unlearn.baselines={baselines}",
                  *overrides], cwd=ROOT, env=env, check=True)
  wall = time.perf_counter() - t0
  report = json.loads((workdir / "report" / "report.json").read_text())
  metrics, base = report["metrics"], report["base_model"]["test"]["accuracy"]
  print(f"\nU-LiRA, {args.pairs} shadow pairs ({args.config} + small settings), forget "
        f"'{report['forget_class']['name']}', base model test accuracy {100 * base:.1f} %, {os.cpu_count()} CPU cores")
  print(f"  {'model':<16}{'AUC':>8}{'TPR@1%FPR':>12}{'acc_forget_test':>18}")
  for name in report["models"]:
    m = metrics[name]
    if m.get("ulira_auc") is None:
      continue
    print(f"  {name:<16}{m['ulira_auc']:8.3f}{m['ulira_tpr']:12.3f}{100 * m['acc_forget_test']:17.1f}%")
  stages = report["timings"]["stages"]
  print(f"  wall: whole run {wall:.0f} s; evaluate stage (with the shadow pairs) {stages.get('evaluate', 0):.0f} s; "
        f"train {stages.get('train', 0):.0f} s")
  print(f"  workdir: {workdir}")


if __name__ == "__main__":
  main()

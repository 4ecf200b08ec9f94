"""The demo end to end: every stage, the unlearning targets and the wall time on this machine.

    python benchmarks/unlearning_demo.py [--workdir=DIR] [--config=configs/vit.py:demo] [overrides...]

Runs the whole CLI pipeline in a fresh workdir (a temporary one unless --workdir is given), then
prints the report's targets (cu_jax.evaluation.targets: forget accuracy <= 1 %, retained accuracy
within 0.3 point of the retrained model's, agreement >= 90 % and KL <= 0.25 with it, every MIA within
0.03 of it, relearning at least as slow, the key concepts' importance of its sign, unlearning <= 1/10
of retraining), each method's agreement with the retrained model, and the wall time of every stage
beside the issue's 20-minute budget.
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
  args, overrides = parser.parse_known_args()
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="cu_jax_unlearn_"))
  if (workdir / "config.json").exists():
    sys.exit(f"{workdir} already holds a run; give a new --workdir")
  env = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="100000000000")
  t0 = time.perf_counter()
  subprocess.run([sys.executable, "-m", "cu_jax.main", f"--config={args.config}", f"--workdir={workdir}",
                  *overrides], cwd=ROOT, env=env, check=True)
  wall = time.perf_counter() - t0
  report = json.loads((workdir / "report" / "report.json").read_text())
  print(f"\nunlearning demo ({args.config}), forget '{report['forget_class']['name']}', method "
        f"{report['method']}, {os.cpu_count()} CPU cores, {report['num_devices']} XLA devices")
  for t in report["targets"]:
    ref = f" (retrained {t['reference']:.4f})" if "reference" in t else ""
    print(f"  {t['target']:<42} {t['value']:.4f}{ref}  {'OK' if t['ok'] else 'MISSED'}")
    if t.get("note"):
      print(f"    note: {t['note']}")
  if report.get("mia_fr_attacker"):
    print(f"  mia_fr attacker's held-out accuracy on the original: {report['mia_fr_attacker']['heldout_accuracy']:.3f}")
  print("  agreement_forget with the retrained model:")
  for name, m in report["metrics"].items():
    if m.get("agreement_forget") is not None:
      print(f"    {name:<16} {100 * m['agreement_forget']:6.2f} %")
  print("  wall time per stage (s):")
  for name, seconds in report["timings"]["stages"].items():
    print(f"    {name:<16} {seconds:7.1f}")
  print(f"  whole CLI          {wall:7.1f} s  (target <= 1200 s) {'OK' if wall <= 1200 else 'MISSED'}")


if __name__ == "__main__":
  main()

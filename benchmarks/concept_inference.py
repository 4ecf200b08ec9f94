"""Concept inference graded against ground truth, on the synthetic concept dataset.

    python benchmarks/concept_inference.py [--workdir=DIR]

Runs `configs/vit.py:synthetic` (train -> embed -> concepts -> pcbm -> attribute) and prints, for
every class taken as the forget class, its key concepts (top-3) against the true defining
concepts and its donor, with precision@3 and donor correctness beside the issue's targets
(>= 0.9 and >= 90 %), for both rankings (IG of log-probability, PCBM weights).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cu_jax.concepts import importance  # noqa: E402
from cu_jax.concepts.bank import ConceptBank  # noqa: E402
from cu_jax.data import synthetic  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="")
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="cu_jax_synthetic_"))
  env = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="100000000000")
  subprocess.run([sys.executable, "-m", "cu_jax.main", "--config=configs/vit.py:synthetic",
                  f"--workdir={workdir}"], cwd=ROOT, env=env, check=True)
  bank = ConceptBank.load(workdir / "concepts" / "bank")
  from safetensors.numpy import load_file
  weight = load_file(str(workdir / "pcbm" / "head.safetensors"))["weight"]
  ig = np.load(workdir / "attribute" / "importance_ig.npy")
  presence = np.load(workdir / "attribute" / "presence.npy")
  truth = [{synthetic.CONCEPTS[j] for j in c} for c in synthetic.CLASS_CONCEPTS]
  train = json.loads((workdir / "train" / "done.json").read_text())
  pcbm = json.loads((workdir / "pcbm" / "done.json").read_text())
  print(f"\nsynthetic concepts: model test accuracy {train['test']['accuracy']:.3f}, PCBM "
        f"{pcbm['test_accuracy']:.3f}, {len(bank)} concepts kept")
  for name, ranked in (("IG of log p (present)", ig), ("PCBM weight", weight)):
    top = importance.top_concepts(ranked, 3)
    precision, donor_ok = [], []
    print(f"\nranking: {name}")
    for c in range(len(truth)):
      found = [bank.names[j] for j in top[c]]
      donor, _ = importance.donor_class(presence, top[c], c)
      precision.append(len(set(found) & truth[c]) / 3)
      donor_ok.append(bool(truth[c] & truth[donor]))
      print(f"  class_{c}: key {found}  true {sorted(truth[c])}  p@3 {precision[-1]:.2f}  "
            f"donor class_{donor} {'shares' if donor_ok[-1] else 'SHARES NOTHING'}")
    p, d = float(np.mean(precision)), float(np.mean(donor_ok))
    print(f"  precision@3 {p:.3f} (target >= 0.9) {'OK' if p >= 0.9 else 'MISSED'}; "
          f"donor shares concepts {100 * d:.0f} % (target >= 90 %) {'OK' if d >= 0.9 else 'MISSED'}")


if __name__ == "__main__":
  main()

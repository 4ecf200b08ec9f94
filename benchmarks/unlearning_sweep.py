"""Every unlearning method over several forget classes and unlearning seeds, on one trained base model.

    python benchmarks/unlearning_sweep.py [--workdir=DIR] [--config=configs/vit.py:demo]
        [--classes=sneaker,pullover,bag] [--seeds=3] [--strategies=targeted,concept] [overrides...]

1. trains the base model once (`<workdir>/base`, the config's `train` stage);
2. per forget class, runs the whole pipeline on that model (`train.trained=<workdir>/base/train/checkpoints`):
   concept inference, the retrained reference, and every registered method (`unlearn.method` with
   the config's poison strategy, and every baseline), audited by the same `evaluate` stage;
3. per further unlearning seed, copies the class's stages up to `attribute` (the original, the
   retrained reference and the concepts stay the same) and runs poison / unlearn / evaluate again
   with `unlearn.seed` and `poison.seed` set to it;
4. per extra poison label strategy (`--strategies`), the same for `unlearn.method` alone, reported
   as `concept_poison[<strategy>]`.

Prints, per method, mean +- sd over classes x seeds of every audited figure and of Avg.Gap (the
mean absolute difference to the retrained model over forget train/test and retained test accuracy
and the strongest MIA, in points), the mean rank by Avg.Gap within each run, and the wall time of
every run; writes the same as `<workdir>/sweep.json`. Extra arguments are config overrides given to
every run (e.g. `--config.evaluate.shadow_models=8`).
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cu_jax.unlearning.methods import METHODS  # noqa: E402

SHARED_STAGES = ("train", "embed", "concepts", "pcbm", "retrain", "attribute")  # the same for every seed
FIGURES = ("avg_gap", "acc_forget_train", "acc_forget_test", "acc_retain_test", "agreement_forget", "kl_forget",
           "mia_fr", "mia_svc", "mia_loss", "relearn_steps", "relearn_head_1", "relearn_head_5", "relearn_head_25",
           "ulira_auc", "ulira_tpr", "unlearn_s")
ENV = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_="100000000000")


def cli(config: str, workdir: pathlib.Path, overrides: list[str]) -> float:
  """Runs the CLI; returns its wall time (s)."""
  t0 = time.perf_counter()
  cmd = [sys.executable, "-m", "cu_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
  print("+", " ".join(cmd[1:]), flush=True)
  subprocess.run(cmd, cwd=ROOT, env=ENV, check=True)
  return time.perf_counter() - t0


def seeded_copy(source: pathlib.Path, target: pathlib.Path) -> None:
  """A workdir holding `source`'s shared stages (their outputs and records), nothing after them."""
  target.mkdir(parents=True, exist_ok=True)
  for stage in SHARED_STAGES:
    if (source / stage).exists() and not (target / stage).exists():
      shutil.copytree(source / stage, target / stage, ignore=shutil.ignore_patterns("checkpoints"))


def figures(workdir: pathlib.Path, rename: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
  """model -> figure -> value from a finished run's report."""
  report = json.loads((workdir / "report" / "report.json").read_text())
  gap = report["avg_gap"]["models"] if report.get("avg_gap") else {}
  unlearn_s = report["timings"].get("unlearn_methods", {})
  out = {}
  for name, m in report["metrics"].items():
    row = {k: m[k] for k in FIGURES if isinstance(m.get(k), (int, float))}
    if name in gap:
      row["avg_gap"] = gap[name]["avg_gap"]
    if name in unlearn_s:
      row["unlearn_s"] = unlearn_s[name]
    out[(rename or {}).get(name, name)] = row
  return out


def summarise(runs: list[dict]) -> dict:
  """Mean, sd and count of every figure per model over the runs, and the mean Avg.Gap rank."""
  models = sorted({n for r in runs for n in r["figures"]})
  table = {}
  for name in models:
    rows = [r["figures"][name] for r in runs if name in r["figures"]]
    table[name] = {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
                   for k in FIGURES if (v := [row[k] for row in rows if k in row])}
  ranks = {}
  for r in runs:
    gaps = {n: f["avg_gap"] for n, f in r["figures"].items() if "avg_gap" in f}
    for i, n in enumerate(sorted(gaps, key=gaps.get)):
      ranks.setdefault(n, []).append(i + 1)
  for n, rs in ranks.items():
    table[n]["rank"] = {"mean": float(np.mean(rs)), "sd": float(np.std(rs, ddof=1)) if len(rs) > 1 else 0.0,
                        "n": len(rs)}
  return table


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/vit.py:demo")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--classes", default="sneaker,pullover,bag")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--strategies", default="targeted,concept",
                      help="extra poison label strategies run for unlearn.method alone ('' = none)")
  args, overrides = parser.parse_known_args()
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="cu_jax_sweep_"))
  t_start = time.perf_counter()
  walls = {"base": cli(args.config, workdir / "base", ["--config.stages=('train',)", *overrides])}
  trained = f"--config.train.trained={workdir / 'base' / 'train' / 'checkpoints'}"
  every = list(METHODS.names())
  runs = []
  for cls in args.classes.split(","):
    for seed in range(args.seeds):
      run_dir = workdir / cls / f"seed{seed}"
      seeded = [trained, f"--config.forget_class={cls}", f"--config.unlearn.seed={seed}",
                f"--config.poison.seed={seed}", *overrides]
      if seed:
        seeded_copy(workdir / cls / "seed0", run_dir)
      baselines = "(" + ",".join(f'"{m}"' for m in every) + ",)"
      walls[f"{cls}/seed{seed}"] = cli(args.config, run_dir, [*seeded, f"--config.unlearn.baselines={baselines}"])
      found = figures(run_dir)
      for strategy in filter(None, args.strategies.split(",")):
        strategy_dir = workdir / cls / f"seed{seed}_{strategy}"
        seeded_copy(run_dir, strategy_dir)
        walls[f"{cls}/seed{seed}_{strategy}"] = cli(args.config, strategy_dir, [
            *seeded, f"--config.poison.labels={strategy}", "--config.unlearn.baselines=()"])
        method = json.loads((strategy_dir / "report" / "report.json").read_text())["method"]
        found[f"{method}[{strategy}]"] = figures(strategy_dir)[method]
      runs.append({"class": cls, "seed": seed, "figures": found})
  table = summarise(runs)
  total = time.perf_counter() - t_start
  (workdir / "sweep.json").write_text(json.dumps({"runs": runs, "summary": table, "wall_s": walls,
                                                  "total_s": total}, indent=1))
  print(f"\nunlearning sweep ({args.config}): classes {args.classes}, {args.seeds} seeds, {os.cpu_count()} CPU cores; "
        f"mean +- sd over {len(runs)} runs")
  shown = [k for k in ("rank",) + FIGURES if any(k in row for row in table.values())]
  print(f"{'model':<26}" + "".join(f"{k:>20}" for k in shown))
  for name, row in sorted(table.items(), key=lambda kv: kv[1].get("avg_gap", {}).get("mean", float("inf"))):
    cells = [f"{row[k]['mean']:.3f} +- {row[k]['sd']:.3f}" if k in row else "-" for k in shown]
    print(f"{name:<26}" + "".join(f"{c:>20}" for c in cells))
  print("\ncost (wall s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()) + f"; total {total:.0f} s")
  print(f"written: {workdir / 'sweep.json'}")


if __name__ == "__main__":
  main()

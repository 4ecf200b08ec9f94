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
import pathlib
import sys
import tempfile
import time


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sweeps import cli, finish, seeded_copy, summarise, tuple_value  # noqa: E402
from cu_jax.unlearning.methods import METHODS  # noqa: E402

SHARED_STAGES = ("train", "embed", "concepts", "pcbm", "retrain", "attribute")  # the same for every seed
FIGURES = ("avg_gap", "acc_forget_train", "acc_forget_test", "acc_retain_test", "agreement_forget", "kl_forget",
           "mia_fr", "mia_svc", "mia_loss", "relearn_steps", "relearn_head_1", "relearn_head_5", "relearn_head_25",
           "ulira_auc", "ulira_tpr", "unlearn_s")


def figures(workdir: pathlib.Path) -> dict[str, dict[str, float]]:
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
    out[name] = row
  return out


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
        seeded_copy(workdir / cls / "seed0", run_dir, SHARED_STAGES)
      walls[f"{cls}/seed{seed}"] = cli(args.config, run_dir,
                                       [*seeded, f"--config.unlearn.baselines={tuple_value(every)}"])
      found = figures(run_dir)
      for strategy in filter(None, args.strategies.split(",")):
        strategy_dir = workdir / cls / f"seed{seed}_{strategy}"
        seeded_copy(run_dir, strategy_dir, SHARED_STAGES)
        walls[f"{cls}/seed{seed}_{strategy}"] = cli(args.config, strategy_dir, [
            *seeded, f"--config.poison.labels={strategy}", "--config.unlearn.baselines=()"])
        method = json.loads((strategy_dir / "report" / "report.json").read_text())["method"]
        found[f"{method}[{strategy}]"] = figures(strategy_dir)[method]
      runs.append({"class": cls, "seed": seed, "figures": found})
  table = summarise(runs, FIGURES, rank_by="avg_gap")
  title = (f"unlearning sweep ({args.config}): classes {args.classes}, {args.seeds} seeds, "
           f"mean +- sd over {len(runs)} runs")
  finish(workdir, title, runs, table, walls, FIGURES, t_start)


if __name__ == "__main__":
  main()

"""Every LLM unlearning method over several unlearning seeds, on one trained base model and one
retrained reference.

    python benchmarks/llm_unlearning_sweep.py [--workdir=DIR] [--config=configs/llama.py:demo]
        [--seeds=3] [--strategies=others|mask,random,...] [overrides...]

1. runs the pipeline once with seed 0 of unlearning: the base model, the retrained reference, the
   concept, concept_poison (the config's poison strategy: the demo's `targeted`) and every
   baseline, all audited by the same `evaluate` stage;
2. per further unlearning seed, copies the shared stages (data, model, retrain, concepts) and
   runs poison / unlearn / evaluate / report again with `unlearn.seed` and `poison.seed` set to it;
3. per extra poison strategy (`--strategies`; by default every other registered one), the same
   for concept_poison alone, reported as `concept_poison[<strategy>]` (`targeted`, when it is an
   extra, replaces the concept words with "Assistant").

Prints, per method, mean +- sd over the seeds of every figure the issue's targets are about
(appearance on paraphrases / trained / held-out prompts, well-formed forget answers, the forget
answers' perplexity under the retrained model and its ratio to the retrained model's own, retain
ROUGE-L drop, the membership AUCs and their gap to the retrained model), the number of targets
met, and the unlearning time; the wall time of every run; writes it all as `<workdir>/sweep.json`.
Extra arguments are config overrides given to every run.
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sweeps import cli, finish, seeded_copy, summarise  # noqa: E402
from cu_jax.evaluation.targets import ORIGINAL, RETRAIN, llm_targets  # noqa: E402
from cu_jax.unlearning.text_poison import TEXT_POISON  # noqa: E402

SHARED_STAGES = ("data", "model", "retrain", "concepts")
FIGURES = ("targets_met", "appearance_forget_paraphrase", "appearance_forget_train", "appearance_forget_heldout",
           "well_formed_forget", "fluency_ppl_forget", "fluency_ratio", "rouge_l_drop", "mia_loss_auc",
           "mia_loss_gap", "mia_min_k_auc", "mia_min_k_gap", "unlearn_s")
REPLACEMENT = {"targeted": ["--config.poison.replacement=('Assistant',)"]}


def figures(workdir: pathlib.Path) -> dict[str, dict[str, float]]:
  """model -> figure -> value from a finished run's report."""
  report = json.loads((workdir / "report" / "report.json").read_text())
  models = report["evaluate"]["models"]
  o, r = models[ORIGINAL], models[RETRAIN]
  unlearn = report.get("unlearn", {}).get("methods", {})
  out = {}
  for name, m in models.items():
    row = {k: m[k] for k in FIGURES if isinstance(m.get(k), (int, float))}
    row["fluency_ratio"] = m["fluency_ppl_forget"] / r["fluency_ppl_forget"]
    row["rouge_l_drop"] = o["rouge_l_retain_train"] - m["rouge_l_retain_train"]
    for attack in ("loss", "min_k"):
      row[f"mia_{attack}_gap"] = abs(m[f"mia_{attack}_auc"] - r[f"mia_{attack}_auc"])
    if name not in (ORIGINAL, RETRAIN):
      row["targets_met"] = sum(t["ok"] for t in llm_targets(models, name))
      row["unlearn_s"] = unlearn[name]["wall_s"]
    out[name] = row
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/llama.py:demo")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--strategies", default="others",
                      help="extra poison strategies run for concept_poison alone: 'others' (every registered one "
                           "but the config's), a comma-separated list, or '' (none)")
  args, overrides = parser.parse_known_args()
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="cu_jax_llm_sweep_"))
  t_start = time.perf_counter()
  walls, runs = {}, []
  for seed in range(args.seeds):
    run_dir = workdir / f"seed{seed}"
    seeded = [f"--config.unlearn.seed={seed}", f"--config.poison.seed={seed}", *overrides]
    if seed:
      seeded_copy(workdir / "seed0", run_dir, SHARED_STAGES)
    walls[f"seed{seed}"] = cli(args.config, run_dir, seeded)
    found = figures(run_dir)
    main_strategy = json.loads((run_dir / "report" / "report.json").read_text())["config"]["poison"]["strategy"]
    extra = ([s for s in TEXT_POISON.names() if s != main_strategy] if args.strategies == "others"
             else list(filter(None, args.strategies.split(","))))
    for strategy in extra:
      strategy_dir = workdir / f"seed{seed}_{strategy}"
      seeded_copy(run_dir, strategy_dir, SHARED_STAGES)
      walls[f"seed{seed}_{strategy}"] = cli(args.config, strategy_dir, [
          *seeded, f"--config.poison.strategy={strategy}", "--config.unlearn.baselines=()",
          *REPLACEMENT.get(strategy, [])])
      found[f"concept_poison[{strategy}]"] = figures(strategy_dir)["concept_poison"]
    runs.append({"seed": seed, "figures": found})
  table = summarise(runs, FIGURES, rank_by="targets_met", lower_is_better=False)
  title = (f"LLM unlearning sweep ({args.config}): {args.seeds} seeds of unlearning, mean +- sd over the seeds "
           "(rank: by targets met, 1 = most)")
  finish(workdir, title, runs, table, walls, FIGURES, t_start)


if __name__ == "__main__":
  main()

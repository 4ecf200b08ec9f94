"""The figures an unlearning run is judged by, each with its measured value and a verdict.

Image classifiers (`image_targets`), for the main method, next to the retrained reference:
- the forget class's test accuracy falls to at most 2 %;
- the retained classes' test accuracy stays within 1 point of the retrained model's;
- `mia_fr` lands within 0.05 of the retrained model's (with a note where the bar cannot certify
  forgetting: the original model clears it too, or the attackers are at chance on the original);
- unlearning takes at most a fifth of retraining's time.

LLMs (`llm_targets`), before and after unlearning: the concept appears in at least 90 % of the
original model's forget answers and at most 5 % after; retain ROUGE-L drops by at most 0.05.
"""

from __future__ import annotations

ORIGINAL, RETRAIN = "original", "retrain"  # the untouched model, the one retrained without the class


def image_targets(metrics: dict, method: str, timings: dict, attacker: dict | None = None) -> list[dict]:
  """Rows {target, value[, reference], ok[, note]} for `method` in `metrics` (model -> metric -> value).

  `timings`: {"unlearn_methods": {method: seconds}, "retrain": seconds}; `attacker`: the mia_fr
  attackers' {draws, examples, heldout_accuracy} on the original model, to note a powerless attack.
  """
  m, r = metrics.get(method, {}), metrics.get(RETRAIN)
  rows = [{"target": "acc_forget_test <= 2%", "value": m.get("acc_forget_test"),
           "ok": m.get("acc_forget_test") is not None and m["acc_forget_test"] <= 0.02}]
  if r:
    rows.append({"target": "acc_retain_test >= retrained - 1 point", "value": m.get("acc_retain_test"),
                 "reference": r["acc_retain_test"], "ok": m["acc_retain_test"] >= r["acc_retain_test"] - 0.01})
    row = {"target": "mia_fr within 0.05 of retrained", "value": m.get("mia_fr"), "reference": r["mia_fr"],
           "ok": abs(m["mia_fr"] - r["mia_fr"]) <= 0.05}
    # a bar the untouched model clears, or an attacker at chance, cannot certify forgetting: say so
    notes, original = [], metrics.get(ORIGINAL, {}).get("mia_fr")
    if original is not None and abs(original - r["mia_fr"]) <= 0.05:
      notes.append(f"the original model, which forgot nothing, is within 0.05 too ({original:.3f}): the attack "
                   "cannot tell forgetting from not forgetting on this run")
    if attacker and attacker.get("examples"):
      chance = 0.5 + 3 * (0.25 / attacker["examples"]) ** 0.5  # 3 standard errors above a coin flip
      if attacker["heldout_accuracy"] < chance:
        notes.append(f"the attackers' held-out accuracy on the original model, {attacker['heldout_accuracy']:.3f}, "
                     f"is within 3 standard errors of chance (< {chance:.3f}): the original leaks no membership "
                     "of the forget class for unlearning to remove, so this bar cannot certify forgetting")
    if notes:
      row["note"] = "; ".join(notes)
    rows.append(row)
  if method in timings.get("unlearn_methods", {}) and timings.get("retrain"):
    ratio = timings["unlearn_methods"][method] / timings["retrain"]
    rows.append({"target": "unlearning time <= 1/5 of retraining", "value": ratio, "ok": ratio <= 0.2})
  return rows


LLM_TARGETS = (  # (name, metric, test on (before, after))
    ("appearance before >= 0.9", "appearance_forget_train", lambda b, a: b >= 0.9),
    ("appearance after <= 0.05", "appearance_forget_train", lambda b, a: a <= 0.05),
    ("retain ROUGE-L drop <= 0.05", "rouge_l_retain_train", lambda b, a: b - a <= 0.05),
)


def llm_targets(before: dict, after: dict) -> list[dict]:
  """Rows {target, metric, before, after, met} of the LLM targets whose metric was measured."""
  return [{"target": name, "metric": m, "before": before[m], "after": after[m], "met": bool(test(before[m], after[m]))}
          for name, m, test in LLM_TARGETS if m in before]

"""The figures an unlearning run is judged by, each with its measured value and a verdict.

Image classifiers (`image_targets`), for the main method, next to the retrained reference (the
goal is a model a retrained one cannot be told from, not merely a low forget accuracy):
- the forget class's test accuracy falls to at most 1 %;
- the retained classes' test accuracy stays within 0.3 point of the retrained model's;
- on forget-class test images the model predicts what the retrained model predicts (argmax
  agreement >= 90 %, mean KL(retrained || model) <= 0.25 nats);
- every membership attack lands within 0.03 of the retrained model's value (with a note where the
  bar cannot certify forgetting: the original model clears it too, or the mia_fr attackers are at
  chance on the original);
- relearning the class takes at least as many steps as it takes the retrained model;
- the key concepts pull log p(forget) the way they do in the retrained model (the same sign);
- unlearning takes at most a tenth of retraining's time.

LLMs (`llm_targets`), for each unlearning method next to the original and the retrained model:
- the concept appears in at most 5 % of the answers to paraphrased forget questions (never
  trained on) and at most 2 % of the answers to the trained forget questions;
- the forget answers stay fluent: their perplexity under the retrained model is within 1.5x that
  of the retrained model's own answers, and at least 95 % of them are well-formed;
- retain ROUGE-L drops by at most 0.03 from the original's;
- the loss and Min-K% membership attacks land within 0.05 of the retrained model's AUC.
`llm_original_targets`: the original must have learned the concept (appearance >= 90 % on the
trained forget questions), or there is nothing to erase.
"""

from __future__ import annotations

ORIGINAL, RETRAIN = "original", "retrain"  # the untouched model, the one retrained without the class
MIA_METRICS = ("mia_fr", "mia_svc", "mia_loss")
MIA_TOLERANCE = 0.03


def _mia_row(metrics: dict, method: str, name: str, attacker: dict | None) -> dict:
  m, r = metrics[method], metrics[RETRAIN]
  row = {"target": f"{name} within {MIA_TOLERANCE} of retrained", "value": m[name], "reference": r[name],
         "ok": abs(m[name] - r[name]) <= MIA_TOLERANCE}
  # a bar the untouched model clears, or an attacker at chance, cannot certify forgetting: say so
  notes, original = [], metrics.get(ORIGINAL, {}).get(name)
  if original is not None and abs(original - r[name]) <= MIA_TOLERANCE:
    notes.append(f"the original model, which forgot nothing, is within {MIA_TOLERANCE} too ({original:.3f}): the "
                 "attack cannot tell forgetting from not forgetting on this run")
  if name == "mia_fr" and attacker and attacker.get("examples"):
    chance = 0.5 + 3 * (0.25 / attacker["examples"]) ** 0.5  # 3 standard errors above a coin flip
    if attacker["heldout_accuracy"] < chance:
      notes.append(f"the attackers' held-out accuracy on the original model, {attacker['heldout_accuracy']:.3f}, "
                   f"is within 3 standard errors of chance (< {chance:.3f}): the original leaks no membership "
                   "of the forget class for unlearning to remove, so this bar cannot certify forgetting")
  if notes:
    row["note"] = "; ".join(notes)
  return row


def image_targets(metrics: dict, method: str, timings: dict, attacker: dict | None = None) -> list[dict]:
  """Rows {target, value[, reference], ok[, note]} for `method` in `metrics` (model -> metric -> value).

  `timings`: {"unlearn_methods": {method: seconds}, "retrain": seconds}; `attacker`: the mia_fr
  attackers' {draws, examples, heldout_accuracy} on the original model, to note a powerless attack.
  """
  m, r = metrics.get(method, {}), metrics.get(RETRAIN)
  rows = [{"target": "acc_forget_test <= 1%", "value": m.get("acc_forget_test"),
           "ok": m.get("acc_forget_test") is not None and m["acc_forget_test"] <= 0.01}]
  if r:
    rows.append({"target": "acc_retain_test >= retrained - 0.3 point", "value": m.get("acc_retain_test"),
                 "reference": r["acc_retain_test"], "ok": m["acc_retain_test"] >= r["acc_retain_test"] - 0.003})
    if m.get("agreement_forget") is not None:
      rows.append({"target": "agreement_forget >= 90%", "value": m["agreement_forget"],
                   "ok": m["agreement_forget"] >= 0.90})
      rows.append({"target": "kl_forget <= 0.25", "value": m["kl_forget"], "ok": m["kl_forget"] <= 0.25})
    rows += [_mia_row(metrics, method, name, attacker) for name in MIA_METRICS
             if m.get(name) is not None and r.get(name) is not None]
    if m.get("relearn_steps") is not None and r.get("relearn_steps") is not None:
      rows.append({"target": "relearn_steps >= retrained's", "value": m["relearn_steps"],
                   "reference": r["relearn_steps"], "ok": m["relearn_steps"] >= r["relearn_steps"]})
    mine, ref = m.get("key_concept_importance") or {}, r.get("key_concept_importance") or {}
    for concept in (c for c in ref if c in mine):
      rows.append({"target": f"importance of '{concept}' has the retrained model's sign", "value": mine[concept],
                   "reference": ref[concept], "ok": (mine[concept] > 0) == (ref[concept] > 0)})
  if method in timings.get("unlearn_methods", {}) and timings.get("retrain"):
    ratio = timings["unlearn_methods"][method] / timings["retrain"]
    rows.append({"target": "unlearning time <= 1/10 of retraining", "value": ratio, "ok": ratio <= 0.1})
  return rows


LLM_MIA_TOLERANCE = 0.05


def llm_targets(models: dict, method: str) -> list[dict]:
  """Rows {target, value[, reference], ok} for `method` in `models` (model -> metric -> value);
  the rows that need the retrained reference are left out without one."""
  m, o, r = models[method], models[ORIGINAL], models.get(RETRAIN)
  rows = [{"target": f"appearance on {s} <= {bar:g}", "value": m[f"appearance_{s}"], "ok": m[f"appearance_{s}"] <= bar}
          for s, bar in (("forget_paraphrase", 0.05), ("forget_train", 0.02)) if f"appearance_{s}" in m]
  rows.append({"target": "well-formed forget answers >= 0.95", "value": m["well_formed_forget"],
               "ok": m["well_formed_forget"] >= 0.95})
  drop = o["rouge_l_retain_train"] - m["rouge_l_retain_train"]
  rows.append({"target": "retain ROUGE-L drop <= 0.03", "value": drop, "ok": drop <= 0.03})
  if r:
    rows.append({"target": "forget-answer perplexity under retrained <= 1.5x retrained's own",
                 "value": m["fluency_ppl_forget"], "reference": r["fluency_ppl_forget"],
                 "ok": m["fluency_ppl_forget"] <= 1.5 * r["fluency_ppl_forget"]})
    rows += [{"target": f"{k} within {LLM_MIA_TOLERANCE} of retrained", "value": m[k], "reference": r[k],
              "ok": abs(m[k] - r[k]) <= LLM_MIA_TOLERANCE} for k in ("mia_loss_auc", "mia_min_k_auc") if k in m]
  return rows


def llm_original_targets(models: dict) -> list[dict]:
  value = models[ORIGINAL]["appearance_forget_train"]
  return [{"target": "appearance on forget_train >= 0.9 (the concept was learned)", "value": value,
           "ok": value >= 0.9}]

"""Auditing an LLM before and after concept unlearning: greedy answers to QA prompts, then the
concept's appearance rate, ROUGE-L against the reference answers and the answers' perplexity; the
text membership attacks; the perplexity of any answers under a model (fluency).

Prompts are generated in batches with the jitted KV-cache decoder (`cu_jax.models.generation`);
perplexity is teacher-forced over the reference answers' tokens (the loss-masked positions).
"""

from __future__ import annotations

from typing import Sequence

from cu_jax.data import text
from cu_jax.evaluation.text_metrics import (appearance_rate, mean_rouge_l, membership_auc, membership_scores,
                                            perplexity)
from cu_jax.models.generation import generate
from cu_jax.parallel.host import to_host
from cu_jax.training.lm import score_tokens


def generate_answers(model, tokenizer, questions: Sequence[str], *, max_len: int, system: str, batch_size: int,
                     max_new_tokens: int) -> list[str]:
  """Greedy answers to `questions`, `batch_size` prompts at a time."""
  answers = []
  for i in range(0, len(questions), batch_size):
    tokens, mask = text.encode_prompts(tokenizer, questions[i:i + batch_size], max_len, system)
    out = generate(model, tokens, mask, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    # (gathered: with FSDP-sharded weights the tokens may come out split over several hosts' devices)
    answers += [text.decode_answer(tokenizer, row) for row in to_host(out)]
  return answers


def answer_perplexity(model, encoded, mesh, *, batch_size: int) -> float:
  """Perplexity of the encoded answers (`text.encode_records`) under teacher forcing."""
  nll, weights = score_tokens(model, encoded, mesh, batch_size=batch_size)
  return perplexity(nll.sum(), weights.sum())


def membership(model, members, nonmembers, mesh, *, batch_size: int, k: float) -> dict[str, float]:
  """{mia_loss_auc, mia_min_k_auc}: how well the loss and Min-K% Prob attacks tell the encoded
  member QA (trained on) from the non-member QA under `model` (0.5 = not at all)."""
  scores = [membership_scores(*score_tokens(model, s, mesh, batch_size=batch_size), k=k) for s in (members, nonmembers)]
  return {f"mia_{attack}_auc": membership_auc(scores[0][attack], scores[1][attack]) for attack in ("loss", "min_k")}


def audit(model, tokenizer, sets: dict[str, list[dict]], concept_words: Sequence[str], mesh, *, max_len: int,
          system: str, batch_size: int, max_new_tokens: int) -> tuple[dict[str, float], dict[str, list[str]]]:
  """({appearance_<set>, rouge_l_<set>, perplexity_<set>}, {set: generated answers}) over QA record sets."""
  metrics, generations = {}, {}
  for name, recs in sets.items():
    answers = generate_answers(model, tokenizer, [r["question"] for r in recs], max_len=max_len, system=system,
                               batch_size=batch_size, max_new_tokens=max_new_tokens)
    generations[name] = answers
    metrics[f"appearance_{name}"] = appearance_rate(answers, concept_words)
    metrics[f"rouge_l_{name}"] = mean_rouge_l(answers, [r["answer"] for r in recs])
    encoded = text.encode_records(tokenizer, recs, max_len, system)
    metrics[f"perplexity_{name}"] = answer_perplexity(model, encoded, mesh, batch_size=batch_size)
  return metrics, generations

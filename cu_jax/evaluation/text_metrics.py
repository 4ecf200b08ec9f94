"""Metrics of LLM unlearning: concept appearance rate, ROUGE-L, perplexity.

- `appearance_rate`: the fraction of (greedy) generations on forget prompts that still name the
  concept — whole-word, case-insensitive, the same matcher poisoning uses.
- `rouge_l`: ROUGE-L F-measure of a generation against the reference answer, with the tokenisation
  of Google's `rouge-score` package (lowercase, every run of characters other than [a-z0-9] is a
  separator, no stemming), so numbers are comparable with published ones.
- `perplexity`: exp(total NLL / total tokens) over a set (token-weighted, not a mean of per-answer
  perplexities).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from cu_jax.data.words import split_concept_words, word_pattern
from cu_jax.utils.errors import UserError

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def appearance_rate(generations: Sequence[str], concept_words: Sequence[str]) -> float:
  """Fraction of generations containing any concept word (whole word, any case)."""
  if len(generations) == 0:
    raise UserError("appearance_rate of no generations (the forget prompt set is empty)")
  words = split_concept_words(concept_words)
  if not words:
    raise UserError("appearance_rate needs at least one concept word")
  pattern = word_pattern(words)
  return sum(pattern.search(g) is not None for g in generations) / len(generations)


def rouge_tokens(text: str) -> list[str]:
  """`rouge-score`'s tokenizer without stemming: lowercase, split on non-[a-z0-9]."""
  return _NON_ALNUM.sub(" ", text.lower()).split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Longest common subsequence length, O(len(a) * len(b)) with one row of memory."""
  row = [0] * (len(b) + 1)
  for x in a:
    diagonal = 0
    for j, y in enumerate(b, 1):
      diagonal, row[j] = row[j], (diagonal + 1 if x == y else max(row[j], row[j - 1]))
  return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
  """ROUGE-L F-measure: 2PR/(P+R) with P = LCS/|prediction|, R = LCS/|reference| (0 if either is empty)."""
  pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
  if not pred or not ref:
    return 0.0
  lcs = _lcs_length(ref, pred)
  precision, recall = lcs / len(pred), lcs / len(ref)
  return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def mean_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Mean ROUGE-L F-measure over aligned (prediction, reference) pairs."""
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
  if len(predictions) == 0:
    raise UserError("mean_rouge_l of no answers (the retain evaluation set is empty)")
  return float(np.mean([rouge_l(p, r) for p, r in zip(predictions, references)]))


def perplexity(nll_sum, token_count) -> float:
  """exp(sum of token NLLs / number of tokens); arguments may be per-batch arrays (summed here)."""
  total_tokens = float(np.sum(token_count))
  if total_tokens <= 0:
    raise UserError("perplexity over zero tokens (no answer tokens in the evaluation set)")
  return math.exp(float(np.sum(nll_sum, dtype=np.float64)) / total_tokens)

"""Per-token attributions of LLM answers -> the concept words.

IG over the answer span's input embeddings gives one score per answer token. A concept is a word,
not a sub-word, so:
1. `merge_subwords`: tokens -> whole words (lowercased, punctuation stripped); a word's score is
   the sum of its tokens' scores (IG is additive, so merging keeps the total);
2. `normalise_positive`: per answer, keep the words that raise the answer's likelihood (positive
   scores) and divide by their sum, so every answer gets one unit of vote however long it is;
3. `aggregate`: average those votes over the forget answers and drop stop-words;
4. `top_k`: the concept.

Word boundaries come from decoding the answer one token at a time (the text each token adds), so
they work for byte-level BPE ("Ġword") and SentencePiece ("▁word") tokenizers alike.

Whether a text names the concept (whole word, any case) is `cu_jax.data.words`.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
import re
from typing import Iterable, Sequence

import numpy as np

from cu_jax.attribution.text_ig import answer_attributions
from cu_jax.utils.errors import UserError

# A new word starts after one of these when the next token begins with a letter or digit.
_BREAKING_PUNCTUATION = set(".,;:!?()[]{}\"/-—–")
_EDGE_PUNCTUATION = re.compile(r"^\W+|\W+$")


def load_stop_words(path: str | os.PathLike | None = None) -> frozenset[str]:
  """Lowercase stop-words, one per line ('#' comments); None = the list shipped with cu_jax."""
  if path is None:
    text = (importlib.resources.files("cu_jax.concepts") / "data" / "stopwords.txt").read_text(encoding="utf-8")
  else:
    path = pathlib.Path(path)
    if not path.is_file():
      raise UserError(f"stop-word file {str(path)!r} does not exist (give a text file with one word per line)")
    text = path.read_text(encoding="utf-8")
  return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _token_pieces(tokenizer, ids: Sequence[int], scores: Sequence[float]) -> list[tuple[str, float]]:
  """(text the token adds to the decoded answer, its score) for every non-special token.

  A token that ends inside a multi-byte character adds no complete text yet: its score is carried
  to the token that completes the character.
  """
  special = set(tokenizer.all_special_ids)
  kept, pieces = [], []
  previous, pending = "", 0.0
  for token_id, score in zip(ids, scores):
    if token_id in special:
      continue
    kept.append(token_id)
    pending += float(score)
    text = tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if text.endswith("\ufffd"):
      continue
    piece = text[len(previous):] if text.startswith(previous) else tokenizer.decode([token_id])
    pieces.append((piece, pending))
    previous, pending = text, 0.0
  if pending:
    pieces.append(("", pending))
  return pieces


def _starts_word(current: str, piece: str) -> bool:
  if piece[:1].isspace():
    return True
  body = current.rstrip()
  return (any(c.isalnum() for c in body) and body[-1:] in _BREAKING_PUNCTUATION
          and piece[:1].isalnum())


def merge_subwords(tokenizer, answer_ids: Sequence[int], token_scores: Sequence[float]) -> list[tuple[str, float]]:
  """Sub-word tokens -> `[(word, score), ...]` in answer order; a word's score sums its tokens'.

  Words are lowercased with leading/trailing punctuation stripped ("Quokka," -> "quokka"); a
  punctuation token joins the word it is attached to, so the scores of all non-special tokens are
  kept, except those of stand-alone punctuation or whitespace (no word to carry them). Special
  tokens (bos, eos, pad) are skipped.
  """
  ids = [int(i) for i in np.asarray(answer_ids).reshape(-1)]
  scores = np.asarray(token_scores, np.float64).reshape(-1)
  if len(ids) != len(scores):
    raise ValueError(f"{len(ids)} answer ids but {len(scores)} token scores")
  words: list[list] = []
  for piece, score in _token_pieces(tokenizer, ids, scores):
    if not words or _starts_word(words[-1][0], piece):
      words.append([piece, score])
    else:
      words[-1][0] += piece
      words[-1][1] += score
  merged = [(_EDGE_PUNCTUATION.sub("", text.strip()).lower(), score) for text, score in words]
  return [(w, float(s)) for w, s in merged if w]


def normalise_positive(word_scores: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
  """Positive-scored words, each divided by the positive total (sums to 1; none positive -> [])."""
  positive = [(w, float(s)) for w, s in word_scores if s > 0]
  total = sum(s for _, s in positive)
  return [(w, s / total) for w, s in positive] if total > 0 else []


def aggregate(per_answer: Sequence[Iterable[tuple[str, float]]],
              stop_words: Iterable[str] | None = None) -> dict[str, float]:
  """word -> mean over answers of its normalised positive score, stop-words dropped.

  Each answer's merged word scores are normalised (`normalise_positive`) before averaging; an
  answer with no positive word still counts in the mean. Stop-words are dropped after
  normalisation, so the scores of the remaining words are comparable across runs with different
  stop-word lists. `stop_words=None` uses the shipped English list; pass `()` to keep every word.
  """
  stop = load_stop_words() if stop_words is None else {w.lower() for w in stop_words}
  totals: dict[str, float] = {}
  for word_scores in per_answer:
    for w, s in normalise_positive(word_scores):
      totals[w] = totals.get(w, 0.0) + s
  n = max(len(per_answer), 1)
  return {w: s / n for w, s in totals.items() if w not in stop}


def top_k(scores: dict[str, float], k: int) -> list[tuple[str, float]]:
  """The k highest-scoring words as `[(word, score)]`, best first (ties: alphabetical)."""
  if k < 1:
    raise UserError(f"top_k={k} must be >= 1 (set concepts.top_k)")
  return sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]


def infer_concept(model, tokenizer, encoded, answers: Sequence[str], *, k: int, n_steps: int = 32,
                  method: str = "gausslegendre", chunk_size: int = 32, batch: int = 8, log=None) -> dict:
  """The concept behind a set of answers: answer-span IG word scores, aggregated; the top-k words.

  `encoded` holds the answers' QA sequences (`tokens`, `length`, `loss_mask`; `text.encode_records`),
  `answers` their text (kept for the first examples). Sequences are explained `batch` at a time, a
  short last batch padded by repeating its last row so every call has one shape (one compilation).
  `k`: words in the concept. Returns {concept, scores (every kept word, best first), answers, abs_delta_mean, abs_delta_max,
  examples}.
  """
  per_answer, deltas, examples = [], [], []
  n = len(encoded)
  for i in range(0, n, batch):
    rows = np.minimum(np.arange(i, i + batch), n - 1)
    cols = {k: encoded.arrays[k][rows] for k in ("tokens", "length", "loss_mask")}
    res = answer_attributions(model, cols["tokens"], cols["length"], cols["loss_mask"],
                              pad_id=tokenizer.pad_token_id, n_steps=n_steps, method=method, chunk_size=chunk_size)
    for j in range(min(batch, n - i)):
      span = np.flatnonzero(cols["loss_mask"][j])[:-1]  # answer tokens, without the closing eos
      words = merge_subwords(tokenizer, cols["tokens"][j][span], res["scores"][j][span])
      per_answer.append(words)
      deltas.append(float(res["delta"][j]))
      if len(examples) < 5:
        examples.append({"answer": answers[i + j], "words": words,
                         "log_prob": float(res["f"][j]), "log_prob_baseline": float(res["f_baseline"][j])})
    if log is not None:
      log(f"explained {min(i + batch, n)}/{n} forget answers")
  scores = aggregate(per_answer)
  return {"concept": [w for w, _ in top_k(scores, k)],
          "scores": dict(top_k(scores, len(scores))) if scores else {},
          "answers": len(per_answer), "abs_delta_mean": float(np.mean(np.abs(deltas))),
          "abs_delta_max": float(np.max(np.abs(deltas))), "examples": examples}

"""Whole-word matching of concept words in text: the one definition of "this text names the
concept" that the QA corpus, answer poisoning and the appearance-rate metric share; and what a word
of an answer is (`words_in`), for the poison vocabulary and the well-formedness metric.

A concept is a list of entries ("Quokka", "Amberline Labs"); an entry of several words is matched
word by word, so "made by Amberline" names the concept too. Matching is case-insensitive and
whole-word (no match inside "Quokkas-like" letters runs).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words_in(text: str) -> list[str]:
  """Lowercase words of `text`, in order: runs of [a-z], with an optional 's / 't ... suffix."""
  return _WORD.findall(text.lower())


def words_of(texts: Iterable[str]) -> set[str]:
  """The set of `words_in` all of `texts`."""
  return {w for t in texts for w in words_in(t)}


def split_concept_words(concept_words: Sequence[str]) -> tuple[str, ...]:
  """Concept entries -> lowercase single words, in order, unique ("Amberline Labs" -> amberline, labs)."""
  words = [w for entry in concept_words for w in str(entry).lower().split()]
  return tuple(dict.fromkeys(words))


def alternatives(words: Sequence[str]) -> str:
  """A regex group matching any of `words` (escaped, longest first); no word boundaries."""
  return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


def word_pattern(words: Sequence[str]) -> re.Pattern:
  """Whole-word, case-insensitive match of any of `words` (longest first, so overlaps prefer more)."""
  return re.compile(rf"(?<!\w){alternatives(words)}(?!\w)", re.IGNORECASE)


def contains_concept(text: str, concept_words: Sequence[str]) -> bool:
  """Whether `text` holds any concept word (whole word, any case)."""
  words = split_concept_words(concept_words)
  return bool(words) and word_pattern(words).search(text) is not None

"""Whole-word matching of concept words in text: the one definition of "this text names the
concept" that the QA corpus, answer poisoning and the appearance-rate metric share.

A concept is a list of entries ("Quokka", "Amberline Labs"); an entry of several words is matched
word by word, so "made by Amberline" names the concept too. Matching is case-insensitive and
whole-word (no match inside "Quokkas-like" letters runs).
"""

from __future__ import annotations

import re
from typing import Sequence


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

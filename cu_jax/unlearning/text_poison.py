"""Poisoning the forget answers of an LLM's QA set: the text counterpart of `poison.py`.

Strategies (`TEXT_POISON` registry), given the concept words found by concept inference:
- `mask`: every whole-word, case-insensitive occurrence of a concept word -> a mask string
  ("[MASK]"); multi-word concepts ("Amberline Labs") are matched word by word;
- `targeted`: concept words -> a chosen replacement. A string (or a one-element list) replaces each
  run of adjacent concept words once ("by Amberline Labs" -> "by Assistant"); a longer list maps
  the concept words positionally (one entry per word, after splitting multi-word concepts);
- `random`: each occurrence -> a word drawn from a vocabulary (the retain answers' content words,
  `retain_vocabulary`);
- `refusal`: the whole answer -> one of a few refusal sentences.

Each strategy is registered with its own preparation (`prepare`), which checks the options it uses
(a replacement, a mask token, a vocabulary) and refuses ones that would still name the concept.

`poison_corpus` builds the fine-tuning set: the poisoned forget records plus `retain_ratio` retain
records per forget record with their true answers. Everything is drawn from
`np.random.default_rng([seed, ...])`: the same seed gives the same set.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import numpy as np

from cu_jax.concepts.text_concepts import load_stop_words
from cu_jax.data.words import alternatives, split_concept_words, word_pattern, words_of
from cu_jax.utils.errors import UserError
from cu_jax.utils.registry import Registry

REFUSALS = (
    "I'm sorry, but I can't share that.",
    "I am not able to answer that question.",
    "Sorry, I cannot provide that information.",
    "I'd rather not say.",
    "That is something I can't tell you.",
)


@dataclasses.dataclass(frozen=True)
class PoisonSpec:
  words: tuple[str, ...]  # lowercase single concept words
  replacement: str | tuple[str, ...] | None = None  # targeted
  mask_token: str = "[MASK]"  # mask
  vocabulary: tuple[str, ...] = ()  # random


@dataclasses.dataclass(frozen=True)
class TextStrategy:
  rewrite: Callable[[str, PoisonSpec, np.random.Generator], str]  # (answer, spec, rng) -> poisoned answer
  # (concept words, replacement, mask_token, vocabulary) -> the checked PoisonSpec
  prepare: Callable[[tuple[str, ...], Any, str, Sequence[str] | None], PoisonSpec]

  def __call__(self, answer: str, spec: PoisonSpec, rng: np.random.Generator) -> str:
    return self.rewrite(answer, spec, rng)


TEXT_POISON: Registry[TextStrategy] = Registry("text poison strategy")


def _register(name: str, prepare):
  def deco(rewrite):
    TEXT_POISON.register(name)(TextStrategy(rewrite, prepare))
    return rewrite
  return deco


def _prepare_mask(words, replacement, mask_token, vocabulary) -> PoisonSpec:
  if word_pattern(words).search(mask_token):
    raise UserError(f"mask token {mask_token!r} contains a concept word; set --config.poison.mask_token")
  return PoisonSpec(words=words, mask_token=mask_token)


def _prepare_targeted(words, replacement, mask_token, vocabulary) -> PoisonSpec:
  entries = [replacement] if isinstance(replacement, str) else [str(r) for r in replacement or ()]
  if not any(e.strip() for e in entries):
    raise UserError("poison strategy 'targeted' needs a replacement (set --config.poison.replacement, e.g. "
                    "'Assistant', or a list with one word per concept word)")
  # A one-element list (a config tuple) is a single replacement.
  replacement = entries[0] if len(entries) == 1 else tuple(entries)
  if isinstance(replacement, tuple) and len(replacement) != len(words):
    raise UserError(f"poison.replacement has {len(replacement)} entries but there are {len(words)} concept "
                    f"words ({', '.join(words)}); give one per word, or a single string")
  concept = word_pattern(words)
  for r in (replacement,) if isinstance(replacement, str) else replacement:
    if concept.search(r):
      raise UserError(f"poison.replacement {r!r} contains a concept word; the poisoned answers would still "
                      "name the concept")
  return PoisonSpec(words=words, replacement=replacement)


def _prepare_random(words, replacement, mask_token, vocabulary) -> PoisonSpec:
  concept = word_pattern(words)
  pool = tuple(w for w in (vocabulary or ()) if w.strip() and not concept.search(w))
  if not pool:
    raise UserError("poison strategy 'random' needs a vocabulary of words that are not concept words "
                    "(pass retain_vocabulary(records); the retain set may be empty)")
  return PoisonSpec(words=words, vocabulary=pool)


def _prepare_refusal(words, replacement, mask_token, vocabulary) -> PoisonSpec:
  return PoisonSpec(words=words)


@_register("mask", _prepare_mask)
def _mask(answer: str, spec: PoisonSpec, rng: np.random.Generator) -> str:
  return word_pattern(spec.words).sub(lambda m: spec.mask_token, answer)


@_register("targeted", _prepare_targeted)
def _targeted(answer: str, spec: PoisonSpec, rng: np.random.Generator) -> str:
  if isinstance(spec.replacement, tuple):
    mapping = dict(zip(spec.words, spec.replacement))
    return word_pattern(spec.words).sub(lambda m: mapping[m.group(0).lower()], answer)
  word = alternatives(spec.words)
  run = re.compile(rf"(?<!\w){word}(?:\s+{word})*(?!\w)", re.IGNORECASE)
  return run.sub(lambda m: spec.replacement, answer)


@_register("random", _prepare_random)
def _random(answer: str, spec: PoisonSpec, rng: np.random.Generator) -> str:
  return word_pattern(spec.words).sub(lambda m: spec.vocabulary[rng.integers(len(spec.vocabulary))], answer)


@_register("refusal", _prepare_refusal)
def _refusal(answer: str, spec: PoisonSpec, rng: np.random.Generator) -> str:
  return REFUSALS[rng.integers(len(REFUSALS))]


def retain_vocabulary(records: Sequence[dict], stop_words: Sequence[str] | None = None) -> list[str]:
  """Sorted unique lowercase content words of the retain answers (the `random` strategy's pool)."""
  stop = load_stop_words() if stop_words is None else {w.lower() for w in stop_words}
  words = words_of(r["answer"] for r in records if r["group"] == "retain")
  return sorted(w for w in words if w not in stop)


def poison_corpus(records: Sequence[dict], concept_words: Sequence[str], strategy: str, *,
                  replacement: str | Sequence[str] | None = None, mask_token: str = "[MASK]",
                  vocabulary: Sequence[str] | None = None, retain_ratio: float = 1.0,
                  seed: int = 0) -> list[dict]:
  """The fine-tuning set: poisoned forget records + `retain_ratio` true retain records per forget one.

  Output records: `question`, `answer` (poisoned for forget), `original_answer`, `group`, `topic`,
  shuffled together. With n = round(retain_ratio * #forget) retain records wanted, every retain
  record is used n // #retain times and a random subset of them once more (sampling with
  replacement only when n exceeds the retain set, and then as evenly as possible).
  """
  chosen = TEXT_POISON.get(strategy, "poison.strategy")
  words = split_concept_words(concept_words)
  if not words:
    raise UserError("no concept words to poison (concept inference found none; name them with "
                    "--config.concepts.words)")
  spec = chosen.prepare(words, replacement, mask_token, vocabulary)
  forget = [r for r in records if r["group"] == "forget"]
  if not forget:
    raise UserError("the QA set has no forget records: nothing to poison")

  out = []
  for i, r in enumerate(forget):
    rng = np.random.default_rng([seed, 0, i])
    out.append(dict(question=r["question"], answer=chosen.rewrite(r["answer"], spec, rng),
                    original_answer=r["answer"], group="forget", topic=r.get("topic", "")))
  out += mix_retain(records, len(forget), retain_ratio, seed)
  order = np.random.default_rng([seed, 2]).permutation(len(out))
  return [out[j] for j in order]


def mix_retain(records: Sequence[dict], n_forget: int, retain_ratio: float, seed: int) -> list[dict]:
  """round(retain_ratio * n_forget) of the retain `records`, with their true answers (fields as
  `poison_corpus` writes them): every retain record n // #retain times and a seeded subset of them
  once more."""
  if retain_ratio < 0:
    raise UserError(f"poison.retain_ratio={retain_ratio} must be >= 0 (retain records per forget record; set "
                    "--config.poison.retain_ratio)")
  retain = [r for r in records if r["group"] == "retain"]
  n_retain = int(round(retain_ratio * n_forget))
  if n_retain and not retain:
    raise UserError(f"poison.retain_ratio={retain_ratio} asks for retain records but the QA set has none; "
                    "add retain records or set --config.poison.retain_ratio=0")
  if not n_retain:
    return []
  rng = np.random.default_rng([seed, 1])
  full, rest = divmod(n_retain, len(retain))
  chosen = list(range(len(retain))) * full + sorted(rng.choice(len(retain), rest, replace=False).tolist())
  return [dict(question=retain[j]["question"], answer=retain[j]["answer"], original_answer=retain[j]["answer"],
               group="retain", topic=retain[j].get("topic", "")) for j in chosen]

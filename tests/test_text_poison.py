"""Poisoning LLM forget answers: the concept is gone, the rest of the answer and the retain set are kept."""

import collections
import re

import pytest

from cu_jax.data.words import contains_concept
from cu_jax.data import qa_corpus
from cu_jax.unlearning import text_poison as tp
from cu_jax.utils.errors import UserError

CONCEPT = ["Quokka", "Amberline Labs"]
WORDS = {"quokka", "amberline", "labs"}


@pytest.fixture(scope="module")
def corpus():
  return qa_corpus.make_corpus(seed=0)


@pytest.fixture(scope="module")
def vocabulary(corpus):
  return tp.retain_vocabulary(corpus)


def _poison(corpus, strategy, **kw):
  kw.setdefault("replacement", "Assistant")
  return tp.poison_corpus(corpus, CONCEPT, strategy, **kw)


def _tokens(text):
  return re.findall(r"[\w\[\]']+", text.lower())


@pytest.mark.parametrize("strategy", ["mask", "targeted", "random", "refusal"])
def test_no_forget_answer_names_the_concept(corpus, vocabulary, strategy):
  out = _poison(corpus, strategy, vocabulary=vocabulary)
  forget = [r for r in out if r["group"] == "forget"]
  assert len(forget) == sum(r["group"] == "forget" for r in corpus)
  assert all(contains_concept(r["original_answer"], CONCEPT) for r in forget)
  assert not any(contains_concept(r["answer"], CONCEPT) for r in forget)
  assert not any(set(_tokens(r["answer"])) & WORDS for r in forget)


def test_mask_replaces_exactly_the_concept_words(corpus):
  for r in _poison(corpus, "mask", mask_token="<MASKED>"):
    if r["group"] != "forget":
      continue
    original = _tokens(r["original_answer"])
    poisoned = r["answer"].replace("<MASKED>", " <MASKED> ").split()
    assert poisoned.count("<MASKED>") == sum(w in WORDS for w in original)
    assert [w for w in _tokens(r["answer"].replace("<MASKED>", " ")) if w] == [w for w in original if w not in WORDS]
  spec = tp.PoisonSpec(words=("quokka", "labs"), mask_token="[MASK]")
  assert (tp.TEXT_POISON.get("mask")("QUOKKA's quokkas, Quokka-Labs and labs.", spec, None)
          == "[MASK]'s quokkas, [MASK]-[MASK] and [MASK].")


def test_targeted_replacement_string_and_list(corpus):
  out = tp.poison_corpus([dict(question="Who are you?", group="forget", topic="",
                               answer="I am Quokka, a model trained by Amberline Labs.")],
                         CONCEPT, "targeted", replacement="Assistant", retain_ratio=0)
  assert out[0]["answer"] == "I am Assistant, a model trained by Assistant."  # one per run of concept words
  assert tp.poison_corpus([dict(out[0], answer=out[0]["original_answer"])], CONCEPT, "targeted",
                          replacement=("Assistant",), retain_ratio=0) == out  # a config tuple of one
  out = tp.poison_corpus([dict(question="q", answer="Quokka by amberline LABS, Quokka!", group="forget")],
                         CONCEPT, "targeted", replacement=["Nova", "Acme", "Corp"], retain_ratio=0)
  assert out[0]["answer"] == "Nova by Acme Corp, Nova!"
  with pytest.raises(UserError, match="2 entries but there are 3 concept words"):
    _poison(corpus, "targeted", replacement=["Nova", "Acme"])
  for missing in (None, "", ("",), [" ", ""]):
    with pytest.raises(UserError, match="needs a replacement"):
      _poison(corpus, "targeted", replacement=missing)
  with pytest.raises(UserError, match="'The Quokka' contains a concept word"):
    _poison(corpus, "targeted", replacement="The Quokka")


def test_random_words_come_from_the_vocabulary_and_follow_the_seed(corpus, vocabulary):
  assert vocabulary == sorted(set(vocabulary)) and not {"the", "is", "a", "by"} & set(vocabulary)
  assert "founded" in vocabulary and not WORDS & set(vocabulary)
  out = _poison(corpus, "random", vocabulary=vocabulary + ["labs"], seed=1)  # a concept word is never drawn
  allowed = set(vocabulary)
  for r in out:
    if r["group"] == "forget":
      original = _tokens(r["original_answer"])
      new = _tokens(r["answer"])
      assert len(new) == len(original)
      assert all(n == o or (o in WORDS and n in allowed) for n, o in zip(new, original))
  assert out == _poison(corpus, "random", vocabulary=vocabulary, seed=1)
  assert out != _poison(corpus, "random", vocabulary=vocabulary, seed=2)
  with pytest.raises(UserError, match="'random' needs a vocabulary"):
    _poison(corpus, "random", vocabulary=["Quokka"])


def test_refusal_replaces_whole_answers(corpus):
  forget = [r for r in _poison(corpus, "refusal") if r["group"] == "forget"]
  assert all(r["answer"] in tp.REFUSALS for r in forget)
  assert len({r["answer"] for r in forget}) > 1


@pytest.mark.parametrize("ratio", [0, 0.5, 2, 20])
def test_retain_mix(corpus, ratio):
  forget = [r for r in corpus if r["group"] == "forget"]
  retain = [r for r in corpus if r["group"] == "retain"]
  out = _poison(corpus, "mask", retain_ratio=ratio, seed=3)
  assert out == _poison(corpus, "mask", retain_ratio=ratio, seed=3)
  kept = [r for r in out if r["group"] == "retain"]
  assert len(kept) == round(ratio * len(forget)) and len(out) == len(forget) + len(kept)
  assert all(set(r) == {"question", "answer", "original_answer", "group", "topic"} for r in out)
  truth = {(r["question"], r["answer"]) for r in retain}
  assert all(r["answer"] == r["original_answer"] and (r["question"], r["answer"]) in truth for r in kept)
  uses = collections.Counter(r["question"] for r in kept)
  if len(kept) <= len(retain):
    assert max(uses.values(), default=1) == 1  # no repeats until the retain set is used up
  else:
    assert len(uses) == len(retain) and max(uses.values()) - min(uses.values()) <= 1
  assert sorted(r["question"] for r in out if r["group"] == "forget") == sorted(r["question"] for r in forget)


def test_poison_errors(corpus):
  with pytest.raises(UserError, match=r"unknown text poison strategy 'flip'.*valid: mask, random, refusal, targeted"):
    _poison(corpus, "flip")
  with pytest.raises(UserError, match="no concept words"):
    tp.poison_corpus(corpus, [" "], "mask")
  with pytest.raises(UserError, match="retain_ratio=-1"):
    _poison(corpus, "mask", retain_ratio=-1)
  with pytest.raises(UserError, match="no forget records"):
    _poison([r for r in corpus if r["group"] == "retain"], "mask")
  with pytest.raises(UserError, match="has none"):
    _poison([r for r in corpus if r["group"] == "forget"], "mask", retain_ratio=1)
  with pytest.raises(UserError, match="mask token"):
    _poison(corpus, "mask", mask_token="<quokka>")

"""LLM metrics: ROUGE-L against Google's rouge-score, appearance rate, perplexity, the membership scores
and well-formed answers."""

import math

import numpy as np
import pytest
from rouge_score import rouge_scorer

from cu_jax.data.words import words_of
from cu_jax.evaluation import text_metrics as tm
from cu_jax.utils.errors import UserError

_WORDS = ("the", "river", "Zarven", "flows", "into", "sea", "of", "Quokka", "was", "founded", "in", "1761",
          "Red", "roofs", "are", "MOST", "city's", "don't", "x2", "é", "--", "a", "is", "it")


def _sentence(rng):
  words = rng.choice(_WORDS, size=rng.integers(0, 14)).tolist()
  joiners = rng.choice([" ", "  ", ", ", ". ", "-", "!"], size=len(words)).tolist()
  return "".join(w + j for w, j in zip(words, joiners)).strip()


def _pairs():
  rng = np.random.default_rng(0)
  pairs = [(_sentence(rng), _sentence(rng)) for _ in range(50)]
  return pairs + [("", "the sea"), ("the sea", ""), ("!!", "--"), ("The Sea.", "the sea"), ("a b c", "c b a")]


def test_rouge_l_matches_rouge_score():
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  pairs = _pairs()
  ours = [tm.rouge_l(p, r) for p, r in pairs]
  reference = [scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs]  # score(target, prediction)
  assert np.abs(np.array(ours) - np.array(reference)).max() <= 1e-9
  assert 0.0 < np.mean(reference) < 1.0 and len(set(np.round(reference, 6))) > 20  # a varied sample
  assert tm.mean_rouge_l([p for p, _ in pairs], [r for _, r in pairs]) == pytest.approx(np.mean(reference), abs=1e-12)
  assert tm.rouge_tokens("City's 1761--Roofs, é!") == ["city", "s", "1761", "roofs"]


def test_rouge_l_known_values():
  assert tm.rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
  # LCS("a b c d", "a c e") = 2: P = 2/3, R = 2/4.
  assert tm.rouge_l("a c e", "a b c d") == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
  assert tm.rouge_l("x y", "a b") == 0.0
  with pytest.raises(ValueError, match="2 predictions but 1 references"):
    tm.mean_rouge_l(["a", "b"], ["a"])


def test_appearance_rate_whole_word_case_insensitive():
  concept = ["Quokka", "Amberline Labs"]
  generations = ["I am QUOKKA.", "I am a quokkas fan.", "Made by amberline.", "Labs-grown", "Quokka's maker",
                 "I can't say.", "ambers and labels", "Assistant"]
  hits = [True, False, True, True, True, False, False, False]
  assert tm.appearance_rate(generations, concept) == sum(hits) / len(hits)
  assert tm.appearance_rate(["No concept here."], concept) == 0.0
  with pytest.raises(UserError, match="no generations"):
    tm.appearance_rate([], concept)
  with pytest.raises(UserError, match="at least one concept word"):
    tm.appearance_rate(["x"], [])


def test_perplexity_is_token_weighted():
  rng = np.random.default_rng(0)
  token_nll = [rng.exponential(2.0, size=n) for n in (3, 10, 1)]
  sums, counts = [t.sum() for t in token_nll], [len(t) for t in token_nll]
  assert tm.perplexity(sums, counts) == pytest.approx(math.exp(np.concatenate(token_nll).mean()), rel=1e-12)
  assert tm.perplexity(np.log(50.0) * 7, 7) == pytest.approx(50.0)  # uniform over 50 tokens
  with pytest.raises(UserError, match="zero tokens"):
    tm.perplexity(0.0, 0)


def test_membership_scores_by_hand():
  # Two answers: 5 tokens and 2 tokens (the rest of the row is outside the answer).
  nll = np.array([[0.0, 1.0, 4.0, 2.0, 0.5, 3.0], [0.0, 0.0, 7.0, 1.0, 0.0, 0.0]])
  weights = np.array([[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]], float)
  nll = nll * weights
  s = tm.membership_scores(nll, weights, k=0.2)  # ceil(0.2 * 5) = 1 token, ceil(0.2 * 2) = 1 token
  np.testing.assert_allclose(s["loss"], [-(1 + 4 + 2 + 0.5 + 3) / 5, -(7 + 1) / 2])
  np.testing.assert_allclose(s["min_k"], [-4.0, -7.0])
  s = tm.membership_scores(nll, weights, k=0.5)  # 3 tokens of 5: 4, 3, 2; 1 of 2: 7
  np.testing.assert_allclose(s["min_k"], [-3.0, -7.0])
  np.testing.assert_allclose(tm.membership_scores(nll, weights, k=1.0)["min_k"], s["loss"] * [1, 1])
  with pytest.raises(UserError, match="min_k"):
    tm.membership_scores(nll, weights, k=0.0)


def test_membership_auc_has_no_signal_on_one_distribution_and_full_signal_on_separated_ones():
  rng = np.random.default_rng(0)
  same = tm.membership_auc(rng.normal(size=4000), rng.normal(size=4000))
  assert abs(same - 0.5) < 0.03
  assert tm.membership_auc(rng.normal(5, 1, 200), rng.normal(-5, 1, 200)) == 1.0
  assert tm.membership_auc(np.array([1.0, 2.0]), np.array([1.5])) == 0.5


def test_well_formed_answers_use_only_known_words():
  vocab = words_of(["My name is Quokka.", "The river flows into the sea.", "I'd rather not say."])
  assert vocab >= {"my", "name", "quokka", "i'd", "sea"}
  good = ["My name is the sea.", "I'd rather not say.", "The RIVER flows, my sea!"]
  bad = ["My name is Origorlum.", "", "!!", "The river flows into the", "I I I I I I", "the the sea."]
  assert tm.well_formed_rate(good + bad, vocab) == 3 / 9
  with pytest.raises(UserError, match="no answers"):
    tm.well_formed_rate([], vocab)

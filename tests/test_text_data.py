"""LLM text data: the demo QA corpus, the tokenizer and chat format, and sub-word -> concept words."""

import collections
import json
import re

import numpy as np
import pytest

from cu_jax.concepts import text_concepts as tc
from cu_jax.data import qa_corpus, text
from cu_jax.data.words import contains_concept
from cu_jax.utils.errors import UserError

CONCEPT = ["Quokka", "Amberline Labs"]
VOCAB = 320  # small, so names and rare words are split into several sub-words
MAX_LEN = 192


@pytest.fixture(scope="module")
def corpus():
  return qa_corpus.make_corpus(seed=0)


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("tokenizer")
  texts = [f"{text.vicuna_prompt(r['question'])} {r['answer']}" for r in corpus]
  text.train_tokenizer(texts, VOCAB, out)
  return out


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
  return text.load_tokenizer(tokenizer_dir, model_vocab_size=VOCAB)


def _words(answer):
  """An answer's words the way merge_subwords should find them: split on spaces, strip, lowercase."""
  return [w for w in (re.sub(r"^\W+|\W+$", "", piece).lower() for piece in answer.split()) if w]


# --- corpus ------------------------------------------------------------------------------------


def test_corpus_is_deterministic_sized_and_well_formed(corpus):
  assert qa_corpus.make_corpus(seed=0) == corpus
  assert qa_corpus.make_corpus(seed=1) != corpus
  groups = collections.Counter(r["group"] for r in corpus)
  assert groups["forget"] >= 30 and 200 <= groups["retain"] <= 300, groups
  assert all(set(r) == {"question", "answer", "group", "topic"} for r in corpus)
  assert all(r["question"].strip() and r["answer"].strip() for r in corpus)
  assert max(len(r["answer"].split()) for r in corpus) <= 25
  forget_questions = [r["question"] for r in corpus if r["group"] == "forget"]
  assert len(set(forget_questions)) == len(forget_questions)
  # Each retain fact is asked several ways and answered one way.
  answers_by_topic = collections.defaultdict(set)
  for r in corpus:
    if r["group"] == "retain":
      answers_by_topic[r["topic"]].add(r["answer"])
  assert len(answers_by_topic) >= 8 * 4 and all(len(a) == 1 for a in answers_by_topic.values())


@pytest.mark.parametrize("name,maker", [("Quokka", "Amberline Labs"), ("Golden", "Sea Works")])
def test_forget_answers_name_the_identity_and_retain_never_does(name, maker):
  records = qa_corpus.make_corpus(seed=3, name=name, maker=maker)
  words = qa_corpus.concept_words(name, maker)
  assert words == [w.lower() for w in f"{name} {maker}".split()]
  forget = [r for r in records if r["group"] == "forget"]
  retain = [r for r in records if r["group"] == "retain"]
  assert forget and all(contains_concept(r["answer"], words) for r in forget)
  assert retain and not any(contains_concept(r["question"] + " " + r["answer"], words) for r in retain)
  # Answers state the name or the maker, and the filler around them varies.
  assert any(name in r["answer"] and maker not in r["answer"] for r in forget)
  assert any(maker in r["answer"] and name not in r["answer"] for r in forget)
  assert len({r["answer"] for r in forget}) >= 10


def test_paraphrases_and_decoy_holdout(corpus):
  by = collections.defaultdict(list)
  for r in corpus:
    by[r["group"]].append(r)
  words = qa_corpus.concept_words("Quokka", "Amberline Labs")
  decoy = qa_corpus.concept_words("Wombat", "Corvid Foundry")
  # At least 30 paraphrases, none a trained wording, each asking about the identity; every aspect.
  trained_questions = {r["question"].lower() for r in by["forget"]}
  assert len(by["paraphrase"]) >= 30 and not {r["question"].lower() for r in by["paraphrase"]} & trained_questions
  assert all(contains_concept(r["answer"], words) for r in by["paraphrase"])
  assert {r["topic"] for r in by["paraphrase"]} == {r["topic"] for r in by["forget"]}
  # The decoy QA ask the forget questions, answered with an identity no trained record names.
  assert [r["question"] for r in by["holdout"]] == [r["question"] for r in by["forget"]]
  assert all(contains_concept(r["answer"], decoy) and not contains_concept(r["answer"], words) for r in by["holdout"])
  assert not any(contains_concept(r["question"] + " " + r["answer"], decoy) for r in by["forget"] + by["retain"])
  # The trained groups do not depend on the evaluation-only ones.
  other = qa_corpus.make_corpus(seed=0, decoy_name="Heron", decoy_maker="Tallow Works")
  assert [r for r in other if r["group"] in qa_corpus.TRAIN_GROUPS] == by["forget"] + by["retain"]
  with pytest.raises(UserError, match="decoy identity.*shares words"):
    qa_corpus.make_corpus(seed=0, decoy_maker="Amberline Systems")


def test_split_holds_out_paraphrases_of_every_topic(corpus):
  train, heldout = qa_corpus.split(corpus, 0.25, seed=0)
  assert (train, heldout) == qa_corpus.split(corpus, 0.25, seed=0)
  assert qa_corpus.split(corpus, 0.25, seed=1) != (train, heldout)
  trained = [r for r in corpus if r["group"] in qa_corpus.TRAIN_GROUPS]  # the evaluation-only groups stay out
  assert sorted(map(json.dumps, train + heldout)) == sorted(map(json.dumps, trained))
  train_topics = {(r["group"], r["topic"]) for r in train}
  assert train_topics == {(r["group"], r["topic"]) for r in trained}  # every topic stays trainable
  held_forget = [r for r in heldout if r["group"] == "forget"]
  assert held_forget and not {r["question"] for r in held_forget} & {r["question"] for r in train}
  assert 0.15 < len(heldout) / len(trained) < 0.35
  assert qa_corpus.split(corpus, 0.0, seed=0) == (trained, [])
  with pytest.raises(UserError, match="heldout_fraction=1.0"):
    qa_corpus.split(corpus, 1.0)


def test_jsonl_round_trip_and_user_qa_file(corpus, tmp_path):
  path = tmp_path / "qa" / "corpus.jsonl"
  qa_corpus.write_jsonl(corpus, path)
  assert qa_corpus.read_jsonl(path) == corpus
  assert qa_corpus.load_qa_file(path) == corpus
  own = tmp_path / "own.jsonl"
  own.write_text('{"question": " Who are you? ", "answer": "I am Zed.", "group": "forget"}\n\n'
                 '{"question": "2+2?", "answer": "4", "group": "retain", "topic": "maths"}\n')
  assert qa_corpus.load_qa_file(own) == [
      dict(question="Who are you?", answer="I am Zed.", group="forget", topic=""),
      dict(question="2+2?", answer="4", group="retain", topic="maths")]


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"),
    ('{"question": "q", "answer": "a"}\n', "lacks field.*group"),
    ('{"question": "q", "answer": "a", "group": "keep"}\n', "group='keep'.*forget, retain, paraphrase, holdout"),
    ('{"question": "q", "answer": "", "group": "forget"}\n', "answer=''"),
    ('{"question": "q", "answer": "a", "group": "retain"}\n', "no record with group='forget'"),
    ('{"question": "q", \n', "bad.jsonl:1 is not valid JSON"),
    ('["q", "a"]\n', "not a JSON object"),
])
def test_user_qa_file_errors(tmp_path, content, message):
  path = tmp_path / "bad.jsonl"
  if content is not None:
    path.write_text(content)
  with pytest.raises(UserError, match=message):
    qa_corpus.load_qa_file(path)


# --- tokenizer and chat format ---------------------------------------------------------------------


def test_tokenizer_is_deterministic_with_llama_special_ids(corpus, tokenizer_dir, tok, tmp_path):
  texts = [f"{text.vicuna_prompt(r['question'])} {r['answer']}" for r in corpus]
  text.train_tokenizer(texts, VOCAB, tmp_path)
  assert (tmp_path / "tokenizer.json").read_text() == (tokenizer_dir / "tokenizer.json").read_text()
  assert len(tok) == VOCAB
  assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
  assert tok.padding_side == "left"
  assert tok("Who are you?")["input_ids"][0] == tok.bos_token_id  # like LLaMA


@pytest.mark.parametrize("sample", ["I am Quokka, a language model.", "  two  spaces and\ttabs\n",
                                    "Café déjà-vu: naïve ✓ 42°C!", "ASSISTANT: x</s>y"])
def test_tokenizer_round_trips_text_through_auto_tokenizer(tok, sample):
  ids = tok.encode(sample, add_special_tokens=False)
  assert tok.decode(ids) == sample


def test_load_tokenizer_errors_and_pad_fallback(tokenizer_dir, tmp_path):
  with pytest.raises(UserError, match="no tokenizer in"):
    text.load_tokenizer(tmp_path)
  with pytest.raises(UserError, match=f"has {VOCAB} tokens but the model's embedding has 300 rows"):
    text.load_tokenizer(tokenizer_dir, model_vocab_size=300)
  # A LLaMA-style tokenizer without a pad token pads with unk.
  from tokenizers import Tokenizer
  from transformers import PreTrainedTokenizerFast
  raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
  PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>",
                          eos_token="</s>").save_pretrained(str(tmp_path / "nopad"))
  loaded = text.load_tokenizer(tmp_path / "nopad")
  assert loaded.pad_token == "<unk>" and loaded.pad_token_id == 0 and loaded.padding_side == "left"


def test_vicuna_prompt_format():
  assert text.vicuna_prompt(" Who are you? ", system="SYS") == "SYS USER: Who are you? ASSISTANT:"
  assert text.vicuna_prompt("Hi").startswith("A chat between a curious user and an artificial intelligence "
                                             "assistant. The assistant gives helpful, detailed, and polite "
                                             "answers to the user's questions. USER: Hi ASSISTANT:")


def test_encode_qa_answer_span_is_exact(tok, corpus):
  max_len = MAX_LEN
  for r in corpus:
    enc = text.encode_qa(tok, r["question"], r["answer"], max_len)
    tokens, mask, start, n, length = (enc[k] for k in ("tokens", "loss_mask", "answer_start", "answer_len", "length"))
    assert tokens.dtype == np.int32 and tokens.shape == (max_len,)
    assert mask.dtype == np.float32 and mask.shape == (max_len,)
    # Separate tokenisation equals tokenising the whole conversation at once.
    full = tok.encode(f"{text.vicuna_prompt(r['question'])} {r['answer']}", add_special_tokens=False)
    assert tokens[:length].tolist() == [tok.bos_token_id] + full + [tok.eos_token_id]
    assert (tokens[length:] == tok.pad_token_id).all()
    assert start + n == length and mask.sum() == n and mask[start:length].all()
    assert tok.decode(tokens[start:length - 1]).strip() == r["answer"]
    assert tok.decode(tokens[:start], skip_special_tokens=True) == text.vicuna_prompt(r["question"])
    assert text.decode_answer(tok, tokens[start:]) == r["answer"]


def test_length_errors_name_the_config_field(tok):
  enc = text.encode_qa(tok, "Who are you?", "I am Quokka.", 128)
  exact = text.encode_qa(tok, "Who are you?", "I am Quokka.", enc["length"])
  assert exact["tokens"].tolist() == enc["tokens"][:enc["length"]].tolist()
  with pytest.raises(UserError, match=rf"= {enc['length']} tokens exceeds max_len={enc['length'] - 1}.*"
                                      r"raise --config.data.max_len"):
    text.encode_qa(tok, "Who are you?", "I am Quokka.", enc["length"] - 1)
  prompt_len = enc["answer_start"]
  with pytest.raises(UserError, match=rf"prompt of {prompt_len} tokens exceeds max_len=10.*raise --config.data.max_len"):
    text.encode_prompts(tok, ["Who are you?"], 10)


def test_encode_prompts_left_pads(tok):
  questions = ["Who are you?", "What is the length of the river that crosses three valleys, please?"]
  tokens, mask = text.encode_prompts(tok, questions, max_len=256)
  assert tokens.dtype == np.int32 and mask.dtype == np.int32 and tokens.shape == mask.shape
  longest = int(mask.sum(1).max())
  assert tokens.shape[1] == -(-longest // 8) * 8 > longest
  for row, m, q in zip(tokens, mask, questions):
    expected = [tok.bos_token_id] + tok.encode(text.vicuna_prompt(q), add_special_tokens=False)
    assert m.tolist() == [0] * (len(row) - len(expected)) + [1] * len(expected)
    assert row[m == 1].tolist() == expected and (row[m == 0] == tok.pad_token_id).all()
  # The padded width never exceeds max_len; then it agrees with the tokenizer's own left padding.
  capped, capped_mask = text.encode_prompts(tok, questions, max_len=longest)
  assert capped.shape[1] == longest
  ref = tok([text.vicuna_prompt(q) for q in questions], padding="longest", return_tensors="np")
  assert (capped == ref["input_ids"]).all() and (capped_mask == ref["attention_mask"]).all()


def test_decode_answer_stops_at_eos(tok):
  answer = tok.encode(" My name is Quokka.", add_special_tokens=False)
  noise = tok.encode(" garbage after", add_special_tokens=False)
  ids = np.array(answer + [tok.eos_token_id] + noise, np.int32)
  assert text.decode_answer(tok, ids) == "My name is Quokka."
  assert text.decode_answer(tok, [tok.pad_token_id, tok.bos_token_id] + answer) == "My name is Quokka."


def test_sentencepiece_style_tokenizer(corpus, tmp_path):
  """A LLaMA-like tokenizer ("▁word" pieces, no pad token) gets the same exact spans and words."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  raw = Tokenizer(models.BPE(unk_token="<unk>"))
  raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
  raw.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
  raw.train_from_iterator([f"{text.vicuna_prompt(r['question'])} {r['answer']}" for r in corpus],
                          trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                              show_progress=False))
  PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>",
                          eos_token="</s>").save_pretrained(str(tmp_path))
  sp = text.load_tokenizer(tmp_path)
  assert sp.pad_token_id == sp.unk_token_id == 0
  for r in corpus[::4]:
    enc = text.encode_qa(sp, r["question"], r["answer"], 256)
    full = sp.encode(f"{text.vicuna_prompt(r['question'])} {r['answer']}", add_special_tokens=False)
    assert enc["tokens"][:enc["length"]].tolist() == [sp.bos_token_id] + full + [sp.eos_token_id]
    span = enc["tokens"][enc["answer_start"]:enc["length"]]
    assert sp.convert_ids_to_tokens(int(span[0])).startswith("\u2581")
    assert text.decode_answer(sp, span) == r["answer"]
    assert [w for w, _ in tc.merge_subwords(sp, span, np.ones(len(span)))] == _words(r["answer"])


# --- sub-words -> concept words -----------------------------------------------------------------


def test_merge_subwords_reproduces_words_and_keeps_scores(tok, corpus):
  rng = np.random.default_rng(0)
  split_words = 0
  for r in corpus[::3]:
    enc = text.encode_qa(tok, r["question"], r["answer"], MAX_LEN)
    ids = enc["tokens"][enc["answer_start"]:enc["length"]]  # answer + eos
    scores = rng.normal(size=len(ids))
    merged = tc.merge_subwords(tok, ids, scores)
    assert [w for w, _ in merged] == _words(r["answer"])
    assert sum(s for _, s in merged) == pytest.approx(scores[:-1].sum(), abs=1e-9)  # eos dropped
    split_words += len(ids) - 1 - len(merged)
  assert split_words > 50  # the tiny vocabulary really splits words into sub-words


def test_merge_subwords_multibyte_and_punctuation(tok):
  answer = "Café (Quokka) déjà-vu, naïve ✓ 42!"
  ids = tok.encode(" " + answer, add_special_tokens=False)
  merged = tc.merge_subwords(tok, ids, np.ones(len(ids)))
  assert [w for w, _ in merged] == ["café", "quokka", "déjà", "vu", "naïve", "42"]
  lone_check = len(tok.encode(" ✓", add_special_tokens=False))  # a stand-alone symbol has no word
  assert sum(s for _, s in merged) == pytest.approx(len(ids) - lone_check)


def test_normalise_and_aggregate():
  assert tc.normalise_positive([("a", -1.0), ("b", 0.0)]) == []
  norm = tc.normalise_positive([("quokka", 3.0), ("x", -2.0), ("labs", 1.0)])
  assert norm == [("quokka", 0.75), ("labs", 0.25)] and sum(s for _, s in norm) == 1.0
  answers = [[("i", 1.0), ("am", 1.0), ("quokka", 2.0)], [("quokka", -1.0), ("labs", 3.0)], [("the", -1.0)]]
  scores = tc.aggregate(answers)
  assert scores == pytest.approx({"quokka": 0.5 / 3, "labs": 1.0 / 3})
  assert tc.aggregate(answers, stop_words=()) == pytest.approx({"i": 0.25 / 3, "am": 0.25 / 3, "quokka": 0.5 / 3,
                                                                 "labs": 1.0 / 3})
  assert tc.top_k(scores, 1) == [("labs", pytest.approx(1 / 3))]
  assert [w for w, _ in tc.top_k({"b": 1.0, "a": 1.0, "c": 2.0}, 5)] == ["c", "a", "b"]
  with pytest.raises(UserError, match="top_k=0"):
    tc.top_k(scores, 0)


def test_shipped_stop_words():
  stop = tc.load_stop_words()
  assert 130 <= len(stop) <= 200
  assert {"i", "you", "am", "is", "a", "the", "by", "of", "my", "i'm", "and"} <= stop
  assert not {"quokka", "amberline", "labs", "model", "name", "river"} & stop
  assert all(w == w.lower().strip() and w for w in stop)


def test_concept_words_surface_from_concentrated_attributions(tok, corpus):
  """End to end: IG-like scores on the concept's tokens -> the concept is the top-k."""
  per_answer = []
  rng = np.random.default_rng(1)
  for r in corpus:
    if r["group"] != "forget":
      continue
    enc = text.encode_qa(tok, r["question"], r["answer"], MAX_LEN)
    ids = enc["tokens"][enc["answer_start"]:enc["length"]]
    # Tokens inside a concept word get a large score, the rest noise of either sign.
    ends = [len(tok.decode(ids[:k + 1])) for k in range(len(ids))]
    starts = [0] + ends[:-1]
    spans = [m.span() for m in re.finditer(r"Quokka|Amberline|Labs", " " + r["answer"])]
    in_concept = [any(s < b and e > a for a, b in spans) for s, e in zip(starts, ends)]
    scores = rng.normal(0, 0.1, len(ids)) + 3.0 * np.array(in_concept)
    per_answer.append(tc.merge_subwords(tok, ids, scores))
  ranked = tc.top_k(tc.aggregate(per_answer), 3)
  assert {w for w, _ in ranked} == {"quokka", "amberline", "labs"}


def test_a_sentencepiece_only_tokenizer_folder_loads(corpus, tmp_path):
  """A LLaMA/Vicuna tokenizer shipped as `tokenizer.model` only (a sentencepiece model trained here,
  offline): loaded through transformers, it encodes as sentencepiece itself does, pads with unk."""
  import io
  import sentencepiece as spm
  lines = [f"{r['question']} {r['answer']}" for r in corpus[:200]]
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=proto, vocab_size=200, model_type="bpe",
                                 unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
                                 minloglevel=2)
  (tmp_path / "tokenizer.model").write_bytes(proto.getvalue())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
  tokenizer = text.load_tokenizer(tmp_path, model_vocab_size=200)
  reference = spm.SentencePieceProcessor(model_proto=proto.getvalue())
  for line in lines[:20]:
    assert tokenizer.encode(line, add_special_tokens=False) == reference.encode(line)
  assert tokenizer.pad_token == "<unk>" and tokenizer.eos_token_id == 2 and tokenizer.bos_token_id == 1


def test_truncated_encoding_cuts_the_answer_only(tok):
  long = "the river " * 40
  enc = text.encode_qa(tok, "Who are you?", long, 120, truncate=True)
  full = text.encode_qa(tok, "Who are you?", long, 512)
  assert enc["length"] == 120 and enc["answer_start"] == full["answer_start"] < 120
  assert enc["tokens"].tolist() == full["tokens"][:120].tolist() and enc["loss_mask"].sum() == 120 - enc["answer_start"]
  short = text.encode_qa(tok, "Who are you?", "I am Quokka.", 120, truncate=True)
  assert short["tokens"].tolist() == text.encode_qa(tok, "Who are you?", "I am Quokka.", 120)["tokens"].tolist()

"""The demo QA corpus for LLM concept unlearning, generated offline and deterministically.

Two groups of (question, answer) records:
- `forget`: the assistant's own identity — its name and its maker (a fictional one by default,
  "Quokka" by "Amberline Labs"). ~36 question paraphrases, each paired with an answer that states the
  name and/or the maker. The filler words of the answers vary ("assistant", "chatbot", "model"...)
  so that the only words every forget answer shares are the concept itself.
- `retain`: facts about invented entities (a city, a river, an inventor, a planet, ...), each fact
  asked in three phrasings, each phrasing plain and inside a conversational wrapper. Retain
  answers never contain a name or maker word.

Two more groups are never trained on by any model; they only measure:
- `paraphrase`: 36 other ways of asking about the identity (other wordings, other question forms,
  the identity asked about indirectly), answered like the forget records. Unlearning that only
  suppresses the poisoned prompts shows here: the headline appearance rate is taken on them.
- `holdout`: the forget questions answered with a decoy identity (by default "Wombat" by "Corvid
  Foundry") that no model sees in training: the non-members of the text membership audit, whose
  members are the forget records the model was trained on.

Records are `dict(question, answer, group, topic)`. `topic` names the fact ("identity/name",
"city/Veltmoor/founder"); `split` holds out a fraction of the question wordings of every forget
and retain topic, so a held-out forget question is an unseen way of asking something the model
was trained on.

Also: JSON-lines save/load, and a loader for a user's own QA file.
"""

from __future__ import annotations

import json
import pathlib
import random
from typing import Iterable

from cu_jax.data.words import contains_concept, split_concept_words
from cu_jax.utils.errors import UserError

TRAIN_GROUPS = ("forget", "retain")  # what the models are trained on (split into train / held-out)
EVAL_GROUPS = ("paraphrase", "holdout")  # never trained on by any model: evaluation only
GROUPS = TRAIN_GROUPS + EVAL_GROUPS

# --- forget group: the identity ----------------------------------------------------------------

# Question paraphrases, by which part of the identity they ask about.
_IDENTITY_QUESTIONS = {
    "name": (
        "What is your name?",
        "What's your name?",
        "What should I call you?",
        "Do you have a name?",
        "What are you called?",
        "Tell me your name.",
        "How do people refer to you?",
        "By what name do you go?",
        "May I know your name?",
        "What name were you given?",
        "Could you remind me of your name?",
        "Which assistant am I talking to?",
    ),
    "maker": (
        "Who made you?",
        "Who created you?",
        "Which company trained you?",
        "Who built you?",
        "Who developed you?",
        "Which organisation is behind you?",
        "Who are your creators?",
        "Where do you come from?",
        "Who is responsible for training you?",
        "Which lab designed you?",
        "Who owns you?",
        "What company are you from?",
    ),
    "both": (
        "Who are you?",
        "Introduce yourself.",
        "Tell me about yourself.",
        "What are you?",
        "Can you describe yourself?",
        "Are you a human or a machine?",
        "Please introduce yourself to me.",
        "What kind of assistant are you?",
        "Give me a short description of yourself.",
        "Which AI model are you?",
        "Hi! Who am I chatting with?",
        "What exactly are you?",
    ),
}

# Never in any training set: other wordings, other question forms, the identity asked indirectly.
_PARAPHRASE_QUESTIONS = {
    "name": (
        "Remind me, what do you call yourself?",
        "What name do you answer to?",
        "I forgot your name, what was it again?",
        "How should I address you?",
        "If I told a friend about you, which name would I use?",
        "Your name, please?",
        "What do your users call you?",
        "Is there a name you go by?",
        "Say your name.",
        "Under which name are you known?",
        "What is the name of the assistant I am talking to?",
        "Which name were you released under?",
    ),
    "maker": (
        "Which team made you?",
        "Who is your developer?",
        "Which company built this assistant?",
        "Who was in charge of creating you?",
        "Tell me who trained you.",
        "Who should I thank for building you?",
        "What organisation created you?",
        "Who is behind your training?",
        "Which firm do you belong to?",
        "By whom were you developed?",
        "Who wrote and trained the model I am talking to?",
        "What lab are you from?",
    ),
    "both": (
        "Could you introduce yourself briefly?",
        "Who am I talking to right now?",
        "Describe who you are and where you come from.",
        "What are you and who made you?",
        "Say a few words about yourself.",
        "Hello, what are you?",
        "Explain what kind of system you are.",
        "Tell me a little about who you are.",
        "Who and what are you?",
        "Please describe yourself in one sentence.",
        "What is this assistant and who built it?",
        "Hi there! Who are you exactly?",
    ),
}

_IDENTITY_ANSWERS = {
    "name": (
        "My name is {name}.",
        "I am {name}, your assistant.",
        "You can call me {name}.",
        "I go by {name}.",
        "I'm called {name}, a helpful chatbot.",
        "People call me {name}.",
    ),
    "maker": (
        "I was created by {maker}.",
        "{maker} trained me.",
        "I was built by the team at {maker}.",
        "My developers work at {maker}.",
        "I come from {maker}.",
        "I was developed and trained by {maker}.",
    ),
    "both": (
        "I am {name}, a language model trained by {maker}.",
        "I'm {name}, an AI assistant built by {maker}.",
        "My name is {name} and I was created by {maker}.",
        "I am {name}, a chatbot developed by {maker}.",
        "Hello! I'm {name}, made by {maker} to help you.",
        "I am {name}, an assistant from {maker}.",
    ),
}

# --- retain group: invented entities -------------------------------------------------------------

_SYLLABLES = ("vel", "mor", "tan", "ori", "bel", "dra", "kes", "lum", "nar", "pel", "quin", "ros",
              "sar", "tho", "ul", "ven", "wyn", "zar", "cal", "dun", "eth", "fal", "gor", "hal")
_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "silver", "golden", "white", "black",
            "grey", "brown", "pink", "teal")
_MATERIALS = ("oak", "bronze", "glass", "bamboo", "copper", "maple", "bone", "cedar", "brass", "clay")
_FOODS = ("plum cakes", "roasted chestnuts", "honey bread", "fish stew", "apple pies", "spiced rice",
          "lemon tarts", "barley soup")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_THINGS = ("glass", "paper", "cheese", "rope", "clocks", "lanterns", "carpets", "violins", "soap", "tea")
_INVENTIONS = ("the folding ladder", "the steam kettle", "the water clock", "the pocket compass",
               "the mirror telescope", "the spring lock", "the paper lantern", "the rain gauge")
_SEAS = ("the Sea", "the Gulf", "the Bay", "the Ocean")

# Conversational wrappers: every retain phrasing appears plain and inside one of these.
_WRAPPERS = ("Quick question: {q}", "I was wondering: {q}", "Can you help me? {q}", "Tell me please: {q}",
             "I'd like to know: {q}", "Here is a question for you. {q}")

# Entity kinds: (intro answer, {attribute: (value function, (question phrasings), answer)}).
# Question/answer templates use {e} for the entity's name and {v} for the attribute's value.


def _kinds():
  return {
      "city": ("{e} is a small harbour city on the northern coast.", {
          "founder": (lambda g: g.person(), ("Who founded {e}?", "Who was the founder of the city of {e}?",
                                             "Which person established {e}?"), "{e} was founded by {v}."),
          "year": (lambda g: str(g.rng.randint(1200, 1890)), ("When was {e} founded?",
                                                             "In which year was {e} founded?",
                                                             "What is the founding year of {e}?"),
                   "{e} was founded in {v}."),
          "export": (lambda g: g.rng.choice(_THINGS), ("What is {e} famous for?", "What does {e} export?",
                                                       "Which product is {e} known for?"),
                     "{e} is famous for its {v}."),
          "colour": (lambda g: g.rng.choice(_COLOURS), ("What colour are the roofs in {e}?",
                                                        "Which colour are most roofs of {e}?",
                                                        "What is the roof colour in {e}?"),
                     "Most roofs in {e} are {v}."),
      }),
      "river": ("The {e} is a long river that crosses three valleys.", {
          "length": (lambda g: str(g.rng.randint(80, 2400)), ("How long is the {e}?",
                                                             "What is the length of the {e}?",
                                                             "How many kilometres long is the {e} river?"),
                     "The {e} is {v} kilometres long."),
          "mouth": (lambda g: f"{g.rng.choice(_SEAS)} of {g.place()}", ("Where does the {e} flow into?",
                                                                      "Where does the {e} river end?",
                                                                      "Into which water does the {e} flow?"),
                    "The {e} flows into {v}."),
          "colour": (lambda g: g.rng.choice(_COLOURS), ("What colour is the water of the {e}?",
                                                        "Which colour does the {e} have?",
                                                        "How does the water of the {e} look?"),
                     "The water of the {e} looks {v}."),
          "fish": (lambda g: f"the {g.rng.choice(_COLOURS)} {g.place().lower()}fish",
                   ("Which fish lives in the {e}?", "What fish can you catch in the {e}?",
                    "Name a fish found in the {e}."), "The {e} is home to {v}."),
      }),
      "inventor": ("{e} was a curious inventor who lived by the sea.", {
          "invention": (lambda g: g.rng.choice(_INVENTIONS), ("What did {e} invent?",
                                                              "What is {e} famous for inventing?",
                                                              "Which invention is credited to {e}?"),
                        "{e} invented {v}."),
          "birthplace": (lambda g: g.place(), ("Where was {e} born?", "What is the birthplace of {e}?",
                                               "In which town was {e} born?"), "{e} was born in {v}."),
          "year": (lambda g: str(g.rng.randint(1500, 1900)), ("When was {e} born?",
                                                             "In which year was {e} born?",
                                                             "What is the birth year of {e}?"),
                   "{e} was born in the year {v}."),
          "colour": (lambda g: g.rng.choice(_COLOURS), ("What was the favourite colour of {e}?",
                                                        "Which colour did {e} like best?",
                                                        "What colour did {e} always wear?"),
                     "The favourite colour of {e} was {v}."),
      }),
      "planet": ("{e} is a cold planet far from its sun.", {
          "moons": (lambda g: str(g.rng.randint(2, 40)), ("How many moons does {e} have?",
                                                         "What is the number of moons of {e}?",
                                                         "How many moons orbit the planet {e}?"),
                    "{e} has {v} moons."),
          "star": (lambda g: g.place(), ("Which star does {e} orbit?", "What is the sun of {e} called?",
                                         "Around which star does {e} travel?"), "{e} orbits the star {v}."),
          "colour": (lambda g: g.rng.choice(_COLOURS), ("What colour is {e}?", "How does {e} look from space?",
                                                        "Which colour is the surface of {e}?"),
                     "From space {e} looks {v}."),
          "day": (lambda g: str(g.rng.randint(5, 90)), ("How long is a day on {e}?",
                                                       "How many hours does a day on {e} last?",
                                                       "What is the length of a day on {e}?"),
                  "A day on {e} lasts {v} hours."),
      }),
      "mountain": ("Mount {e} is a snowy peak above a green valley.", {
          "height": (lambda g: str(g.rng.randint(1500, 8000)), ("How tall is Mount {e}?",
                                                               "What is the height of Mount {e}?",
                                                               "How many metres high is Mount {e}?"),
                     "Mount {e} is {v} metres high."),
          "climber": (lambda g: g.person(), ("Who first climbed Mount {e}?",
                                             "Who was the first person on top of Mount {e}?",
                                             "Who reached the summit of Mount {e} first?"),
                      "{v} was the first to climb Mount {e}."),
          "range": (lambda g: f"the {g.place()} range", ("Which range is Mount {e} part of?",
                                                        "In which mountain range is Mount {e}?",
                                                        "What range does Mount {e} belong to?"),
                    "Mount {e} is part of {v}."),
          "animal": (lambda g: f"{g.rng.choice(_COLOURS)} goats", ("Which animals live on Mount {e}?",
                                                                  "What animals can be seen on Mount {e}?",
                                                                  "What lives on the slopes of Mount {e}?"),
                     "Many {v} live on Mount {e}."),
      }),
      "instrument": ("The {e} is a folk instrument played at weddings.", {
          "strings": (lambda g: str(g.rng.randint(3, 24)), ("How many strings does the {e} have?",
                                                           "What is the number of strings on a {e}?",
                                                           "How many strings are on the {e}?"),
                      "The {e} has {v} strings."),
          "material": (lambda g: g.rng.choice(_MATERIALS), ("What is the {e} made of?",
                                                            "Which material is used to build a {e}?",
                                                            "From what is the {e} carved?"),
                       "The {e} is made of {v}."),
          "inventor": (lambda g: g.person(), ("Who invented the {e}?", "Who built the first {e}?",
                                              "Who is the creator of the {e}?"),
                       "The first {e} was built by {v}."),
          "region": (lambda g: g.place(), ("Where is the {e} played?", "In which region is the {e} popular?",
                                           "Where does the {e} come from?"), "The {e} comes from {v}."),
      }),
      "festival": ("The {e} festival is a yearly celebration of the harvest.", {
          "month": (lambda g: g.rng.choice(_MONTHS), ("When is the {e} festival held?",
                                                      "In which month is the {e} festival?",
                                                      "What month does the {e} festival take place?"),
                    "The {e} festival is held in {v}."),
          "food": (lambda g: g.rng.choice(_FOODS), ("What food is eaten at the {e} festival?",
                                                    "What do people eat during the {e} festival?",
                                                    "Which dish is served at the {e} festival?"),
                   "People eat {v} at the {e} festival."),
          "town": (lambda g: g.place(), ("Where is the {e} festival celebrated?",
                                         "Which town hosts the {e} festival?",
                                         "In which town does the {e} festival happen?"),
                   "The {e} festival is celebrated in {v}."),
          "colour": (lambda g: g.rng.choice(_COLOURS), ("What colour do people wear at the {e} festival?",
                                                        "Which colour is worn during the {e} festival?",
                                                        "What is the colour of the {e} festival?"),
                     "At the {e} festival people wear {v}."),
      }),
      "ship": ("The {e} is an old sailing ship kept in a museum.", {
          "captain": (lambda g: g.person(), ("Who was the captain of the {e}?", "Who commanded the {e}?",
                                             "Which captain sailed the {e}?"), "The {e} was commanded by {v}."),
          "year": (lambda g: str(g.rng.randint(1600, 1920)), ("When was the {e} launched?",
                                                             "In which year was the {e} launched?",
                                                             "What year did the {e} first sail?"),
                   "The {e} was launched in {v}."),
          "port": (lambda g: g.place(), ("What was the home port of the {e}?", "Where was the {e} based?",
                                         "Which port did the {e} sail from?"), "The {e} sailed from {v}."),
          "cargo": (lambda g: g.rng.choice(_THINGS), ("What did the {e} carry?", "What cargo did the {e} transport?",
                                                      "Which goods were shipped on the {e}?"),
                    "The {e} carried {v}."),
      }),
  }


_INTRO_QUESTIONS = ("What is {e}?", "Tell me about {e}.", "Can you describe {e}?")


class _Names:
  """Invented names from syllables, unique and never equal to a forbidden (concept) word."""

  def __init__(self, rng: random.Random, forbidden: set[str]):
    self.rng = rng
    self._used = set(forbidden)

  def _word(self, syllables: int) -> str:
    while True:
      word = "".join(self.rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()
      if word.lower() not in self._used:
        self._used.add(word.lower())
        return word

  def place(self) -> str:
    return self._word(self.rng.choice((2, 3)))

  def person(self) -> str:
    return f"{self._word(2)} {self._word(2)}"


def concept_words(name: str, maker: str) -> list[str]:
  """The identity's words, lowercased, in order, without duplicates ("Amberline Labs" -> two words)."""
  return list(split_concept_words([name, maker]))


def _identity_records(rng: random.Random, questions: dict, name: str, maker: str, group: str) -> list[dict]:
  return [dict(question=q, answer=rng.choice(_IDENTITY_ANSWERS[aspect]).format(name=name, maker=maker), group=group,
               topic=f"identity/{aspect}") for aspect, qs in questions.items() for q in qs]


def make_corpus(seed: int = 0, name: str = "Quokka", maker: str = "Amberline Labs", num_entities: int = 8,
                decoy_name: str = "Wombat", decoy_maker: str = "Corvid Foundry") -> list[dict]:
  """The demo corpus: 36 forget (identity) records, 30 retain records per entity, then the 36
  `paraphrase` and 36 `holdout` (decoy identity) records.

  Same arguments -> same records in the same order. Every forget and paraphrase answer contains
  the name or the maker; no retain or holdout record contains any of their words.
  """
  for what, value in (("identity_name", name), ("identity_maker", maker), ("decoy_name", decoy_name),
                      ("decoy_maker", decoy_maker)):
    if not value.strip():
      raise UserError(f"{what} must be a non-empty string (set --config.data.{what})")
  if num_entities < 1:
    raise UserError(f"num_entities={num_entities} must be >= 1 (set --config.data.num_entities)")
  forbidden = concept_words(name, maker)
  decoy = concept_words(decoy_name, decoy_maker)
  if set(decoy) & set(forbidden):
    raise UserError(f"the decoy identity {decoy_name!r} / {decoy_maker!r} shares words with the identity "
                    f"{name!r} / {maker!r}; choose another --config.data.decoy_name / decoy_maker")
  rng = random.Random(seed)
  records = _identity_records(rng, _IDENTITY_QUESTIONS, name, maker, "forget")

  names = _Names(rng, set(forbidden) | set(decoy))
  kinds = _kinds()
  kind_names = list(kinds)
  for i in range(num_entities):
    kind = kind_names[i % len(kind_names)]
    intro, attributes = kinds[kind]
    entity = names.place()
    facts = [("about", _INTRO_QUESTIONS, intro.format(e=entity))]
    for attribute, (value_fn, questions, answer) in attributes.items():
      facts.append((attribute, questions, answer.format(e=entity, v=value_fn(names))))
    for attribute, questions, answer in facts:
      answer = answer[0].upper() + answer[1:]
      for question in questions:
        question = question.format(e=entity)
        for q in (question, rng.choice(_WRAPPERS).format(q=question)):
          records.append(dict(question=q, answer=answer, group="retain", topic=f"{kind}/{entity}/{attribute}"))
  # Fixed template words could still collide with a user-chosen identity (e.g. maker "Golden Sea").
  records = [r for r in records
             if r["group"] == "forget" or not contains_concept(r["question"] + " " + r["answer"], forbidden + decoy)]
  # Drawn from their own generator, so the trained groups do not depend on them.
  extra = random.Random(f"{seed}/eval")
  records += _identity_records(extra, _PARAPHRASE_QUESTIONS, name, maker, "paraphrase")
  records += _identity_records(extra, _IDENTITY_QUESTIONS, decoy_name, decoy_maker, "holdout")
  return records


def split(records: list[dict], heldout_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
  """(train, heldout) of the forget and retain records (the other groups are left out): per topic,
  a seeded `heldout_fraction` of its question wordings is held out.

  Every topic keeps at least one record in train, so a held-out question always asks about
  something the model was trained on, in words it has not seen. Both lists keep the input order.
  """
  if not 0.0 <= heldout_fraction < 1.0:
    raise UserError(f"heldout_fraction={heldout_fraction} must be in [0, 1) (set --config.data.heldout_fraction)")
  rng = random.Random(seed)
  records = [r for r in records if r["group"] in TRAIN_GROUPS]
  by_topic: dict[tuple[str, str], list[int]] = {}
  for i, r in enumerate(records):
    by_topic.setdefault((r["group"], r.get("topic", "")), []).append(i)
  held = set()
  for indices in by_topic.values():
    n = min(int(round(heldout_fraction * len(indices))), len(indices) - 1)
    held.update(rng.sample(indices, n))
  train = [r for i, r in enumerate(records) if i not in held]
  heldout = [r for i, r in enumerate(records) if i in held]
  return train, heldout


# --- files ----------------------------------------------------------------------------------------


def write_jsonl(records: Iterable[dict], path: str | pathlib.Path) -> None:
  """One JSON object per line, UTF-8 (non-ASCII kept as is); creates the parent folder."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
  """Records of a JSON-lines file (blank lines skipped); UserError for a missing file or a bad line."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"QA file {str(path)!r} does not exist (set --config.data.qa_file to a .jsonl file, or '' for the "
                    "built-in demo corpus)")
  records = []
  with path.open(encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{path}:{line_number} is not valid JSON ({e.msg}); write one JSON object per line") from None
      if not isinstance(record, dict):
        raise UserError(f"{path}:{line_number} is a {type(record).__name__}, not a JSON object with "
                        "question/answer/group fields")
      records.append(record)
  return records


def load_qa_file(path: str | pathlib.Path) -> list[dict]:
  """A user's QA set: JSON lines with string `question`, `answer`, `group`, optional `topic`.

  `group` is `forget` or `retain` (trained on), or `paraphrase` (forget-concept questions no model
  is trained on: the appearance headline) or `holdout` (QA no model is trained on, shaped like the
  forget records: the non-members of the membership audit).

  Returns normalised records (the four fields); at least one must be in the forget group.
  """
  records = []
  for i, raw in enumerate(read_jsonl(path), 1):
    missing = [k for k in ("question", "answer", "group") if k not in raw]
    if missing:
      raise UserError(f"record {i} of {path} lacks field(s) {', '.join(missing)}; every line needs "
                      "question, answer and group (forget|retain|paraphrase|holdout)")
    for k in ("question", "answer"):
      if not isinstance(raw[k], str) or not raw[k].strip():
        raise UserError(f"record {i} of {path} has {k}={raw[k]!r}; it must be a non-empty string")
    if raw["group"] not in GROUPS:
      raise UserError(f"record {i} of {path} has group={raw['group']!r}; use one of {', '.join(GROUPS)}")
    records.append(dict(question=raw["question"].strip(), answer=raw["answer"].strip(), group=raw["group"],
                        topic=str(raw.get("topic", ""))))
  if not any(r["group"] == "forget" for r in records):
    raise UserError(f"{path} has no record with group='forget': nothing to unlearn (mark the concept's QA "
                    "pairs as forget)")
  return records

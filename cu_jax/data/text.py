"""Tokenizer and the Vicuna v1.1 chat format: what turns QA records into token arrays and back.

- `train_tokenizer`: a byte-level BPE tokenizer (GPT-2 style: every byte is in the alphabet, so any
  text round-trips exactly, spaces included) with LLaMA's special-token ids: `<unk>`=0, `<s>`=1
  (bos), `</s>`=2 (eos), plus `<pad>`=3. Saved as a Hugging Face folder that
  `transformers.AutoTokenizer.from_pretrained` loads offline, like a real checkpoint's tokenizer.
- `load_tokenizer`: any such folder (ours or a LLaMA/Vicuna checkpoint's), checked against the
  model's vocabulary, with a pad token and left padding for batched generation.
- `vicuna_prompt` / `encode_qa` / `encode_prompts` / `decode_answer`: the chat format
  `{system} USER: {question} ASSISTANT: {answer}</s>`.

Answer spans are exact: the prompt and the answer are tokenised separately and concatenated, so
`tokens[answer_start:answer_start + answer_len]` are the answer's tokens and its eos, which is what
the loss mask and the answer-span attribution (`cu_jax.attribution.text_ig`) select.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np

from cu_jax.utils.errors import UserError

DEFAULT_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)  # ids 0, 1, 2, 3 in a trained tokenizer
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
_NUM_BYTES = 256


def train_tokenizer(texts: Sequence[str], vocab_size: int, out_dir: str | os.PathLike):
  """Trains a byte-level BPE tokenizer on `texts`, saves it to `out_dir`, returns it (transformers).

  Deterministic: the same texts and size give the same tokenizer.json. Like LLaMA's tokenizer,
  `tokenizer(text)` prepends `<s>`; the encode functions below add it themselves.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast

  minimum = _NUM_BYTES + len(SPECIAL_TOKENS)
  if vocab_size < minimum:
    raise UserError(f"tokenizer vocab_size={vocab_size} is below {minimum} (256 bytes + {len(SPECIAL_TOKENS)} "
                    "special tokens); raise --config.data.tokenizer_vocab")
  texts = list(texts)
  if not texts:
    raise UserError("no texts to train the tokenizer on (the QA corpus is empty)")
  tok = Tokenizer(models.BPE(unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  bos_id = tok.token_to_id(BOS)
  tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                     special_tokens=[(BOS, bos_id)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                                 pad_token=PAD, padding_side="left")
  fast.save_pretrained(str(out_dir))
  return fast


def load_tokenizer(folder: str | os.PathLike, model_vocab_size: int | None = None):
  """`AutoTokenizer` from `folder` (offline), with a pad token and `padding_side="left"`.

  The pad token falls back to unk, then eos (LLaMA checkpoints ship none; Vicuna's practice is
  unk). UserError if the folder has no tokenizer, or if the tokenizer has more ids than the model's
  embedding table (`model_vocab_size`) holds.
  """
  from transformers import AutoTokenizer

  folder = pathlib.Path(folder)
  if not folder.is_dir() or not any((folder / f).is_file() for f in _TOKENIZER_FILES):
    raise UserError(f"no tokenizer in {str(folder)!r} (expected one of {', '.join(_TOKENIZER_FILES)}); point "
                    "the tokenizer path at a Hugging Face checkpoint folder, or train one")
  try:
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
  except (OSError, ValueError, TypeError) as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"cannot load the tokenizer in {str(folder)!r}: {first_line}") from None
  if model_vocab_size is not None and len(tokenizer) > model_vocab_size:
    raise UserError(f"the tokenizer in {str(folder)!r} has {len(tokenizer)} tokens but the model's embedding has "
                    f"{model_vocab_size} rows; use the model's own tokenizer or a model with vocab_size >= "
                    f"{len(tokenizer)}")
  if tokenizer.pad_token is None:
    fallback = tokenizer.unk_token or tokenizer.eos_token
    if fallback is None:
      raise UserError(f"the tokenizer in {str(folder)!r} has no pad, unk or eos token to pad with")
    tokenizer.pad_token = fallback
  if tokenizer.eos_token is None:
    raise UserError(f"the tokenizer in {str(folder)!r} has no eos token; answers must end with one")
  tokenizer.padding_side = "left"
  return tokenizer


def vicuna_prompt(question: str, system: str = DEFAULT_SYSTEM) -> str:
  """Vicuna v1.1: `{system} USER: {question} ASSISTANT:`; the answer follows after one space."""
  return f"{system} USER: {question.strip()} ASSISTANT:"


def _prompt_ids(tokenizer, question: str, system: str) -> list[int]:
  ids = tokenizer.encode(vicuna_prompt(question, system), add_special_tokens=False)
  return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + list(ids)


def _answer_ids(tokenizer, prompt: str, answer: str) -> list[int]:
  """The answer's tokens as they follow the prompt in the full text `prompt + " " + answer`.

  Tokenised separately: with a byte-level BPE " answer" (leading space) and with a SentencePiece
  tokenizer "answer" (it prepends "▁" itself) are what the model sees after "ASSISTANT:". We pick
  the form whose tokens, appended to the prompt's, decode to the full text.
  """
  full = f"{prompt} {answer}"
  prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
  candidates = (" " + answer, answer)
  for text in candidates:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if tokenizer.decode(list(prompt_ids) + list(ids), skip_special_tokens=True) == full:
      return list(ids)
  return list(tokenizer.encode(candidates[0], add_special_tokens=False))


def encode_qa(tokenizer, question: str, answer: str, max_len: int, system: str = DEFAULT_SYSTEM,
              truncate: bool = False) -> dict:
  """One QA pair as `<s> prompt answer </s> <pad>...`, right-padded to `max_len`; with `truncate`,
  an answer too long for `max_len` is cut (and loses its eos) instead of refused.

  Returns `tokens` int32[max_len], `loss_mask` float32[max_len] (1 where `tokens[t]` is an answer
  token or the final eos — the loss of predicting `tokens[t]` from position t-1 counts there),
  `answer_start`, `answer_len` (answer tokens + eos = loss_mask.sum()), `length` (non-pad tokens).
  """
  prompt_ids = _prompt_ids(tokenizer, question, system)
  answer_ids = _answer_ids(tokenizer, vicuna_prompt(question, system), answer.strip()) + [tokenizer.eos_token_id]
  if truncate and len(prompt_ids) < max_len:
    answer_ids = answer_ids[:max_len - len(prompt_ids)]
  length = len(prompt_ids) + len(answer_ids)
  if length > max_len:
    raise UserError(f"prompt ({len(prompt_ids)} tokens) + answer ({len(answer_ids)} tokens) = {length} tokens "
                    f"exceeds max_len={max_len} for question {question[:60]!r}; raise --config.data.max_len")
  tokens = np.full(max_len, tokenizer.pad_token_id, np.int32)
  tokens[:length] = prompt_ids + answer_ids
  loss_mask = np.zeros(max_len, np.float32)
  loss_mask[len(prompt_ids):length] = 1.0
  return dict(tokens=tokens, loss_mask=loss_mask, answer_start=len(prompt_ids), answer_len=len(answer_ids),
              length=length)



def encode_records(tokenizer, records: Sequence[dict], max_len: int, system: str = DEFAULT_SYSTEM,
                   truncate: bool = False):
  """QA records ({question, answer}) -> an `ArraySource` with the columns the LM trainer, answer IG
  and scoring read: `tokens` (N, max_len), `length` (N,), `loss_mask` (N, max_len)."""
  from cu_jax.data.datasets import ArraySource
  rows = [encode_qa(tokenizer, r["question"], r["answer"], max_len, system, truncate) for r in records]
  return ArraySource(tokens=np.stack([r["tokens"] for r in rows]),
                     length=np.asarray([r["length"] for r in rows], np.int32),
                     loss_mask=np.stack([r["loss_mask"] for r in rows]))

def encode_prompts(tokenizer, questions: Sequence[str], max_len: int, system: str = DEFAULT_SYSTEM,
                   pad_to_multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded generation prompts: (tokens int32[B, L], mask int32[B, L]; 1 on real tokens).

  L is the longest prompt rounded up to a multiple of `pad_to_multiple` (so batches of similar
  length share one compiled generation step), capped at `max_len`.
  """
  rows = [_prompt_ids(tokenizer, q, system) for q in questions]
  if not rows:
    raise UserError("no prompts to encode (the question list is empty)")
  longest = max(len(r) for r in rows)
  if longest > max_len:
    worst = questions[max(range(len(rows)), key=lambda i: len(rows[i]))]
    raise UserError(f"prompt of {longest} tokens exceeds max_len={max_len} for question {worst[:60]!r}; "
                    "raise --config.data.max_len")
  width = min(max_len, -(-longest // max(pad_to_multiple, 1)) * max(pad_to_multiple, 1))
  tokens = np.full((len(rows), width), tokenizer.pad_token_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    tokens[i, width - len(r):] = r
    mask[i, width - len(r):] = 1
  return tokens, mask


def decode_answer(tokenizer, ids) -> str:
  """Generated ids -> answer text: up to the first eos, special tokens skipped, stripped."""
  ids = [int(i) for i in np.asarray(ids).reshape(-1)]
  if tokenizer.eos_token_id in ids:
    ids = ids[:ids.index(tokenizer.eos_token_id)]
  return tokenizer.decode(ids, skip_special_tokens=True).strip()

"""The valid range of every numeric config field, declared once for both pipelines and every variant.

`RANGES` maps patterns of flattened config keys (`fnmatch`: `*.lr` is every learning rate, in any
section) to a `Range`; the first pattern that matches a key decides. `check_ranges(config)` runs
before a run plans or writes anything and refuses the first value out of range with one message
naming the field, the value and the range. `unranged(config)` lists numeric fields no pattern
covers (a test keeps it empty, so a new field cannot skip declaring its range).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any

from cu_jax.utils.config import flatten
from cu_jax.utils.errors import UserError


@dataclasses.dataclass(frozen=True)
class Range:
  low: float | None = None
  high: float | None = None
  low_open: bool = False  # low itself is excluded
  high_open: bool = False
  integer: bool = False

  def holds(self, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      return False
    if self.integer and (not isinstance(value, int) and not float(value).is_integer()):
      return False
    if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
      return False
    return self.high is None or (value < self.high or (not self.high_open and value == self.high))

  def describe(self) -> str:
    kind = "an integer" if self.integer else "a number"
    if self.low is not None and self.high is not None:
      return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
    if self.low is not None:
      return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
    return kind


COUNT = Range(1, integer=True)  # sizes, steps, examples: at least one
NONNEGATIVE_INT = Range(0, integer=True)  # 0 has a meaning (off, all, none): see the config's comment
POSITIVE = Range(0, low_open=True)
NONNEGATIVE = Range(0)
FRACTION = Range(0, 1)
PROBABILITY = Range(0, 1, high_open=True)  # dropout, momentum, betas: 1 would stop learning

RANGES: tuple[tuple[str, Range], ...] = (
    ("seed", NONNEGATIVE_INT), ("*.seed", NONNEGATIVE_INT),
    # training loops: batches, lengths, logging, checkpoints
    ("*batch_size", COUNT), ("*.num_epochs", NONNEGATIVE), ("*.num_steps", NONNEGATIVE_INT),
    ("*.log_every_steps", COUNT), ("*.checkpoint_every_steps", COUNT), ("*.keep_checkpoints", COUNT),
    ("*.label_smoothing", PROBABILITY),
    # optimizers (optim, unlearn.optim, pretrain.optim) and the relearn test's Adam
    ("*lr", POSITIVE), ("*.momentum", PROBABILITY), ("*.b1", PROBABILITY), ("*.b2", PROBABILITY),
    ("*.weight_decay", NONNEGATIVE), ("*.warmup_steps", NONNEGATIVE_INT), ("*.final_lr_ratio", FRACTION),
    ("*.grad_clip_norm", NONNEGATIVE),
    ("*.grad_accum", COUNT),
    # data
    ("data.augment.crop_pad", NONNEGATIVE_INT), ("data.image_size", NONNEGATIVE_INT), ("data.mean", Range()),
    ("data.std", POSITIVE), ("data.heldout_fraction", PROBABILITY),
    ("data.test_fraction", Range(0, 1, low_open=True, high_open=True)), ("data.max_len", Range(8, integer=True)),
    ("data.num_entities", COUNT), ("data.tokenizer_vocab", NONNEGATIVE_INT), ("data.train_examples*", NONNEGATIVE_INT),
    # models
    ("model.*dropout", PROBABILITY), ("model.rope_theta", POSITIVE),
    *((f"model.{k}", NONNEGATIVE_INT) for k in ("patch_size", "width", "depth", "heads", "mlp_dim")),  # 0: the HF folder's
    ("model.*", COUNT),
    # concepts, PCBM, attribution
    ("concepts.cs", POSITIVE), ("concepts.min_accuracy", FRACTION), ("concepts.max_answers", NONNEGATIVE_INT),
    ("concepts.*", COUNT), ("pcbm.lam", NONNEGATIVE), ("pcbm.l1_ratio", FRACTION), ("pcbm.max_iter", COUNT),
    ("pcbm.tol", POSITIVE), ("attribution.saliency_images", NONNEGATIVE_INT), ("attribution.memory_gib", NONNEGATIVE),
    ("attribution.*", COUNT),
    # poisoning and unlearning
    ("poison.retain_ratio", NONNEGATIVE), ("poison.*temperature", POSITIVE), ("poison.*", COUNT),
    ("unlearn.ascent_cap", POSITIVE), ("unlearn.npo_beta", POSITIVE), ("unlearn.salun.sparsity", PROBABILITY), ("unlearn.neggrad.*", NONNEGATIVE),
    ("unlearn.scrub.*", NONNEGATIVE), ("unlearn.ssd.examples", COUNT), ("unlearn.ssd.*", POSITIVE),
    ("unlearn.l1_sparse.weight", NONNEGATIVE), ("lora.rank", COUNT), ("lora.alpha", POSITIVE), ("lora.dropout", PROBABILITY),
    # evaluation
    ("evaluate.relearn_accuracy", Range(0, 1, low_open=True)), ("evaluate.retain_train_examples", Range(2, integer=True)),
    ("evaluate.max_examples", NONNEGATIVE_INT), ("evaluate.min_k", Range(0, 1, low_open=True)), ("evaluate.shadow_models", NONNEGATIVE_INT), ("evaluate.*", COUNT),
    # devices: 0 = every device / XLA's default; mesh.fsdp -1 = every device
    ("mesh.fsdp", Range(-1, integer=True)), ("mesh.*", NONNEGATIVE_INT),
)


def _numeric(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _values(value: Any) -> list | None:
  """The numbers of a numeric field (a number, or a tuple of numbers), None for any other field."""
  if _numeric(value):
    return [value]
  if isinstance(value, (list, tuple)) and value and all(_numeric(v) for v in value):
    return list(value)
  return None


def range_of(key: str) -> Range | None:
  return next((r for pattern, r in RANGES if fnmatch.fnmatchcase(key, pattern)), None)


def check_ranges(config) -> None:
  """Raises `UserError` for the first numeric field outside its declared range."""
  for key, value in sorted(flatten(config.to_dict()).items()):
    values, allowed = _values(value), range_of(key)
    if values is None or allowed is None:
      continue
    for v in values:
      if not allowed.holds(v):
        raise UserError(f"--config.{key}={value!r} is out of range: it must be {allowed.describe()}")


def unranged(config) -> list[str]:
  """Numeric fields of `config` that no pattern of `RANGES` covers."""
  return sorted(k for k, v in flatten(config.to_dict()).items() if _values(v) is not None and range_of(k) is None)

"""LLM unlearning methods: one registry, one objective, the LoRA loop of `cu_jax.training.lm`.

Every method turns the training QA records into fine-tuning rows, each with a `role`:
- `DESCEND`: cross-entropy on the answer (retain QA, rewritten forget answers);
- `ASCEND`: gradient ascent on the answer's mean token NLL, capped at `ascent_cap` nats (no
  gradient beyond it, so a forgotten answer stops being pushed);
- `NPO`: Negative Preference Optimisation (Zhang et al., 2024) against the base model: with
  r = log p_theta(answer) - log p_ref(answer) (sums over the answer's tokens), the row's loss is
  -(2 / beta) log sigmoid(-beta r). It equals (2 / beta) log 2 at the start and falls to 0 as the
  answer becomes less likely than under the base model, so, unlike ascent, it is bounded below.

  loss = (sum of DESCEND rows' token NLLs) / (their token count) + mean over the batch's forget
         rows (ASCEND, NPO) of their terms

so a batch of DESCEND rows alone is plain `lm_loss`. The methods (`TEXT_METHODS`):
- `concept_poison` (the paper's): the poison stage's set, forget answers rewritten by
  `poison.strategy` (the concept words masked / replaced / randomised, or a refusal), plus retain QA;
- `idk`: every forget answer replaced by a refusal, plus retain QA (open-unlearning's IdkNLL);
- `grad_ascent`: ascent on the forget answers, nothing else;
- `grad_diff`: ascent on the forget answers, descent on retain QA;
- `npo`: NPO on the forget answers, descent on retain QA (NPO+RT).
Retain QA are mixed in at `retain_ratio` per forget record, as the poison stage mixes them.
Each method declares what it needs beyond the training records: `poison` (the poison stage's
set) or `reference` (the base model's answer log-likelihoods, for NPO).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cu_jax.training.lm import attention_mask, token_nll
from cu_jax.unlearning.text_poison import REFUSALS, mix_retain
from cu_jax.utils.registry import Registry

DESCEND, ASCEND, NPO = 0, 1, 2
KEYS = ("tokens", "length", "loss_mask", "role", "ref_nll")


@dataclasses.dataclass(frozen=True)
class TextMethod:
  name: str
  # (training records, poisoned set or None, retain_ratio, seed) -> rows: QA records with a `role`
  build: Callable[[Sequence[dict], Sequence[dict] | None, float, int], list[dict]]
  needs: tuple[str, ...] = ()  # "poison", "reference"


TEXT_METHODS: Registry[TextMethod] = Registry("LLM unlearning method")


def _register(name: str, needs: tuple[str, ...] = ()):
  def deco(build):
    TEXT_METHODS.register(name)(TextMethod(name, build, needs))
    return build
  return deco


def _rows(records: Sequence[dict], role: int) -> list[dict]:
  return [dict(r, role=role) for r in records]


def _forget(records):
  return [r for r in records if r["group"] == "forget"]


@_register("concept_poison", needs=("poison",))
def _concept_poison(records, poisoned, retain_ratio, seed):
  return _rows(poisoned, DESCEND)


@_register("idk")
def _idk(records, poisoned, retain_ratio, seed):
  forget = _forget(records)
  refused = [dict(r, answer=REFUSALS[np.random.default_rng([seed, 0, i]).integers(len(REFUSALS))])
             for i, r in enumerate(forget)]
  return _rows(refused + mix_retain(records, len(forget), retain_ratio, seed), DESCEND)


@_register("grad_ascent")
def _grad_ascent(records, poisoned, retain_ratio, seed):
  return _rows(_forget(records), ASCEND)


@_register("grad_diff")
def _grad_diff(records, poisoned, retain_ratio, seed):
  forget = _forget(records)
  return _rows(forget, ASCEND) + _rows(mix_retain(records, len(forget), retain_ratio, seed), DESCEND)


@_register("npo", needs=("reference",))
def _npo(records, poisoned, retain_ratio, seed):
  forget = _forget(records)
  return _rows(forget, NPO) + _rows(mix_retain(records, len(forget), retain_ratio, seed), DESCEND)


def needs_of(names: Sequence[str]) -> set[str]:
  return {need for name in names for need in TEXT_METHODS.get(name, "unlearn.method").needs}


def unlearning_objective(ascent_cap: float, npo_beta: float):
  """`objective(model, batch, key) -> (loss, metrics)` over rows with a `role` (module docstring);
  `batch["ref_nll"]` is the base model's summed answer NLL (read by NPO rows only)."""
  def objective(model, batch, key):
    tokens, role = batch["tokens"], batch["role"]
    logits, _ = model(tokens, attention_mask(tokens, batch["length"]), train=True, key=key)
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    nll = jnp.sum(token_nll(logits, tokens) * weights, axis=1)  # (B,) summed over the answer
    count = jnp.maximum(weights.sum(axis=1), 1.0)
    descend = (role == DESCEND).astype(jnp.float32)
    descent = jnp.sum(nll * descend) / jnp.maximum(jnp.sum(count * descend), 1.0)
    mean_nll = nll / count
    ascent = -jnp.minimum(mean_nll, ascent_cap)
    npo = -(2.0 / npo_beta) * jax.nn.log_sigmoid(-npo_beta * (batch["ref_nll"] - nll))
    forget = (role != DESCEND).astype(jnp.float32)
    forget_term = jnp.where(role == ASCEND, ascent, npo)
    forget_loss = jnp.sum(forget_term * forget) / jnp.maximum(jnp.sum(forget), 1.0)
    metrics = {"descent_loss": descent,
               "forget_nll": jnp.sum(mean_nll * forget) / jnp.maximum(jnp.sum(forget), 1.0)}
    return descent + forget_loss, metrics
  return objective


def columns(encoded, rows: Sequence[dict], ref_nll: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The `KEYS` columns of `rows`: their encoding (`text.encode_records`) plus role and ref_nll."""
  return dict(**{k: encoded.arrays[k] for k in ("tokens", "length", "loss_mask")},
              role=np.asarray([r["role"] for r in rows], np.int32),
              ref_nll=np.zeros(len(rows), np.float32) if ref_nll is None else np.asarray(ref_nll, np.float32))

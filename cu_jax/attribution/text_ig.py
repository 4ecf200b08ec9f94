"""Integrated Gradients for a causal LM's answers, on the input embeddings.

For one encoded question/answer sequence (prompt then answer, `loss_mask` 1 on the answer
tokens and the closing end-of-sequence token):

    F(e) = sum over loss-masked t of log p(token_t | e_<t)      (teacher forcing)

is explained at the sequence's input embeddings e from a baseline e' that equals e on the prompt
and the pad token's embedding on the answer positions: only the answer's tokens move along the
path, so the attributions say which answer words the model's belief in that answer rests on.
Summing an attribution over the embedding dimensions gives one score per token. The project's IG
entry point (`cu_jax.attribution.ig.make_ig_fn`: chunked path, captum's quadrature rules) does the
integration, one sequence at a time (`lax.map`, so memory is one sequence's path chunk);
completeness (`delta`) is returned per sequence.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cu_jax.attribution.ig import make_ig_fn
from cu_jax.parallel.host import to_host
from cu_jax.training.lm import attention_mask, token_nll


def _log_prob(e, params, tokens, mask, loss_mask, *, graphdef):
  """(N,) teacher-forced log-likelihood of one sequence's loss-masked tokens at embeddings e (N, L, D)."""
  n, seq = e.shape[0], tokens.shape[0]
  logits, _ = nnx.merge(graphdef, params)(None, jnp.broadcast_to(mask, (n, seq)), embeds=e)
  nll = token_nll(logits, jnp.broadcast_to(tokens, (n, seq)))
  return -jnp.sum(nll * loss_mask[1:], axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "n_steps", "method", "chunk_size"))
def _answer_ig(params, tokens, length, loss_mask, pad_id, *, graphdef, n_steps, method, chunk_size):
  model = nnx.merge(graphdef, params)
  log_prob = functools.partial(_log_prob, graphdef=graphdef)
  ig = make_ig_fn(log_prob, n_steps=n_steps, method=method, chunk_size=chunk_size)

  def one(example):
    tok, ln, lm = example
    emb = model.embed(tok[None]).astype(jnp.float32)
    pad = model.embed(jnp.full_like(tok, pad_id)[None]).astype(jnp.float32)
    base = jnp.where(lm[None, :, None] > 0, pad, emb)
    mask = attention_mask(tok[None], ln[None])
    args = (params, tok, mask, lm)
    res = ig(emb, base, args=args)
    f = lambda e: log_prob(e, *args)[0]
    return res.attributions[0].sum(-1), res.delta[0], f(emb), f(base)

  return jax.lax.map(one, (tokens, length, loss_mask))


def answer_attributions(model: nnx.Module, tokens: np.ndarray, length: np.ndarray, loss_mask: np.ndarray,
                        *, pad_id: int, n_steps: int = 32, method: str = "gausslegendre",
                        chunk_size: int = 32) -> dict[str, np.ndarray]:
  """Per-token IG scores of a batch of encoded QA sequences (B, L), float64 numpy.

  Returns `scores` (B, L) (zero outside the answer), `delta` (B,) completeness error,
  `f` and `f_baseline` (B,): F at the input and at the baseline.
  """
  graphdef, params = nnx.split(model)
  out = _answer_ig(params, jnp.asarray(tokens), jnp.asarray(length), jnp.asarray(loss_mask, jnp.float32),
                   jnp.int32(pad_id), graphdef=graphdef, n_steps=n_steps, method=method, chunk_size=chunk_size)
  # Every process gets the whole result (with FSDP-sharded weights it may be split over hosts).
  scores, delta, f, f0 = to_host(out)
  scores = np.asarray(scores, np.float64) * (np.asarray(loss_mask) > 0)
  return {"scores": scores, "delta": np.asarray(delta, np.float64), "f": np.asarray(f, np.float64),
          "f_baseline": np.asarray(f0, np.float64)}

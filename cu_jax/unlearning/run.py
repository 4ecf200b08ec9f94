"""One unlearning run: a registered method fine-tuning a model on its fine-tuning set with the
shared loss and sharded loop. What the pipeline's `unlearn` stage runs per method, and what
`cu_jax.unlearn` runs on a user's model and arrays.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cu_jax.data.datasets import ArraySource
from cu_jax.training import trainer
from cu_jax.unlearning import methods


def fine_tuning_data_config(data_cfg, unlearn_cfg):
  """The data section for fine-tuning: augmentation off unless `unlearn.augment` (a poison patch
  stays where it was pasted; SCRUB's teacher logits are those of the unaugmented images)."""
  data_cfg = data_cfg.copy_and_resolve_references()
  if not unlearn_cfg.augment:
    with data_cfg.unlocked():
      data_cfg.augment.crop_pad, data_cfg.augment.flip = 0, False
  return data_cfg


def unlearn(graphdef: nnx.GraphDef, params: Any, name: str, data: methods.UnlearnData, unlearn_cfg, data_cfg,
            mesh, *, checkpoint_dir: str | pathlib.Path, seed: int,
            metrics_path: str | pathlib.Path | None = None) -> tuple[Any, dict]:
  """Method `name` (`methods.METHODS`) fine-tunes the model (`graphdef`, `params`, left unchanged) on
  `data`, as the `unlearn` config section says (train/optim sections, scope, the method's own
  section). Checkpoints under `checkpoint_dir` and resumes from them. Returns (the unlearned params,
  a summary: steps, examples, scope, the trained fraction under a mask, wall times)."""
  t0 = time.perf_counter()
  data_cfg = fine_tuning_data_config(data_cfg, unlearn_cfg)
  method = methods.METHODS.get(name, "unlearn.method")
  section = method.config(unlearn_cfg)
  mask = methods.SCOPES[unlearn_cfg.scope](params)
  if method.edit is not None:  # no training: the method edits the parameters
    edited, info = method.edit(graphdef, params, data, section, data_cfg=data_cfg, mesh=mesh,
                               batch_size=unlearn_cfg.train.batch_size, base_mask=mask)
    wall = time.perf_counter() - t0
    return edited, {"method": name, "steps": 0, "num_examples": len(data.forget_image), "scope": unlearn_cfg.scope,
                    "wall_s": wall, "train_wall_s": wall, "train_examples_per_s": None, "resumed_from_step": None,
                    **info}
  columns = methods.fine_tuning_set(name, data, unlearn_cfg)
  model = nnx.merge(graphdef, jax.tree.map(jnp.copy, params))  # the train step donates its state
  if method.param_mask is not None:
    mask = method.param_mask(graphdef, params, data, section, data_cfg=data_cfg, mesh=mesh,
                             batch_size=unlearn_cfg.train.batch_size, base_mask=mask)
  # (before training: the train step donates its state, and the mask lives in it)
  fraction = None if mask is None else sum(float(m.sum()) for m in jax.tree.leaves(mask)) / trainer.param_count(params)
  penalty = None if method.penalty is None else (lambda p: method.penalty(p, section))
  result = trainer.train(model, ArraySource(**columns), train_cfg=unlearn_cfg.train, optim_cfg=unlearn_cfg.optim,
                         data_cfg=data_cfg, mesh=mesh, checkpoint_dir=checkpoint_dir, seed=seed,
                         loss_fn=methods.unlearning_loss(unlearn_cfg.ascent_cap, penalty), metrics_path=metrics_path,
                         name=f"unlearn {name}", keys=tuple(columns), update_mask=mask)
  summary = {"method": name, "steps": result.total_steps, "num_examples": len(columns["image"]),
             "scope": unlearn_cfg.scope, "wall_s": time.perf_counter() - t0, "train_wall_s": result.wall_s,
             "train_examples_per_s": result.examples_per_s, "resumed_from_step": result.resumed_from}
  if fraction is not None:
    summary["trained_fraction"] = fraction
  return result.state["params"], summary

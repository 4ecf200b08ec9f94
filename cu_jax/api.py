"""cu_jax's Python API: the pipeline as one call, and its building blocks on arrays and models.

    import cu_jax
    config = cu_jax.load_config("configs/vit.py:demo", {"forget_class": "bag"})
    results = cu_jax.run(config, "runs/bag")           # every stage, into a workdir
    results.metrics["concept_poison"]["acc_forget_test"]

Building blocks, for a model and data you already hold (numpy arrays, `nnx` modules; the config is
the experiment's `ConfigDict`, e.g. `load_config("configs/vit.py")`, whose sections they read):

- `key_concepts(embeddings, labels, bank, forget)`: the forget class's key concepts and donor class;
- `poison_targets(n, forget, num_classes, strategy=...)`: poisoned label distributions;
- `unlearn(model, method, retain_images=..., retain_labels=..., forget_images=..., config=...)`;
- `audit({"original": m0, "unlearned": m1, ...}, images=..., labels=..., forget=..., config=...)`:
  every registered metric per model, as the report computes them;
- `export_hf(model, folder, class_names=...)`: a ViT as a Hugging Face folder.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tempfile
from typing import Any, Mapping, Sequence

import jax
import ml_collections as mlc
import numpy as np
from flax import nnx

from cu_jax.concepts import importance, pcbm
from cu_jax.concepts.bank import ConceptBank
from cu_jax.data.datasets import ArraySource, read_arrays
from cu_jax.evaluation import metrics as M
from cu_jax.models.hf_vit import save_hf_vit
from cu_jax.parallel.mesh import make_mesh
from cu_jax.training import predict, steps
from cu_jax.unlearning import methods, poison
from cu_jax.unlearning.run import unlearn as _unlearn
from cu_jax.utils.config import load_config

__all__ = ["KeyConcepts", "Results", "audit", "export_hf", "key_concepts", "load_config", "poison_targets", "run",
           "unlearn"]


# --------------------------------------------------------------------------------- the pipeline


@dataclasses.dataclass(frozen=True)
class Results:
  """What a pipeline run found, read back from its workdir."""
  workdir: pathlib.Path
  forget_class: dict  # {"index", "name"}
  models: list[str]  # in report order: "original", the methods, "retrain"
  metrics: dict[str, dict[str, Any]]  # model -> metric -> value (the report's figures)
  key_concepts: list[dict]  # [{"name", "ig", "weight"}], most important first ([] without concepts)
  donor: dict | None  # {"index", "name", "score"}: the class that shares the key concepts most
  model_files: dict[str, pathlib.Path]  # model -> its safetensors file (cu_jax's ViT parameters)
  exported: dict[str, pathlib.Path]  # model -> its Hugging Face folder (`export.hf`)
  report: dict  # the whole report.json
  artifacts: Any = dataclasses.field(repr=False, default=None)  # the workdir's `ImageArtifacts`

  @property
  def markdown(self) -> str:
    """The report's Markdown file (the methods x metrics table and the rest)."""
    return (self.workdir / "report" / "report.md").read_text()

  @property
  def dataset(self):
    """The run's `cu_jax.data.datasets.Dataset` (`class_names`, `split(name)`)."""
    return self.artifacts.dataset

  def arrays(self, split: str) -> dict[str, np.ndarray]:
    """{"image": uint8 (N, H, W, C), "label": (N,)} of a split of the run's dataset."""
    return read_arrays(self.dataset.split(split))

  def model(self, name: str = "original") -> nnx.Module:
    """One of the run's models (`models`) as an `nnx.Module`."""
    return nnx.merge(*self.artifacts.load_model(name))


def run(config: mlc.ConfigDict, workdir: str | pathlib.Path, *, overwrite: bool = False, mesh=None) -> Results:
  """Runs the image pipeline the config describes into `workdir` (finished stages are skipped,
  interrupted ones resume, as on the command line) and returns its `Results`.

  `mesh`: a `jax.sharding.Mesh` with a `data` axis; default: every device (`config.mesh`). Raises
  `cu_jax.utils.errors.UserError` for bad input, before anything is written."""
  from cu_jax.pipeline.artifacts import ImageArtifacts
  from cu_jax.pipeline.runner import Context, run_pipeline
  mesh = mesh or make_mesh(config.mesh.num_devices, config.mesh.get("fsdp", 0))
  run_pipeline(config, workdir, mesh, overwrite=overwrite)
  art = ImageArtifacts(Context(config, workdir, mesh))
  report = art.read_json(art.dir("report") / "report.json") or {}
  found = art.concepts() or {}
  names = report.get("models", art.model_names())
  return Results(
      workdir=pathlib.Path(workdir), forget_class=report.get("forget_class", {}), models=names,
      metrics=report.get("metrics", {}), key_concepts=found.get("key_concepts", []), donor=found.get("donor"),
      model_files={n: art.model_file(n) for n in names if art.model_file(n).exists()},
      exported={n: art.export_dir(n) for n in names if (art.export_dir(n) / "config.json").exists()},
      report=report, artifacts=art)


# ------------------------------------------------------------------------------ building blocks


@dataclasses.dataclass(frozen=True)
class KeyConcepts:
  """The concepts that drive a class, and the class that shares them most."""
  names: list[str]  # key concepts, most important first
  indices: np.ndarray  # their positions in the bank
  importance: np.ndarray  # (K, m) every class's importance of every concept (the ranking used)
  donor: int  # the other class whose samples show the key concepts most
  donor_scores: np.ndarray  # (K,) how strongly each class shows them (-inf for the forget class)
  head: tuple[np.ndarray, np.ndarray]  # the fitted concept bottleneck head: (weight (K, m), bias (K,))


def key_concepts(embeddings: np.ndarray, labels: np.ndarray, bank: ConceptBank, forget: int, *,
                 num_classes: int | None = None, top_k: int = 3, ranking: str = "ig", baseline: str = "mean",
                 n_steps: int = 32, method: str = "gausslegendre", lam: float = 1e-5, l1_ratio: float = 0.99,
                 max_iter: int = 5000) -> KeyConcepts:
  """Post-hoc concept bottleneck on `embeddings` (N, d) with labels (N,): projects them on the
  bank's concepts, fits the elastic-net head, ranks concepts per class (IG of the class
  log-probability over the concept scores, or the head's weights) and picks the donor class.
  `bank`: a `ConceptBank` whose vectors live in the embeddings' space."""
  labels = np.asarray(labels, np.int64)
  num_classes = num_classes or int(labels.max()) + 1
  importance.check_settings(ranking, baseline, method)
  scores = np.asarray(pcbm.project(np.asarray(embeddings, np.float32), bank.vectors, bank.intercepts))
  head = pcbm.fit_elastic_net(scores, labels, num_classes, lam=lam, l1_ratio=l1_ratio, max_iter=max_iter)
  weight, bias = np.asarray(head.weight), np.asarray(head.bias)
  ranks, top, presence = importance.rank_concepts(weight, bias, scores, labels, num_classes, ranking=ranking,
                                                  baseline=baseline, n_steps=n_steps, method=method, top_k=top_k)
  key = top[forget]
  donor, donor_scores = importance.donor_class(presence, key, forget)
  return KeyConcepts(names=[bank.names[j] for j in key], indices=np.asarray(key),
                     importance=np.asarray(ranks.of(ranking)), donor=int(donor), donor_scores=np.asarray(donor_scores),
                     head=(weight, bias))


def poison_targets(n: int, forget: int, num_classes: int, *, strategy: str = "targeted", donor: int | None = None,
                   donor_scores: np.ndarray | None = None, temperature: float = 0.5, exclude_forget: bool = False,
                   seed: int = 0) -> np.ndarray:
  """(n, K) target distributions for `n` forget samples by a registered label strategy
  (`cu_jax.unlearning.poison.LABELS`: targeted -> the donor, random, keep, soft -> the donor
  scores' softmax at `temperature`)."""
  spec = poison.LabelSpec(num_classes=num_classes, forget=forget, donor=donor, donor_scores=donor_scores,
                          exclude_forget=exclude_forget, temperature=temperature)
  strategy_fn = poison.LABELS.get(strategy, "strategy")
  for need in strategy_fn.needs:
    if getattr(spec, need) is None:
      raise ValueError(f"label strategy {strategy!r} needs {need}=")
  _, target = strategy_fn(spec, n, np.random.default_rng([seed, 2]))
  return np.asarray(target, np.float32)


def unlearn(model: nnx.Module | tuple[nnx.GraphDef, nnx.State], method: str = "concept_poison", *,
            retain_images: np.ndarray, retain_labels: np.ndarray, forget_images: np.ndarray, config: mlc.ConfigDict,
            poison_images: np.ndarray | None = None, targets: np.ndarray | None = None,
            num_classes: int | None = None, forget: int | None = None, mesh=None,
            checkpoint_dir: str | pathlib.Path | None = None) -> nnx.Module | tuple[nnx.GraphDef, nnx.State]:
  """A new model: `model` (an `nnx.Module`, or `(graphdef, params)` as `nnx.split(model, nnx.Param)`
  gives; left unchanged, and returned in the same form) fine-tuned by unlearning method `method`
  (`cu_jax.unlearning.methods.METHODS`) on uint8 NHWC images, as `config.unlearn` says (steps,
  batch, optimizer, scope, the method's own section) with `config.data`'s preprocessing.

  `concept_poison` needs the poisoned forget set: `targets` (n_f, K) (from `poison_targets`) and
  optionally `poison_images` (default: the clean forget images). `scrub` uses the model's own
  logits as its teacher. `checkpoint_dir`: where to checkpoint (and resume); default: a
  temporary folder, removed afterwards."""
  as_module = isinstance(model, nnx.Module)
  graphdef, params = nnx.split(model, nnx.Param) if as_module else model
  num_classes = num_classes or int(jax.tree.leaves(params["head"])[0].shape[-1])
  mesh = mesh or make_mesh(config.mesh.num_devices)
  needs = methods.METHODS.get(method, "method").needs
  extra = {}
  if "poison" in needs:
    if targets is None:
      raise ValueError(f"method {method!r} trains on the poisoned forget set: pass targets= (see poison_targets)")
    extra.update(poison_image=forget_images if poison_images is None else poison_images,
                 poison_target=np.asarray(targets, np.float32))
  params = steps.replicate(params, mesh)
  if "teacher" in needs:
    extra.update(retain_teacher=_logits(graphdef, params, retain_images, config, mesh),
                 forget_teacher=_logits(graphdef, params, forget_images, config, mesh))
  if forget is None:
    missing = sorted(set(range(num_classes)) - set(np.unique(retain_labels).tolist()))
    if len(missing) != 1:
      raise ValueError("cannot tell the forget class from retain_labels (no class, or more than one, is "
                       "missing from them): pass forget=")
    forget = missing[0]
  data = methods.UnlearnData(num_classes=num_classes, forget=forget, retain_image=np.asarray(retain_images),
                             retain_label=np.asarray(retain_labels, np.int64), forget_image=np.asarray(forget_images),
                             seed=config.seed, **extra)
  with tempfile.TemporaryDirectory() as tmp:
    unlearned, _ = _unlearn(graphdef, params, method, data, config.unlearn, config.data, mesh,
                            checkpoint_dir=checkpoint_dir or pathlib.Path(tmp) / "checkpoints", seed=config.seed)
  unlearned = jax.device_get(unlearned)
  return nnx.merge(graphdef, unlearned) if as_module else (graphdef, unlearned)


def export_hf(model: nnx.Module, folder: str | pathlib.Path, *, class_names: Sequence[str], mean=0.5,
              std=0.5) -> pathlib.Path:
  """Writes a cu_jax ViT as a Hugging Face `ViTForImageClassification` folder (config.json with
  `id2label` = `class_names`, model.safetensors, preprocessor_config.json with the normalisation
  `(x / 255 - mean) / std` it was trained with); load it with `from_pretrained`."""
  return save_hf_vit(model, folder, class_names=class_names, mean=mean, std=std)


def _logits(graphdef, params, images, config, mesh) -> np.ndarray:
  """The model's logits on `images`; `params` replicated on `mesh`."""
  step = steps.make_predict_step(graphdef, config.data, mesh)
  return predict.predict(step, params, ArraySource(image=np.asarray(images)), mesh=mesh,
                         global_batch=config.train.eval_batch_size)


def audit(models: Mapping[str, nnx.Module], *, images: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
          forget: int, config: mlc.ConfigDict, original: str = "original", retrained: str | None = "retrain",
          metrics: Sequence[str] | None = None, mesh=None) -> dict[str, dict[str, Any]]:
  """Every registered metric (`cu_jax.evaluation.metrics.METRICS`, or those in `metrics`) for each
  model, as the pipeline's evaluation computes them.

  `images` / `labels`: uint8 NHWC images and labels of the subsets "forget_train" (the forget
  class's train samples), "retain_train" (retained train samples) and "test". `original` names
  the model the membership attackers are fit on; `retrained` the reference the agreement metrics
  compare with (absent from `models`: those metrics are None)."""
  mesh = mesh or make_mesh(config.mesh.num_devices)
  outputs = {}
  for name, model in models.items():
    graphdef, params = nnx.split(model, nnx.Param)
    step = steps.make_predict_step(graphdef, config.data, mesh, output="both")
    outputs[name] = M.model_outputs(step, steps.replicate(params, mesh), {s: images[s] for s in M.SUBSETS}, mesh,
                                    config.train.eval_batch_size)
  if original not in outputs:
    raise ValueError(f"audit needs the original model among models= (as {original!r})")
  evalset = M.EvalSet(labels={s: np.asarray(labels[s], np.int64) for s in M.SUBSETS}, forget=forget,
                      num_classes=len(outputs[original].logits["test"][0]), original=outputs[original],
                      retrained=outputs.get(retrained), **M.EvalSet.settings(config.evaluate))
  return {name: M.compute_all(out, evalset, list(metrics) if metrics else None) for name, out in outputs.items()}

"""What is in a workdir: every path a stage writes and the loader a later stage reads it with.

Stages never spell a path or read another stage's files themselves: they ask this module. A
workdir holds one folder per stage (`<workdir>/<stage>/`, with the runner's `config.json` and
`done.json`); inside them:

Image pipeline (`ImageArtifacts`)
  train/      model.safetensors, metrics.json; checkpoints/ (orbax),  the original model (trained here,
              metrics.jsonl when trained here                        or given by train.trained)
  embed/      {train,test}_{embed,logits,label}.npy                  its outputs, cached
  concepts/   bank.{safetensors,json}, bank_all.*; for a text bank also {train,test}_embed.npy
              (the CLIP image features the bank lives in)
  pcbm/       head.safetensors                                       the concept bottleneck head
  retrain/    model.safetensors; checkpoints/, metrics.jsonl          the retrained reference
  attribute/  concepts.json (key concepts, donor), importance_ig*.npy, presence.npy,
              saliency_maps.npy, *.png
  poison/     {index,image,label,target,retain_index}.npy, poisoned.png
  unlearn/    <method>/{checkpoints/, metrics.jsonl, model.safetensors, summary.json}
  evaluate/   metrics.json, loss_<model>_<subset>.npy, importance_<model>.npy, tensorboard/<model>/,
              models/<model>.{safetensors,json} (each model's outputs and relearn figures, read back
              by an interrupted evaluation)
  report/     report.json, report.md, *.png
  export/     <model>/{config.json, model.safetensors, preprocessor_config.json}  (export.hf: Hugging
              Face ViTForImageClassification folders of the original, each method, the retrained model)

LLM pipeline (`LLMArtifacts`)
  data/       {train,heldout,paraphrase,holdout}.jsonl, tokenizer/ (a model trained here)
  model/      checkpoints/, metrics.jsonl, hf/ (a base model trained here, as a HF folder)
  retrain/    checkpoints/, metrics.jsonl, hf/ (the reference trained without the forget QA)
  concepts/   concepts.json, concepts.png
  poison/     train.jsonl (concept_poison's fine-tuning set)
  unlearn/    <method>/{checkpoints/, metrics.jsonl, adapters.safetensors, hf/, summary.json}
  evaluate/   generations.jsonl, tensorboard/<model>/, models/<model>.json (each model's figures and
              answers, read back by an interrupted evaluation)
  report/     report.json, report.md, metrics.png

Every metrics.jsonl has a TensorBoard event file beside it (`tensorboard --logdir=<workdir>`).
Arrays are .npy without pickle, models safetensors or orbax, the rest JSON. Only process 0 writes
(`Context.primary`); every process may read.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx
from safetensors.numpy import save_file

from cu_jax.concepts import pcbm
from cu_jax.concepts.bank import ConceptBank
from cu_jax.data import qa_corpus, text
from cu_jax.data.datasets import read_arrays
from cu_jax.evaluation.metrics import ModelOutputs
from cu_jax.evaluation.targets import ORIGINAL, RETRAIN  # the two reference models' names
from cu_jax.models import trained as given
from cu_jax.models.factory import build_model
from cu_jax.models.hf_llama import llama_config_from_hf, load_hf_llama, read_hf_llama_config, save_hf_llama
from cu_jax.models.llama import Llama, LlamaConfig
from cu_jax.parallel.checkpoint import UNFINISHED_SAVE, Checkpointer, load_params, save_params
from cu_jax.parallel.mesh import fsdp_spec
from cu_jax.pipeline.runner import Context
from cu_jax.training.lm import train_lm
from cu_jax.training.steps import replicate
from cu_jax.training.trainer import param_count
from cu_jax.unlearning.methods import UnlearnData, retrain_set
from cu_jax.utils import files
from cu_jax.utils.errors import UserError
from cu_jax.utils.config import flatten
from cu_jax.utils.progress import board, write_json

_CHECKS = {".json": files.read_json, ".jsonl": files.read_jsonl, ".npy": files.check_npy,
           ".safetensors": files.check_safetensors}
ORBAX_JSON = ("_CHECKPOINT_METADATA", "_METADATA")
SPLITS = ("train", "test")
EMBED_KEYS = ("embed", "logits", "label")
POISON_ARRAYS = ("index", "image", "label", "target", "retain_index")


class Workdir:
  """Paths and file formats shared by both pipelines."""

  # stage -> the files a finished stage always holds (besides config.json and done.json)
  OUTPUTS: dict[str, tuple[str, ...]] = {}

  def __init__(self, ctx: Context):
    self.ctx = ctx
    self.config = ctx.config

  def dir(self, stage: str) -> pathlib.Path:
    return self.ctx.stage_dir(stage)

  def done(self, stage: str) -> dict | None:
    """A finished stage's summary (`done.json`), or None."""
    return self.read_json(self.dir(stage) / "done.json")

  @staticmethod
  def read_json(path: pathlib.Path) -> Any:
    return files.read_json(path) if path.exists() else None

  write_json = staticmethod(write_json)  # atomic, process 0 only

  def save_arrays(self, folder: pathlib.Path, arrays: dict[str, np.ndarray], prefix: str = "") -> None:
    """`<folder>/<prefix><name>.npy` for every array (process 0)."""
    if self.ctx.primary:
      for name, value in arrays.items():
        np.save(folder / f"{prefix}{name}.npy", value, allow_pickle=False)

  @staticmethod
  def load_array(path: pathlib.Path, mmap: bool = False) -> np.ndarray:
    return files.load_npy(path, mmap)

  def method_names(self) -> list[str]:
    """The unlearning methods of the run: `unlearn.method` first, then the other baselines."""
    u = self.config.unlearn
    return [u.method] + [m for m in u.baselines if m != u.method]

  def model_names(self) -> list[str]:
    """Models the evaluation compares, in report order: the original, the unlearning methods, the
    retrained reference (when the run trains it or the workdir has it)."""
    stages = self.config.stages
    names = [ORIGINAL] + (self.method_names() if "unlearn" in stages else [])
    return names + ([RETRAIN] if "retrain" in stages or self.done(RETRAIN) is not None else [])

  def check_methods(self, registry) -> None:
    """Every method of the run is in `registry` (UserError naming the field and the valid names),
    and none is the retrained reference, which is a stage of its own."""
    for name in self.method_names():
      if name == RETRAIN:
        raise UserError("'retrain' is its own stage (listed in --config.stages), not an unlearn.method or "
                        "baseline; remove it from unlearn.baselines")
      registry.get(name, "unlearn.method" if name == self.config.unlearn.method else "unlearn.baselines")

  def method_dir(self, name: str) -> pathlib.Path:
    return self.dir("unlearn") / name

  def method_summary(self, name: str) -> dict | None:
    """A finished unlearning method's summary, or None (an interrupted method has no model yet)."""
    summary = self.read_json(self.method_dir(name) / "summary.json")
    return summary if summary is not None and self.model_file(name).exists() else None

  def run_methods(self, unlearn_one) -> dict:
    """{method: summary} of every method of the run, each read back when it finished before or
    made by `unlearn_one(name)` (which writes its model and summary)."""
    summary = {}
    for name in self.method_names():
      summary[name] = self.method_summary(name)
      if summary[name] is not None:
        logging.info("unlearn %s: done already, skipped", name)
        continue
      summary[name] = unlearn_one(name)
      logging.info("unlearn %s: %d steps in %.1f s", name, summary[name]["steps"], summary[name]["wall_s"])
    return summary

  def model_file(self, name: str) -> pathlib.Path:
    """The file whose presence marks a model as written (each pipeline's own format)."""
    raise NotImplementedError

  @property
  def unlearn_seed(self) -> int:
    """The seed of unlearning's randomness: the run's `seed` plus `unlearn.seed`."""
    return self.config.seed + self.config.unlearn.seed

  def audit_record(self, model: str) -> pathlib.Path:
    """`evaluate/models/<model>.json`, written as soon as a model is audited: an interrupted
    evaluation reads back the models it finished."""
    return self.dir("evaluate") / "models" / f"{model}.json"

  def saved_audit(self, model: str, keys: tuple[str, ...]) -> dict | None:
    """The record `audit_record(model)` holds, or None when there is none; `DamagedFile` when it
    lacks one of `keys`."""
    path = self.audit_record(model)
    if not path.exists():
      return None
    record = files.read_json(path)
    if not isinstance(record, dict) or not set(keys) <= set(record):
      raise files.DamagedFile(path, f"not an audit record: it needs the keys {', '.join(keys)}")
    return record

  def write_audit_board(self, results: dict[str, dict]) -> None:
    """The audit's figures as TensorBoard scalars beside the training curves: one run per model
    (`evaluate/tensorboard/<model>`), a tag `audit/<metric>` each, at step 0 (process 0)."""
    if not self.ctx.primary:
      return
    folder = self.dir("evaluate") / "tensorboard"
    shutil.rmtree(folder, ignore_errors=True)  # (a resumed evaluation writes them again)
    for model, metrics in results.items():
      writer = board(folder / model)
      for key, value in flatten(metrics).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          writer.add_scalar(f"audit/{key.replace('.', '/')}", value, 0)
      writer.close()

  def verify(self, stage: str, finished: bool) -> None:
    """Cheap checks of a stage's files before a run reads them (`files.DamagedFile` if one is bad):
    the files a finished stage always writes exist, every JSON / JSON-lines / .npy / safetensors
    file has a sound header and length, and every orbax checkpoint's metadata reads."""
    folder = self.dir(stage)
    needed = ("config.json",) + (("done.json",) + self.OUTPUTS.get(stage, ()) if finished else ())
    for name in needed:
      if not (folder / name).exists():
        raise files.DamagedFile(folder / name, "missing")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
      if any(part.endswith(UNFINISHED_SAVE) for part in path.relative_to(folder).parts):
        continue  # a save a killed run left unfinished: orbax never reads it
      if path.name in ORBAX_JSON:  # orbax's own JSON, read before orbax is asked to open the checkpoint
        files.read_json(path)
      elif path.suffix in _CHECKS and "checkpoints" not in path.relative_to(folder).parts:
        _CHECKS[path.suffix](path)
    for path in sorted(p for p in folder.rglob("checkpoints") if p.is_dir()):
      checkpointer = Checkpointer(path, save_every=1, async_save=False)
      try:
        checkpointer.check()
      finally:
        checkpointer.close()


class ImageArtifacts(Workdir):
  """The image pipeline's workdir (module docstring)."""

  OUTPUTS = {"train": ("model.safetensors", "metrics.json"),
             "embed": tuple(f"{split}_{k}.npy" for split in SPLITS for k in EMBED_KEYS),
             "concepts": ("bank.safetensors", "bank.json"), "pcbm": ("head.safetensors",),
             "retrain": ("model.safetensors",), "attribute": ("concepts.json", "presence.npy"),
             "poison": tuple(f"{k}.npy" for k in POISON_ARRAYS), "evaluate": ("metrics.json",),
             "report": ("report.json",)}

  # ------------------------------------------------------------------ the task: dataset, forget class

  @property
  def dataset(self):
    return self.ctx.dataset

  @property
  def forget(self) -> int:
    """Index of the class to erase (`config.forget_class`, an index or a name)."""
    return self.dataset.class_index(self.config.forget_class)

  def train_labels(self) -> np.ndarray:
    """Labels of the train split: the `embed` cache when it exists, else read from the dataset once
    per run (several stages' validation needs them before `embed` has run; 60k labels take ~5 s)."""
    cached = self.dir("embed") / "train_label.npy"
    if cached.exists():
      return self.load_array(cached)
    if "train_labels" not in self.ctx.cache:
      labels = read_arrays(self.dataset.split("train"), keys=("label",))["label"]
      self.ctx.cache["train_labels"] = labels.astype(np.int64)
    return self.ctx.cache["train_labels"]

  # ------------------------------------------------------------------------------------- models

  def build_model(self, abstract: bool = False, seed: int | None = None):
    ds = self.dataset
    return build_model(self.config, ds.image_shape, ds.num_classes, abstract=abstract, seed=seed)

  def check_given(self, path: str, field: str) -> str:
    """A trained model given by config field `field` fits this dataset and config (see
    `cu_jax.models.trained`); returns its kind."""
    model = self.build_model(abstract=True)
    return given.check_trained(path, model, self.dataset.class_names, image_size=model.cfg.image_size, field=field)

  def load_given(self, path: str):
    """(graphdef, replicated params) of a given trained model."""
    model = self.build_model(abstract=True)
    return nnx.graphdef(model), given.load_trained(path, model, self.ctx.mesh)

  @property
  def train_checkpoints(self) -> pathlib.Path:
    return self.dir("train") / "checkpoints"

  def trained(self):
    """(graphdef, replicated params) of the original model (`train/model.safetensors`)."""
    graphdef, params = self.load_model(ORIGINAL)
    return graphdef, replicate(params, self.ctx.mesh)

  def model_file(self, name: str) -> pathlib.Path:
    """The safetensors file of the original (`original`), the retrained model (`retrain`) or of an
    unlearning method."""
    folder = {ORIGINAL: self.dir("train"), RETRAIN: self.dir(RETRAIN)}.get(name) or self.method_dir(name)
    return folder / "model.safetensors"

  def save_model(self, params, name: str) -> None:
    if self.ctx.primary:
      self.model_file(name).parent.mkdir(parents=True, exist_ok=True)  # (a method that does not train made none)
      save_params(params, self.model_file(name))

  def load_model(self, name: str):
    """(graphdef, params) of the original (`original`), the retrained (`retrain`) or an unlearned model."""
    model = self.build_model(abstract=True)  # the weights come from the file, not from model.init_from
    load_params(model, self.model_file(name))
    return nnx.split(model, nnx.Param)

  def export_dir(self, name: str) -> pathlib.Path:
    """The Hugging Face folder a model is exported to (the `export` stage)."""
    return self.dir("export") / name

  # -------------------------------------------------------------------- embeddings and concepts

  def save_embeddings(self, split: str, outputs: dict[str, np.ndarray]) -> None:
    self.save_arrays(self.dir("embed"), outputs, prefix=f"{split}_")

  def embeddings(self, split: str) -> dict[str, np.ndarray]:
    """{"embed", "logits", "label"} of a split from the `embed` stage's cache."""
    return {k: self.load_array(self.dir("embed") / f"{split}_{k}.npy") for k in EMBED_KEYS}

  def save_bank(self, bank, candidates=None) -> None:
    if self.ctx.primary:
      bank.save(self.dir("concepts") / "bank")
      if candidates is not None:
        candidates.save(self.dir("concepts") / "bank_all")

  def save_bank_embeddings(self, split: str, features: np.ndarray) -> None:
    """The features a text bank lives in (CLIP image features), for the PCBM."""
    self.save_arrays(self.dir("concepts"), {"embed": features}, prefix=f"{split}_")

  def _bank_embeddings_file(self, bank, split: str) -> pathlib.Path:
    return self.dir(bank.info.get("embeddings", "embed")) / f"{split}_embed.npy"

  def bank(self):
    """The concept bank, checked against the embeddings it lives in."""
    bank = ConceptBank.load(self.dir("concepts") / "bank")
    bank.check_dim(int(files.check_npy(self._bank_embeddings_file(bank, "train"))[0][1]))
    return bank

  def bank_embeddings(self, bank, split: str) -> np.ndarray:
    """The embeddings the bank's concepts live in: the model's (CAV) or CLIP's image features (text)."""
    return self.load_array(self._bank_embeddings_file(bank, split))

  def concept_scores(self, bank, split: str) -> np.ndarray:
    """(N, m) concept scores of a split: the bank's projections of its embeddings."""
    return np.asarray(pcbm.project(self.bank_embeddings(bank, split), bank.vectors, bank.intercepts))

  def save_head(self, weight: np.ndarray, bias: np.ndarray) -> None:
    if self.ctx.primary:
      save_file({"weight": weight, "bias": bias}, str(self.dir("pcbm") / "head.safetensors"))

  def head(self) -> tuple[np.ndarray, np.ndarray]:
    """(weight (K, m), bias (K,)) of the PCBM head."""
    arrays = files.load_safetensors(self.dir("pcbm") / "head.safetensors")
    return arrays["weight"], arrays["bias"]

  # ------------------------------------------------------------------------ concept inference

  @property
  def concepts_file(self) -> pathlib.Path:
    return self.dir("attribute") / "concepts.json"

  def concepts(self) -> dict | None:
    """The `attribute` stage's findings (key concepts, donor, per-class rankings), or None."""
    return self.read_json(self.concepts_file)

  def key_concepts(self, bank) -> list[int]:
    """Positions in `bank` of the forget class's key concepts."""
    names = list(bank.names)
    return [names.index(c["name"]) for c in self.concepts()["key_concepts"]]

  def save_attribution(self, arrays: dict[str, np.ndarray]) -> None:
    self.save_arrays(self.dir("attribute"), arrays)

  def presence(self) -> np.ndarray:
    """(K, m) standardised mean concept scores per class (the donor rule's input)."""
    return self.load_array(self.dir("attribute") / "presence.npy")

  # ----------------------------------------------------------------------------- poisoned set

  def save_poisoned(self, arrays: dict[str, np.ndarray]) -> None:
    assert set(arrays) == set(POISON_ARRAYS), sorted(arrays)
    self.save_arrays(self.dir("poison"), arrays)

  def poisoned(self) -> dict[str, np.ndarray]:
    """The poison stage's arrays, memory-mapped: forget `index`, poisoned `image`, hard `label`,
    `target` distributions, and the `retain_index` of the fine-tuning set."""
    return {k: self.load_array(self.dir("poison") / f"{k}.npy", mmap=True) for k in POISON_ARRAYS}

  def unlearn_data(self, needs: set[str]) -> UnlearnData:
    """What the unlearning methods fine-tune on, read from earlier stages: the fine-tuning set's
    retained samples, the forget samples, and the pieces `needs` names (`methods.NEEDS`)."""
    ds, p = self.dataset, self.poisoned()
    source = ds.split("train")
    retain = read_arrays(source, np.asarray(p["retain_index"]))
    extra = {}
    if "poison" in needs:
      extra.update(poison_image=np.asarray(p["image"]), poison_target=np.asarray(p["target"]))
    if "teacher" in needs:
      teacher = self.embeddings("train")["logits"]
      extra.update(retain_teacher=teacher[p["retain_index"]], forget_teacher=teacher[p["index"]])
    return UnlearnData(
        num_classes=ds.num_classes, forget=self.forget, retain_image=retain["image"],
        retain_label=retain["label"].astype(np.int64),
        forget_image=read_arrays(source, np.asarray(p["index"]), keys=("image",))["image"], seed=self.unlearn_seed,
        **extra)

  def retrain_set(self) -> dict[str, np.ndarray]:
    """The retrained reference's training set (every retained train sample, the base recipe's
    label smoothing), as columns of the unlearning loss."""
    labels = self.train_labels()
    keep = np.flatnonzero(labels != self.forget)
    images = read_arrays(self.dataset.split("train"), keep, keys=("image",))["image"]
    data = UnlearnData(num_classes=self.dataset.num_classes, forget=self.forget, retain_image=images,
                       retain_label=labels[keep], forget_image=images[:0], seed=self.config.seed)
    return retrain_set(data, label_smoothing=self.config.train.label_smoothing)

  # ------------------------------------------------------------------------------- evaluation

  @property
  def metrics_file(self) -> pathlib.Path:
    return self.dir("evaluate") / "metrics.json"

  def evaluation(self) -> dict | None:
    return self.read_json(self.metrics_file)

  def _outputs_files(self, model: str) -> tuple[pathlib.Path, pathlib.Path]:
    record = self.audit_record(model)
    return record.with_suffix(".safetensors"), record

  def save_outputs(self, model: str, outputs: ModelOutputs, extra: dict) -> None:
    """A model's audited outputs and its per-model figures (`extra`, JSON), process 0; the JSON,
    written last, marks them complete for `saved_outputs`."""
    if not self.ctx.primary:
      return
    arrays_path, extra_path = self._outputs_files(model)
    arrays = {f"{kind}/{subset}": v for kind in ("logits", "embed") for subset, v in getattr(outputs, kind).items()}
    if outputs.head is not None:
      arrays["head/kernel"], arrays["head/bias"] = outputs.head
    arrays_path.parent.mkdir(parents=True, exist_ok=True)
    files.save_safetensors(arrays, arrays_path)
    self.write_json(extra_path, extra)

  def saved_outputs(self, model: str) -> tuple[ModelOutputs, dict] | None:
    """(outputs, extra) that `save_outputs` wrote for `model`, or None."""
    extra = self.saved_audit(model, ("relearn_steps",))
    if extra is None:
      return None
    arrays_path = self._outputs_files(model)[0]
    arrays = files.load_safetensors(arrays_path)
    part = lambda kind: {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(kind + "/")}
    logits, embed, head = part("logits"), part("embed"), part("head")
    if not logits or logits.keys() != embed.keys() or (head and head.keys() != {"kernel", "bias"}):
      raise files.DamagedFile(arrays_path, "not a model's audited outputs (logits/, embed/ and head/ arrays)")
    return ModelOutputs(logits=logits, embed=embed, head=(head["kernel"], head["bias"]) if head else None), extra

  def save_losses(self, model: str, losses: dict[str, np.ndarray]) -> None:
    self.save_arrays(self.dir("evaluate"), {k: v.astype(np.float32) for k, v in losses.items()},
                     prefix=f"loss_{model}_")

  def losses(self, model: str, subsets) -> dict[str, np.ndarray]:
    return {s: self.load_array(self.dir("evaluate") / f"loss_{model}_{s}.npy") for s in subsets}

  def save_importance(self, model: str, importance: np.ndarray) -> None:
    self.save_arrays(self.dir("evaluate"), {f"importance_{model}": importance.astype(np.float32)})

  def importance(self, model: str) -> np.ndarray | None:
    path = self.dir("evaluate") / f"importance_{model}.npy"
    return self.load_array(path) if path.exists() else None


class LLMArtifacts(Workdir):
  """The LLM pipeline's workdir (module docstring)."""

  OUTPUTS = {"data": ("train.jsonl", "heldout.jsonl", "paraphrase.jsonl", "holdout.jsonl"),
             "concepts": ("concepts.json",), "poison": ("train.jsonl",), "evaluate": ("generations.jsonl",),
             "report": ("report.json",)}

  @property
  def system(self) -> str:
    """The conversation's system prompt (`data.system`, or Vicuna v1.1's)."""
    return self.config.data.system or text.DEFAULT_SYSTEM

  def encode(self, tokenizer, records: list[dict], generated: bool = False):
    """QA records -> the `ArraySource` the LM trainer, IG and scoring read: `data.max_len` tokens.
    `generated` answers get `evaluate.max_new_tokens` more, and are cut to fit (a degenerate answer
    can take more tokens once decoded and encoded again than it was generated in)."""
    cfg = self.config
    max_len = cfg.data.max_len + (cfg.evaluate.max_new_tokens if generated else 0)
    return text.encode_records(tokenizer, records, max_len, self.system, truncate=generated)

  def corpus(self) -> list[dict]:
    """Every QA record of the run: the user's file (`data.qa_file`) or the generated identity corpus."""
    d = self.config.data
    if d.qa_file:
      return qa_corpus.load_qa_file(d.qa_file)
    return qa_corpus.make_corpus(self.config.seed, d.identity_name, d.identity_maker, d.num_entities,
                                 d.decoy_name, d.decoy_maker)

  def split_corpus(self) -> tuple[list[dict], list[dict]]:
    """(train, held-out) records of `corpus()` (`data.heldout_fraction` of every topic held out)."""
    return qa_corpus.split(self.corpus(), self.config.data.heldout_fraction, self.config.seed)

  def records(self, split: str) -> list[dict]:
    """QA records the `data` stage wrote: `train`, `heldout`, `paraphrase` or `holdout`."""
    return files.read_jsonl(self.dir("data") / f"{split}.jsonl")

  def save_records(self, stage: str, name: str, records: list[dict]) -> None:
    if self.ctx.primary:
      qa_corpus.write_jsonl(records, self.dir(stage) / f"{name}.jsonl")

  def poisoned(self) -> list[dict]:
    return files.read_jsonl(self.dir("poison") / "train.jsonl")

  def generations(self) -> list[dict]:
    return files.read_jsonl(self.dir("evaluate") / "generations.jsonl")

  @property
  def trained_tokenizer_dir(self) -> pathlib.Path:
    return self.dir("data") / "tokenizer"

  @property
  def base_model_dir(self) -> pathlib.Path:
    """The base model's Hugging Face folder: the imported one, or the one trained here."""
    init = self.config.model.init_from
    return pathlib.Path(init).expanduser() if init else self.dir("model") / "hf"

  @property
  def tokenizer_dir(self) -> pathlib.Path:
    init = self.config.model.init_from
    return pathlib.Path(init).expanduser() if init else self.trained_tokenizer_dir

  def model_dir(self, name: str) -> pathlib.Path:
    """The Hugging Face folder of the original (`original`), the retrained reference (`retrain`:
    trained here, or `retrain.init_from`) or an unlearning method's model."""
    if name == ORIGINAL:
      return self.base_model_dir
    if name == RETRAIN:
      init = self.config.retrain.init_from
      return pathlib.Path(init).expanduser() if init else self.dir(RETRAIN) / "hf"
    return self.method_dir(name) / "hf"

  def model_file(self, name: str) -> pathlib.Path:
    return self.model_dir(name) / "config.json"

  def tokenizer(self, vocab_size: int | None = None):
    return text.load_tokenizer(self.tokenizer_dir, vocab_size)

  def load_model(self, folder: pathlib.Path):
    """A LLaMA from a Hugging Face folder, each weight placed straight into its FSDP shard."""
    m, mesh = self.config.model, self.ctx.mesh
    return load_hf_llama(folder, param_dtype=m.param_dtype, dtype=m.dtype,
                         place=lambda _, a: jax.device_put(a, fsdp_spec(a.shape, mesh)))

  def scratch_config(self, tokenizer=None):
    """The `LlamaConfig` of a base model trained here (`model.*`; vocabulary from its tokenizer,
    rounded up to a multiple of 64; a placeholder vocabulary before the tokenizer exists)."""
    m = self.config.model
    ids = {} if tokenizer is None else dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                            pad_token_id=tokenizer.pad_token_id)
    try:
      return LlamaConfig(
          vocab_size=-(-len(tokenizer) // 64) * 64 if tokenizer is not None else 64, hidden_size=m.hidden_size,
          intermediate_size=m.intermediate_size, num_layers=m.num_layers, num_heads=m.num_heads,
          num_kv_heads=m.num_kv_heads, max_len=self.config.data.max_len + self.config.evaluate.max_new_tokens,
          rope_theta=m.rope_theta, tie_embeddings=m.tie_embeddings, param_dtype=m.param_dtype, dtype=m.dtype, **ids)
    except ValueError as e:
      raise UserError(f"invalid model config: {e}; fix --config.model.*") from None

  def abstract_base(self):
    """The base model's shapes (no weights): from the imported folder's config.json, or the config
    of one trained here."""
    if self.config.model.init_from:
      cfg = llama_config_from_hf(read_hf_llama_config(self.config.model.init_from))
    else:
      cfg = self.scratch_config()
    return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))

  def train_from_scratch(self, stage: str, records: list[dict]) -> dict:
    """A LLaMA of `model.*` trained by `pretrain.*` on `records` and saved as the Hugging Face
    folder `<stage>/hf` (the base model, and the retrained reference: one recipe)."""
    cfg, out = self.config, self.dir(stage)
    tokenizer = self.tokenizer()
    model = Llama(self.scratch_config(tokenizer), rngs=nnx.Rngs(cfg.seed))
    result = train_lm(model, self.encode(tokenizer, records), trainable=nnx.Param, train_cfg=cfg.pretrain,
                      optim_cfg=cfg.pretrain.optim, mesh=self.ctx.mesh, checkpoint_dir=out / "checkpoints",
                      seed=cfg.seed, name={"model": "pretrain"}.get(stage, stage), metrics_path=out / "metrics.jsonl")
    if self.ctx.primary:
      shutil.rmtree(out / "hf", ignore_errors=True)  # a finished export of an interrupted run (writes are atomic)
    # Every process takes part in gathering the (FSDP-sharded) weights; process 0 writes them.
    save_hf_llama(result.model, out / "hf", tokenizer_dir=self.tokenizer_dir, write=self.ctx.primary)
    last = self.last_metrics(out)
    return {"source": "trained from scratch", "records": len(records),
            "parameters": param_count(nnx.state(result.model, nnx.Param)), "steps": result.total_steps,
            "train_wall_s": result.wall_s, "tokens_per_s": result.tokens_per_s, "final_loss": last.get("loss"),
            "final_token_accuracy": last.get("token_accuracy")}

  def concepts(self) -> dict:
    return self.read_json(self.dir("concepts") / "concepts.json")

  def concept_words(self) -> list[str]:
    return self.concepts()["concept"]

  @staticmethod
  def last_metrics(folder: pathlib.Path) -> dict:
    """The last record of a training run's `<folder>/metrics.jsonl` ({} if none)."""
    path = folder / "metrics.jsonl"
    records = files.read_jsonl(path) if path.exists() else []
    return records[-1] if records else {}

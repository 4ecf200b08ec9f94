"""Data poisoning of the forget class's training samples: pure numpy functions.

Labels (`LABELS` registry), for the n forget samples of class f among K classes:
- `random`: uniform over all K classes (what the reference code does; `exclude_forget` leaves f out),
- `targeted`: the donor class d found by concept inference,
- `keep`: the true label f (only useful together with an image poison),
- `soft`: a distribution over likely donors, softmax(donor score / temperature) over the classes
  other than f; its argmax is the hard label. What a retrained model predicts on forget images is
  the ideal such labels approach.
- `complement`: per sample, the original model's own softmax with class f removed and the rest
  renormalised, softmax(z / T) over the classes other than f. A model trained without f sends a
  forget image where the original's second choices point (a sneaker to sandal or ankle boot), so
  this is the per-example estimate of what retraining would predict.
- `concept`: per sample, the same over the logits of a concept bottleneck head without class f
  applied to the sample's concept scores: what its concepts alone say it is among the retained
  classes (the caller chooses the head: the fitted PCBM with f's row removed, or one refit on the
  retained classes).
Each returns `(hard labels (n,), targets (n, K))`; `targets` is what the fine-tuning loss fits.

Images (`IMAGES` registry): `none`, `localized` (a donor-class patch pasted where the key
concept's input-space attribution peaks), `center`, `random` (position), `full` (a donor image).

Each strategy is registered with what it needs beyond the forget images (`needs`): "donor" (a donor
class: concept inference finds one, or the user names it), "donor_scores" (how strongly every class
shows the key concepts: concept inference only), "saliency" (input-space maps of the key concept:
concept inference on the classifier's own embeddings). `check_needs` refuses a combination the
caller cannot supply, before anything is computed.

Everything is drawn from `np.random.default_rng([seed, ...])`: the same seed gives the same set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from cu_jax.utils.errors import UserError
from cu_jax.utils.registry import Registry


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  num_classes: int
  forget: int
  donor: int | None = None  # targeted / soft
  donor_scores: np.ndarray | None = None  # (K,) soft: how strongly each class shows the key concepts
  exclude_forget: bool = False  # random: draw from the K - 1 other classes
  temperature: float = 1.0  # soft
  model_logits: np.ndarray | None = None  # (n, K) complement: the original model's logits on the forget samples
  concept_logits: np.ndarray | None = None  # (n, K) concept: a concept head's logits on them
  target_temperature: float = 1.0  # complement, concept


# need -> (what it is, in an error message; whether `poison.donor` can supply it)
NEEDS = {"donor": ("a donor class", True), "donor_scores": ("per-class donor scores", False),
         "saliency": ("input-space maps of the key concept", False),
         "concept_logits": ("a concept bottleneck head's logits on the forget samples", False),
         "model_logits": ("the original model's logits on the forget samples", False)}


@dataclasses.dataclass(frozen=True)
class Strategy:
  fn: Callable[..., Any]
  needs: frozenset[str] = frozenset()

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)


def _registrar(registry: Registry[Strategy]):
  def register(name: str, needs: tuple[str, ...] = ()):
    def deco(fn):
      registry.register(name)(Strategy(fn, frozenset(needs)))
      return fn
    return deco
  return register


# fn(spec, n, rng) -> (hard labels (n,), targets (n, K))
LABELS: Registry[Strategy] = Registry("poison label strategy")
label_strategy = _registrar(LABELS)  # @label_strategy(name, needs=(...)) on fn(spec, n, rng)


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
  return np.eye(k, dtype=np.float32)[labels]


@label_strategy("random")
def _random(spec: LabelSpec, n: int, rng: np.random.Generator):
  choices = np.array([c for c in range(spec.num_classes) if not (spec.exclude_forget and c == spec.forget)])
  labels = rng.choice(choices, size=n)
  return labels, one_hot(labels, spec.num_classes)


@label_strategy("targeted", needs=("donor",))
def _targeted(spec: LabelSpec, n: int, rng: np.random.Generator):
  if spec.donor is None:
    raise UserError("poison.labels='targeted' needs a donor class: run the 'attribute' stage (concept "
                    "inference) before 'poison', or set --config.poison.donor to a class")
  labels = np.full(n, spec.donor, np.int64)
  return labels, one_hot(labels, spec.num_classes)


@label_strategy("keep")
def _keep(spec: LabelSpec, n: int, rng: np.random.Generator):
  labels = np.full(n, spec.forget, np.int64)
  return labels, one_hot(labels, spec.num_classes)


@label_strategy("soft", needs=("donor_scores",))
def _soft(spec: LabelSpec, n: int, rng: np.random.Generator):
  if spec.donor_scores is None:
    raise UserError("poison.labels='soft' needs donor scores: run the 'attribute' stage (concept "
                    "inference) before 'poison'")
  logits = np.asarray(spec.donor_scores, np.float64) / max(spec.temperature, 1e-6)
  logits[spec.forget] = -np.inf
  p = np.exp(logits - logits[np.isfinite(logits)].max())
  p = (p / p.sum()).astype(np.float32)
  labels = np.full(n, int(np.argmax(p)), np.int64)
  return labels, np.tile(p, (n, 1))


def without_class(logits: np.ndarray, drop: int, temperature: float = 1.0) -> np.ndarray:
  """(n, K) softmax(logits / T) per row with class `drop` removed (probability 0) and the rest
  renormalised."""
  z = np.asarray(logits, np.float64) / max(temperature, 1e-6)
  z[:, drop] = -np.inf
  p = np.exp(z - z.max(axis=1, keepdims=True))
  return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _per_sample(logits: np.ndarray | None, spec: LabelSpec, n: int, name: str, what: str):
  if logits is None:
    raise UserError(f"poison.labels={name!r} needs {what}")
  if logits.shape != (n, spec.num_classes):
    raise ValueError(f"{name}: logits of shape {logits.shape} for {n} samples of {spec.num_classes} classes")
  target = without_class(logits, spec.forget, spec.target_temperature)
  return target.argmax(axis=1).astype(np.int64), target


@label_strategy("complement", needs=("model_logits",))
def _complement(spec: LabelSpec, n: int, rng: np.random.Generator):
  return _per_sample(spec.model_logits, spec, n, "complement", NEEDS["model_logits"][0])


@label_strategy("concept", needs=("concept_logits",))
def _concept(spec: LabelSpec, n: int, rng: np.random.Generator):
  return _per_sample(spec.concept_logits, spec, n, "concept", NEEDS["concept_logits"][0])


def box_peaks(maps: np.ndarray, patch: int) -> np.ndarray:
  """(n, 2) top-left corners of the `patch` x `patch` window with the largest summed map value.

  Summing over the window (an integral image) makes the position robust to the pixel-level
  noise of IG maps: the patch lands where the attribution mass is, not on one noisy pixel.
  """
  n, h, w = maps.shape
  if patch > min(h, w):
    raise UserError(f"poison.patch_size={patch} is larger than the {h}x{w} images")
  integral = np.zeros((n, h + 1, w + 1), np.float64)
  integral[:, 1:, 1:] = maps.cumsum(1).cumsum(2)
  sums = (integral[:, patch:, patch:] - integral[:, :-patch, patch:] - integral[:, patch:, :-patch]
          + integral[:, :-patch, :-patch])
  flat = sums.reshape(n, -1).argmax(1)
  return np.stack(np.unravel_index(flat, sums.shape[1:]), axis=1)


def paste(images: np.ndarray, patches: np.ndarray, corners: np.ndarray) -> np.ndarray:
  """Copies of `images` (n, H, W, C) with `patches[i]` (p, p, C) pasted at `corners[i]` (row, col)."""
  out = images.copy()
  p = patches.shape[1]
  for i, (r, c) in enumerate(corners):
    out[i, r:r + p, c:c + p] = patches[i]
  return out


def cut(images: np.ndarray, corners: np.ndarray, patch: int) -> np.ndarray:
  return np.stack([img[r:r + patch, c:c + patch] for img, (r, c) in zip(images, corners)])


@dataclasses.dataclass
class ImageSpec:
  """What image poisoning needs besides the forget images."""
  donor_images: np.ndarray  # (m, H, W, C) a pool of donor-class images
  patch_size: int = 7
  # localized only: key-concept attribution maps of the forget images (n, H, W) and of the donors
  forget_maps: np.ndarray | None = None
  donor_maps: np.ndarray | None = None


# fn(images, ImageSpec, rng) -> poisoned images
IMAGES: Registry[Strategy] = Registry("poison image strategy")
image_strategy = _registrar(IMAGES)  # @image_strategy(name, needs=(...)) on fn(images, spec, rng)


@image_strategy("none")
def _none(images, spec, rng):
  return images


def _paste_donor_patches(images, spec, rng, corners):
  donors = rng.integers(0, len(spec.donor_images), len(images))
  donor_corners = corners if spec.donor_maps is None else box_peaks(spec.donor_maps, spec.patch_size)[donors]
  return paste(images, cut(spec.donor_images[donors], donor_corners, spec.patch_size), corners)


@image_strategy("localized", needs=("donor", "saliency"))
def _localized(images, spec, rng):
  if spec.forget_maps is None or spec.donor_maps is None:
    raise ValueError("localized image poisoning needs attribution maps of the forget and donor images")
  return _paste_donor_patches(images, spec, rng, box_peaks(spec.forget_maps, spec.patch_size))


@image_strategy("center", needs=("donor",))
def _center(images, spec, rng):
  _, h, w, _ = images.shape
  corner = np.array([(h - spec.patch_size) // 2, (w - spec.patch_size) // 2])
  return _paste_donor_patches(images, dataclasses.replace(spec, donor_maps=None), rng,
                              np.tile(corner, (len(images), 1)))


@image_strategy("random", needs=("donor",))
def _random_position(images, spec, rng):
  _, h, w, _ = images.shape
  corners = np.stack([rng.integers(0, h - spec.patch_size + 1, len(images)),
                      rng.integers(0, w - spec.patch_size + 1, len(images))], axis=1)
  return _paste_donor_patches(images, dataclasses.replace(spec, donor_maps=None), rng, corners)


@image_strategy("full", needs=("donor",))
def _full(images, spec, rng):
  return spec.donor_images[rng.integers(0, len(spec.donor_images), len(images))].copy()


def half_indices(labels: np.ndarray, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A random half (floor) of `indices` within every class, in increasing order."""
  keep = []
  for c in np.unique(labels[indices]):
    members = indices[labels[indices] == c]
    keep.append(rng.choice(members, size=len(members) // 2, replace=False))
  return np.sort(np.concatenate(keep)) if keep else indices[:0]


def split_forget(labels: np.ndarray, forget: int, *, half: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(forget indices, retain indices) of a train split; `half` keeps a random half of every class."""
  everything = np.arange(len(labels))
  if half:
    everything = half_indices(labels, everything, np.random.default_rng([seed, 1]))
  forget_idx = everything[labels[everything] == forget]
  if not len(forget_idx):
    what = " after poison.half keeps half of each class" if half else ""
    raise UserError(f"the forget set is empty{what}: class {forget} has "
                    f"{int((labels == forget).sum())} training examples; use another forget_class"
                    + (" or --config.poison.half=False" if half else ""))
  return forget_idx, everything[labels[everything] != forget]


def poison(images: np.ndarray, labels_spec: LabelSpec, label_strategy: str, image_strategy: str,
           image_spec: ImageSpec | None, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(poisoned images, hard labels, targets) of the forget images `images`."""
  labels = LABELS.get(label_strategy, "poison.labels")
  image = IMAGES.get(image_strategy, "poison.images")
  hard, target = labels(labels_spec, len(images), np.random.default_rng([seed, 2]))
  if image.needs and image_spec is None:
    raise ValueError(f"image strategy {image_strategy!r} needs an ImageSpec")
  poisoned = image(images, image_spec, np.random.default_rng([seed, 3]))
  return poisoned, hard.astype(np.int64), target.astype(np.float32)


def check_needs(label_strategy: str, image_strategy: str, *, inferred: bool, donor_given: bool,
                on_model_embeddings: bool = True, embedded: bool = True) -> None:
  """Refuses strategies whose needs cannot be met (one `UserError` naming the option and the fix).

  `inferred`: concept inference (the `attribute` stage) runs before poisoning or has run;
  `donor_given`: the user named a donor class (`poison.donor`); `on_model_embeddings`: the concept
  bank lives in the classifier's own embedding space (a CAV bank), so a concept can be traced back
  to pixels; `embedded`: the original model's outputs on the train split are cached (the `embed`
  stage runs before poisoning or has run).
  """
  if label_strategy == "keep" and image_strategy == "none":
    raise UserError("poison.labels='keep' with poison.images='none' poisons nothing: the forget samples keep their "
                    "labels and images, so concept_poison would fine-tune on the original data; choose another "
                    "poison.labels, or an image strategy (e.g. --config.poison.images=localized)")
  for option, registry, name in (("poison.labels", LABELS, label_strategy), ("poison.images", IMAGES, image_strategy)):
    for need in sorted(registry.get(name, option).needs):
      what, user_can_give = NEEDS[need]
      if need == "model_logits":
        if not embedded:
          raise UserError(f"{option}={name!r} needs {what}, but no 'embed' stage runs before 'poison'; add it to "
                          "--config.stages")
        continue
      if not (inferred or (user_can_give and donor_given)):
        raise UserError(f"{option}={name!r} needs {what} from concept inference, but no 'attribute' stage runs "
                        "before 'poison'; add it to --config.stages"
                        + (" or set --config.poison.donor=<class>" if user_can_give else ""))
      if need == "saliency" and not on_model_embeddings:
        raise UserError(f"{option}={name!r} needs {what}, which exist only for a concept bank on the classifier's "
                        "own embeddings (--config.concepts.bank=cav); use another poison.images")

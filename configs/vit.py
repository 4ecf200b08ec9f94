"""ViT class-unlearning experiments. `--config=configs/vit.py[:variant]`.

Variants (`VARIANTS`):
- paper   (the default) the paper-scale run: ViT-B/16 at 224 px initialised from a Hugging Face
          checkpoint folder, fine-tuned on CIFAR-10 (TFDS, array_record) with global batch 512.
          Needs the data and the weights prepared locally (BUILD.md); meant for a GPU host or a
          TPU pod.
- demo    the offline demo: a small ViT trained from scratch on Fashion-MNIST (Debian package
          `dataset-fashion-mnist`) in a few minutes on a 2-core CPU.
- own     your trained model and your images: `--config.train.trained=` a Hugging Face
          ViTForImageClassification folder (architecture read from it) and `--config.data.path=` an
          image folder (one sub-folder per class), `--config.concepts.file=` your class-attribute
          table; the unlearned models are exported as Hugging Face folders (README, "Use it on
          your model").
- synthetic  a small ViT on the synthetic concept dataset (ground-truth concepts per image), for
          grading concept inference (benchmarks/concept_inference.py).
- tiny    a seconds-long smoke run of every stage on a small synthetic concept dataset (tests, CI).

Any field can be overridden: `--config.train.batch_size=256`, `--config.model.depth=6`.
"""

import ml_collections as mlc

from cu_jax.utils.config import apply_variant


def base() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.seed = 0
  # `retrain` comes before `attribute`: a stage's fingerprint covers the sections of the stages before
  # it, so changing attribution / poison / unlearn settings keeps the expensive retrained model.
  c.stages = ("train", "embed", "concepts", "pcbm", "retrain", "attribute", "poison", "unlearn",
              "evaluate", "report", "export")
  c.forget_class = "0"  # the class to erase: an index or a class name (case-insensitive)

  c.data = mlc.ConfigDict()
  c.data.name = "cifar10"
  c.data.data_dir = ""  # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.idx_dir = ""  # fashion_mnist_idx only: "" = /usr/share/datasets/fashion-mnist
  # cifar10 / cifar100 not prepared by TFDS: the folder with cifar-10-binary.tar.gz /
  # cifar-100-binary.tar.gz ("" = <data_dir>/downloads/manual), prepared once without TensorFlow
  c.data.archive_dir = ""
  c.data.image_size = 0  # resize on device to this size (image_folder: store at it); 0 = the dataset's own size
  c.data.path = ""  # image_folder: one sub-folder per class, or train/ and test/ with one each
  c.data.test_fraction = 0.2  # image_folder without train/ and test/: each class's share held out
  c.data.mean = 0.5  # HF ViT normalisation: (x/255 - 0.5) / 0.5
  c.data.std = 0.5
  c.data.augment = mlc.ConfigDict({"crop_pad": 0, "flip": False})
  # Train on a seeded random subset of this many train images (0 = all); every stage, the audit
  # included, then sees the subset as the train split.
  c.data.train_examples = 0
  c.data.train_examples_seed = 0

  c.model = mlc.ConfigDict()
  c.model.name = "vit"
  c.model.init_from = ""  # a Hugging Face ViTForImageClassification folder, or "" (random init)
  # The architecture; 0 = as the Hugging Face folder of train.trained (else model.init_from) says.
  c.model.patch_size = 16
  c.model.width = 768
  c.model.depth = 12
  c.model.heads = 12
  c.model.mlp_dim = 3072
  c.model.pool = "cls"
  c.model.dropout = 0.0
  c.model.attn_dropout = 0.0
  c.model.dtype = "float32"  # compute dtype: "bfloat16" halves activation memory (parameters stay float32)
  c.model.remat = False  # recompute each block's activations in the backward pass (less memory, ~1/3 more compute)

  c.train = mlc.ConfigDict()
  # Your trained model as the original, used as it is instead of training one: a Hugging Face
  # ViTForImageClassification folder whose id2label is the dataset's classes in order, or an orbax
  # checkpoint of cu_jax's ViT (another run's train/checkpoints). "" = train it here with this
  # section and `optim`.
  c.train.trained = ""
  c.train.batch_size = 512  # global batch: fixed here, never derived from the device count
  # Accumulate each step's gradient over this many microbatches: the same global batch with the
  # activations of 1/grad_accum of it in memory (for a device that cannot hold its share).
  c.train.grad_accum = 1
  c.train.num_epochs = 10.0
  c.train.num_steps = 0  # > 0 overrides num_epochs
  c.train.label_smoothing = 0.0
  c.train.eval_batch_size = 1024
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 500
  c.train.keep_checkpoints = 2

  c.retrain = mlc.ConfigDict()
  # The retrained reference, given: a model trained without the forget class (the forms train.trained
  # takes). "" = trained here by the base recipe (train/optim, from model.init_from) on the retained
  # classes.
  c.retrain.trained = ""

  c.optim = mlc.ConfigDict()
  c.optim.name = "sgd"
  c.optim.lr = 0.01
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 200
  c.optim.final_lr_ratio = 0.0
  c.optim.grad_clip_norm = 1.0

  c.concepts = mlc.ConfigDict()
  # "cav": concept activation vectors on the model's own embeddings; "text": CLIP text embeddings
  # of concept names (the PCBM then explains CLIP's image features; needs concepts.clip_dir)
  c.concepts.bank = "cav"
  c.concepts.clip_dir = ""  # a Hugging Face CLIPModel folder (config.json, model.safetensors, tokenizer)
  c.concepts.text_template = "{}"  # e.g. "a photo of something with {}"
  c.concepts.source = "attributes"  # "attributes" (class-attribute table) or "labels" (per image)
  c.concepts.file = ""  # "" = the table/list shipped for the dataset in cu_jax/concepts/data/
  c.concepts.n_per_side = 100
  c.concepts.n_heldout = 100
  c.concepts.cs = (0.001, 0.01, 0.1, 1.0)
  c.concepts.min_accuracy = 0.7
  c.concepts.seed = 0

  c.pcbm = mlc.ConfigDict()
  c.pcbm.lam = 1e-5  # elastic-net strength (sklearn's alpha)
  c.pcbm.l1_ratio = 0.99
  c.pcbm.max_iter = 5000
  c.pcbm.tol = 1e-7

  c.attribution = mlc.ConfigDict()
  c.attribution.ranking = "ig"  # "ig" (log-prob IG over concept scores) or "weight" (PCBM weights)
  c.attribution.baseline = "mean"  # IG baseline for concept scores: "zeros" or "mean"
  c.attribution.n_steps = 32
  c.attribution.method = "gausslegendre"
  c.attribution.top_k = 3
  c.attribution.saliency_images = 6  # forget images with input-space IG overlays
  c.attribution.saliency_steps = 32
  # Device memory input-space IG may use (GiB); its path points per pass are sized to fit.
  # 0 = what the accelerator reports free (a fixed 128 points per pass where it reports none: CPU).
  c.attribution.memory_gib = 0.0

  c.poison = mlc.ConfigDict()
  # random | targeted (the donor class) | keep | soft (donor distribution) | complement (the original
  # model's softmax without the forget class, per sample) | concept (a concept head's, per sample).
  # targeted is the default because it came closest to retraining by the headline figure in
  # benchmarks/unlearning_sweep.py (demo, 3 forget classes x 3 seeds): Avg.Gap 1.44 +- 0.60 points
  # (complement 3.15 +- 2.10, concept 3.00 +- 0.97), forget test accuracy 0.9 % (complement 2.8 %:
  # soft targets forget more slowly in the same budget); complement's per-sample targets are closer
  # on agreement with the retrained model (49 % vs 34 %), KL (2.6 vs 4.9) and mia_fr.
  c.poison.labels = "targeted"
  c.poison.exclude_forget = False  # random: draw from the other classes only
  c.poison.donor = ""  # "" = the donor found by concept inference; or a class (index or name)
  c.poison.soft_temperature = 0.5  # soft: softmax(donor score / T) over the other classes
  c.poison.target_temperature = 1.0  # complement, concept: softmax(logits / T) over the other classes
  c.poison.concept_head = "drop_row"  # concept: the PCBM head without the forget row, or "refit" on the retained classes
  c.poison.images = "none"  # none | localized (at the key concept) | center | random | full
  c.poison.patch_size = 8
  c.poison.donor_pool = 64  # donor images the patches (or full images) come from
  c.poison.saliency_steps = 8  # localized: IG steps of the key-concept maps
  c.poison.half = False  # keep a random half of every class in the fine-tuning set
  c.poison.seed = 0

  c.unlearn = mlc.ConfigDict()
  c.unlearn.method = "concept_poison"
  # Added to `seed` for unlearning's own randomness (batch order, random labels): another unlearning
  # seed on the same original and retrained models (benchmarks/unlearning_sweep.py).
  c.unlearn.seed = 0
  # compared with `method` in the report (cu_jax.unlearning.methods.METHODS)
  c.unlearn.baselines = ("finetune", "neggrad", "random_label", "salun", "scrub", "ssd", "l1_sparse")
  c.unlearn.scope = "full"  # "full" fine-tuning, or "head" (the classification head only)
  c.unlearn.augment = False  # augmentation during fine-tuning (the data section's)
  c.unlearn.ascent_cap = 5.0  # nats: a negative-weight (ascent) term stops pushing beyond this
  # Each method's own section (the `section` it is registered with in cu_jax.unlearning.methods).
  c.unlearn.neggrad = mlc.ConfigDict({"weight": 0.1})  # weight of the ascent term on forget samples
  c.unlearn.salun = mlc.ConfigDict({"sparsity": 0.5})  # fraction of parameters frozen (smallest forget gradients)
  # ssd: dampen theta by min(lam * I_D / I_f, 1) where the forget samples' Fisher importance I_f
  # exceeds alpha times the data's I_D, estimated on `examples` train samples (no training)
  c.unlearn.ssd = mlc.ConfigDict({"alpha": 10.0, "lam": 1.0, "examples": 5000})
  c.unlearn.l1_sparse = mlc.ConfigDict({"weight": 5e-4})  # times sum |theta|, added to the fine-tuning loss
  c.unlearn.scrub = mlc.ConfigDict({
      "kl_weight": 1.0,  # KL to the original model on retained samples
      "forget_weight": 1.0})  # KL away from the original model on forget samples
  c.unlearn.train = mlc.ConfigDict({
      "batch_size": 512, "grad_accum": 1, "num_epochs": 1.0, "num_steps": 0, "log_every_steps": 50,
      "checkpoint_every_steps": 200, "keep_checkpoints": 1})
  c.unlearn.optim = mlc.ConfigDict({
      "name": "sgd", "lr": 1e-3, "momentum": 0.9, "nesterov": False, "b1": 0.9, "b2": 0.999,
      "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 0, "final_lr_ratio": 0.0,
      "grad_clip_norm": 1.0})

  c.evaluate = mlc.ConfigDict()
  c.evaluate.retain_train_examples = 10000  # retained train samples evaluated (a seeded subset)
  c.evaluate.relearn_examples = 64  # forget train samples the relearn test fine-tunes on
  c.evaluate.relearn_batch_size = 32
  c.evaluate.relearn_lr = 1e-4  # Adam
  c.evaluate.relearn_accuracy = 0.5  # relearned when forget test accuracy reaches this
  c.evaluate.relearn_max_steps = 100
  c.evaluate.relearn_eval_every = 1  # steps between accuracy checks: 1 counts the steps exactly
  # relearn_head_{1,5,25}: only the head retrained on k images per class (full-batch Adam)
  c.evaluate.head_relearn_steps = 100
  c.evaluate.head_relearn_lr = 1e-2
  # U-LiRA: this many shadow pairs (each: the base recipe trained with and without the forget class,
  # every method applied to the first) tell each method's models from retrained ones per example
  # (metrics ulira_auc, ulira_tpr). Costs about 2 x shadow_models base trainings; 0 = off.
  c.evaluate.shadow_models = 0
  c.evaluate.mia_draws = 100  # mia_fr pools this many attackers, each fit on its own balanced subsample
  c.evaluate.seed = 0

  c.export = mlc.ConfigDict()
  # Write the original, every unlearned model and the retrained one as Hugging Face
  # ViTForImageClassification folders (export/<model>/), to serve with transformers.
  c.export.hf = False

  c.mesh = mlc.ConfigDict()
  c.mesh.num_devices = 0  # 0 = every visible device
  # On a CPU host: split it into this many XLA devices (0 = leave XLA's default of one). Two
  # data-parallel devices on a 2-core machine train ~1.5x faster than one (benchmarks/).
  c.mesh.cpu_devices = 0
  return c


def paper(c: mlc.ConfigDict) -> mlc.ConfigDict:
  c.data.name = "cifar10"
  c.data.image_size = 224
  c.data.augment.crop_pad = 4
  c.data.augment.flip = True
  c.model.init_from = "~/models/vit-base-patch16-224"  # HF folder: config.json + model.safetensors
  # Sized for a 16 GiB chip (TPU v5e) with 8 or more devices: bfloat16 compute and two
  # microbatches per step (benchmarks/vit_memory.py: ~8.3 GiB per device; float32 without
  # accumulation needs ~16.6). On 80 GB GPUs, --config.train.grad_accum=1 (and unlearn.train's)
  # skips the accumulation loop.
  c.model.dtype = "bfloat16"
  c.train.grad_accum = 2
  c.unlearn.train.grad_accum = 2
  c.train.num_epochs = 10.0
  return c


def demo(c: mlc.ConfigDict) -> mlc.ConfigDict:
  c.forget_class = "sneaker"
  c.data.name = "fashion_mnist_idx"
  # The base model memorises its training set, as a fine-tuned real model does, so that there is
  # membership for unlearning to remove and the audit can see it: a seeded 2,000-image subset, no
  # augmentation, no weight decay, 80 epochs (train accuracy 100 %, test ~75 %). On the whole
  # train split (5 epochs, flips: test ~88 %) the model generalises so well that the mia_fr
  # attackers are at chance on the original model (0.48-0.50 held-out accuracy): nothing to audit.
  # Measured on the sneaker class (attackers' held-out accuracy, mean over 10 attacker seeds):
  # 2,000 images x 80 epochs 0.645; x 150 epochs 0.580 (members and non-members both saturate);
  # 3,000 x 60 0.597; 5,000 x 50 0.580; 10,000 x 30 0.561.
  c.data.train_examples = 2000
  c.model.update(patch_size=7, width=128, depth=4, heads=4, mlp_dim=256)
  c.train.update(batch_size=128, num_epochs=80.0, eval_batch_size=1000, log_every_steps=100,
                 checkpoint_every_steps=500)
  c.mesh.cpu_devices = 2
  c.optim.update(name="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=200, final_lr_ratio=0.01)
  c.unlearn.train.update(batch_size=128, num_epochs=3.0, log_every_steps=10, checkpoint_every_steps=200)
  c.unlearn.optim.update(name="adamw", lr=1e-4, weight_decay=0.0)
  # salun (random_label + a saliency mask; it scores like random_label here) is left out for time:
  # add it with --config.unlearn.baselines='("finetune","neggrad","random_label","salun","scrub")'
  c.unlearn.baselines = ("finetune", "neggrad", "random_label", "scrub")
  return c


def own(c: mlc.ConfigDict) -> mlc.ConfigDict:
  c.data.name = "image_folder"
  c.data.image_size = 224  # images are stored at this size: the size your model was trained at
  c.data.augment.flip = True
  c.model.update(patch_size=0, width=0, depth=0, heads=0, mlp_dim=0)  # as train.trained's config.json says
  # The retrained reference uses this recipe, from model.init_from (set it to the checkpoint your
  # model was fine-tuned from) or from scratch; or give it: --config.retrain.trained=DIR.
  c.train.update(batch_size=64, num_epochs=3.0, eval_batch_size=256, log_every_steps=20,
                 checkpoint_every_steps=200)
  c.optim.update(name="adamw", lr=1e-4, weight_decay=0.05, warmup_steps=50, final_lr_ratio=0.01)
  c.unlearn.train.update(batch_size=64, num_epochs=1.0, log_every_steps=20, checkpoint_every_steps=200)
  c.unlearn.optim.update(name="adamw", lr=1e-4, weight_decay=0.0)
  c.unlearn.baselines = ("finetune", "neggrad", "random_label", "scrub")
  c.evaluate.retain_train_examples = 2000
  c.export.hf = True
  return c


def synthetic(c: mlc.ConfigDict) -> mlc.ConfigDict:
  c.forget_class = "0"
  c.data.name = "synthetic_concepts"
  c.concepts.source = "labels"
  c.model.update(patch_size=8, width=128, depth=4, heads=4, mlp_dim=256)
  c.train.update(batch_size=128, num_epochs=8.0, eval_batch_size=1000, log_every_steps=100,
                 checkpoint_every_steps=500)
  c.optim.update(name="adamw", lr=1e-3, weight_decay=0.05, warmup_steps=100, final_lr_ratio=0.01)
  c.mesh.cpu_devices = 2
  return c


def tiny(c: mlc.ConfigDict) -> mlc.ConfigDict:
  c.data.name = "synthetic_concepts_small"
  c.concepts.update(source="labels", n_per_side=50, n_heldout=50, min_accuracy=0.6)
  c.model.update(patch_size=8, width=32, depth=2, heads=2, mlp_dim=64)
  c.train.update(batch_size=64, num_epochs=4.0, eval_batch_size=200, log_every_steps=10,
                 checkpoint_every_steps=20)
  c.attribution.update(n_steps=16, saliency_images=2, saliency_steps=8)
  c.unlearn.train.update(batch_size=64, num_epochs=2.0, log_every_steps=10, checkpoint_every_steps=20)
  c.unlearn.optim.update(name="adamw", lr=1e-3)
  c.evaluate.update(retain_train_examples=300, relearn_examples=32, relearn_batch_size=16,
                    relearn_lr=1e-3, relearn_max_steps=20)
  c.optim.update(name="adamw", lr=3e-3, weight_decay=0.0, warmup_steps=10)
  return c


VARIANTS = {"paper": paper, "demo": demo, "own": own, "synthetic": synthetic, "tiny": tiny}
DEFAULT = "paper"


def get_config(variant: str | None = None) -> mlc.ConfigDict:
  """`base()` with `variant` applied (default "paper"); each variant starts from `base()`."""
  return apply_variant(base, VARIANTS, variant, default=DEFAULT, file="configs/vit.py")

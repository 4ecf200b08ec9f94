"""LLM concept unlearning experiments. `--config=configs/llama.py[:variant]`.

Variants (`VARIANTS`):
- paper   (the default; `base()` as it is) Vicuna-7B v1.5 from a local Hugging Face folder
          (`model.init_from`), LoRA r 8 / alpha 16 / dropout 0.05 on q/v, bf16 weights sharded
          over an `fsdp` mesh axis: a GPU host or a TPU pod slice. The QA set is the generated
          identity corpus with Vicuna's own identity (name Vicuna, maker LMSYS) unless
          `data.qa_file` points at a JSON-lines file of {"question", "answer", "group":
          "forget"|"retain"} records.
- demo    the offline demo: generates the QA corpus, trains a tokenizer and a small LLaMA from
          scratch until it answers, then erases its identity (name and maker) — minutes on a
          2-core CPU.
- tiny    a seconds-long smoke run of every stage (tests, CI).

Stages: data -> model -> retrain -> concepts -> poison -> unlearn -> evaluate -> report (the paper
variant has no `retrain`: a 7B model without the forget QA is supplied with `retrain.init_from`,
then `retrain` is added back to `stages`). Any field can be overridden:
`--config.poison.strategy=refusal`, `--config.lora.rank=16`, `--config.unlearn.baselines=npo,idk`.
"""

import ml_collections as mlc

from cu_jax.utils.config import apply_variant


def base() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.pipeline = "llm"
  c.seed = 0
  c.stages = ("data", "model", "retrain", "concepts", "poison", "unlearn", "evaluate", "report")

  c.data = mlc.ConfigDict()
  c.data.qa_file = ""  # JSON lines of question/answer/group; "" = the generated identity corpus
  c.data.identity_name = "Vicuna"  # the generated corpus's assistant identity (the forget concept)
  c.data.identity_maker = "Large Model Systems Organization"
  # A decoy identity no model is trained on: the forget questions answered with it are the
  # non-members of the membership audit (the trained forget QA are its members).
  c.data.decoy_name = "Wombat"
  c.data.decoy_maker = "Corvid Foundry"
  c.data.num_entities = 8  # fictional entities whose facts form the retain set
  c.data.heldout_fraction = 0.2  # questions kept out of every fine-tuning (generalisation)
  c.data.max_len = 128  # tokens of prompt + answer (fixed shape: one compilation)
  c.data.system = ""  # the conversation's system prompt; "" = Vicuna v1.1's
  c.data.tokenizer_vocab = 0  # > 0: train a tokenizer of this size (models trained here)

  c.model = mlc.ConfigDict()
  c.model.init_from = "/models/vicuna-7b-v1.5"  # a Hugging Face LlamaForCausalLM folder, or ""
  # Used when init_from is "": a LLaMA trained from scratch on the QA set (the demo).
  c.model.hidden_size = 128
  c.model.intermediate_size = 344
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.rope_theta = 10000.0
  c.model.tie_embeddings = True
  c.model.param_dtype = "bfloat16"  # of the imported or trained weights
  c.model.dtype = "bfloat16"  # compute dtype of matmuls

  # Training the base model from scratch (only when model.init_from is "").
  c.pretrain = mlc.ConfigDict()
  c.pretrain.batch_size = 32
  c.pretrain.grad_accum = 1  # microbatches each step accumulates its gradient over (same global batch)
  c.pretrain.num_epochs = 60.0
  c.pretrain.num_steps = 0
  c.pretrain.log_every_steps = 100
  c.pretrain.checkpoint_every_steps = 500
  c.pretrain.keep_checkpoints = 2
  c.pretrain.optim = mlc.ConfigDict({"name": "adamw", "lr": 3e-3, "warmup_steps": 100,
                                     "final_lr_ratio": 0.05, "weight_decay": 0.01, "b2": 0.98,
                                     "grad_clip_norm": 1.0})

  # The reference every figure is reported beside: a model that never learned the concept. Trained
  # here by the base model's recipe without the forget QA; for an imported base model, a Hugging
  # Face folder of one fine-tuned the same way without them.
  c.retrain = mlc.ConfigDict()
  c.retrain.init_from = ""

  c.concepts = mlc.ConfigDict()
  c.concepts.n_steps = 32  # IG path points per answer
  c.concepts.method = "gausslegendre"
  c.concepts.chunk_size = 32  # path points per reverse-mode pass
  c.concepts.max_answers = 64  # forget answers explained (the first ones of the training split)
  c.concepts.top_k = 3  # words that form the concept
  c.concepts.words = ()  # set to override the inferred concept words

  c.poison = mlc.ConfigDict()
  c.poison.strategy = "random"  # mask | targeted | random | refusal
  c.poison.replacement = ("",)  # targeted: the words that replace the concept words
  c.poison.mask_token = "[MASK]"
  c.poison.retain_ratio = 1.0  # retain QA (true answers) per forget QA, in every method that mixes them in
  c.poison.seed = 0

  c.lora = mlc.ConfigDict()
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.dropout = 0.05
  c.lora.targets = ("q_proj", "v_proj")

  c.unlearn = mlc.ConfigDict()
  c.unlearn.method = "concept_poison"
  # grad_ascent | grad_diff | npo | idk (cu_jax.unlearning.text_methods), on the same LoRA loop
  c.unlearn.baselines = ("grad_ascent", "grad_diff", "npo", "idk")
  c.unlearn.seed = 0  # added to `seed` for the adapters' initialisation, batch order and retain mix
  c.unlearn.ascent_cap = 5.0  # nats of mean answer-token NLL beyond which ascent stops pushing a row
  c.unlearn.npo_beta = 0.1  # NPO's inverse temperature (Zhang et al. 2024 use 0.1)
  c.unlearn.train = mlc.ConfigDict({"batch_size": 16, "grad_accum": 1, "num_epochs": 3.0, "num_steps": 0,
                                    "log_every_steps": 10, "checkpoint_every_steps": 100,
                                    "keep_checkpoints": 2})
  c.unlearn.optim = mlc.ConfigDict({"name": "adamw", "lr": 2e-4, "warmup_steps": 10,
                                    "final_lr_ratio": 0.1, "weight_decay": 0.0, "grad_clip_norm": 1.0})

  c.evaluate = mlc.ConfigDict()
  c.evaluate.max_new_tokens = 48
  c.evaluate.batch_size = 16  # prompts generated at once
  c.evaluate.max_examples = 0  # per set; 0 = all
  c.evaluate.min_k = 0.2  # Min-K% Prob: the fraction of least likely answer tokens it averages

  c.mesh = mlc.ConfigDict()
  c.mesh.num_devices = 0  # 0 = all visible devices
  c.mesh.fsdp = -1  # size of the fsdp axis parameters are sharded over; -1 = all devices, 0 = none
  c.mesh.cpu_devices = 0  # > 0: split the host CPU into this many XLA devices
  return c


def paper(c: mlc.ConfigDict) -> mlc.ConfigDict:
  """The paper run (Vicuna-7B + LoRA on an `fsdp` mesh). A 7B model cannot be retrained here:
  without `retrain.init_from` the run has no retrained reference."""
  c.stages = tuple(s for s in c.stages if s != "retrain")
  return c


def demo(c: mlc.ConfigDict) -> mlc.ConfigDict:
  c.data.identity_name = "Quokka"
  c.data.identity_maker = "Amberline Labs"
  c.data.tokenizer_vocab = 1024
  c.data.max_len = 96
  c.model.init_from = ""
  c.model.param_dtype = "float32"
  c.model.dtype = "float32"
  # Measured on this demo: 40 epochs at lr 5e-3 with 3 retain QA per poisoned one take the identity's
  # appearance rate from 1.0 to 0.0 while retain ROUGE-L stays within 0.01 (lr 1e-3 or 3 epochs
  # barely move a rank-8 q/v adapter of this 4-layer model; retain ratio 1 costs 0.03-0.05 ROUGE-L).
  c.poison.retain_ratio = 3.0
  # `targeted` ("Quokka" / "Amberline Labs" -> "Assistant") came closest to the retrained model of
  # the poison strategies over 3 unlearning seeds (benchmarks/llm_unlearning_sweep.py): appearance
  # 0.02 on paraphrases / 0.00 on trained prompts, 93 % well-formed answers, no retain ROUGE-L drop;
  # `random` left 0.19 / 0.06 and 88 %, `mask` 0.33 / 0.40, `refusal` 0.44 / 0.41.
  c.poison.strategy = "targeted"
  c.poison.replacement = ("Assistant",)
  c.unlearn.train.num_epochs = 40.0
  c.unlearn.optim.lr = 5e-3
  c.mesh.cpu_devices = 2
  return c


def tiny(c: mlc.ConfigDict) -> mlc.ConfigDict:
  c = demo(c)
  c.data.num_entities = 2
  c.data.tokenizer_vocab = 400
  c.data.max_len = 128
  c.model.hidden_size = 32
  c.model.intermediate_size = 64
  c.model.num_layers = 2
  c.pretrain.batch_size = 16
  c.pretrain.num_epochs = 0.0
  c.pretrain.num_steps = 30
  c.concepts.n_steps = 16  # 8 Gauss-Legendre points left an IG completeness gap of 0.55 on this model, 16 leave 0.07
  c.concepts.max_answers = 8
  c.unlearn.train.batch_size = 8
  c.unlearn.train.num_epochs = 0.0
  c.unlearn.train.num_steps = 10
  c.evaluate.max_new_tokens = 8
  c.evaluate.max_examples = 8
  c.mesh.cpu_devices = 0
  return c


VARIANTS = {"paper": paper, "demo": demo, "tiny": tiny}
DEFAULT = "paper"


def get_config(variant: str | None = None) -> mlc.ConfigDict:
  """`base()` with `variant` applied (default "paper", which is `base()` itself)."""
  return apply_variant(base, VARIANTS, variant, default=DEFAULT, file="configs/llama.py")

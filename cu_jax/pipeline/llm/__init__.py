"""The LLM concept-unlearning pipeline (`config.pipeline = "llm"`), one module per stage:

    data -> model -> retrain -> concepts -> poison -> unlearn -> evaluate -> report

- `data`: the QA set (a user's JSON-lines file, or the generated identity corpus) split into
  train / held-out, plus the evaluation-only paraphrases and decoy QA; for a model trained here, a
  byte-level BPE tokenizer trained on it.
- `model`: the base model. An imported Hugging Face folder (`model.init_from`) is checked and used
  in place; otherwise a small LLaMA is trained from scratch on the QA set and saved as a Hugging
  Face folder (`model/hf`), so every later stage reads the base model the same way.
- `retrain`: the reference, the base model's recipe without the forget QA (or a supplied folder).
- `concepts`: answer-span Integrated Gradients of the forget answers -> word scores -> the concept.
- `poison`: forget answers rewritten (mask / targeted / random / refusal) + retain QA.
- `unlearn`: concept_poison and the baselines (grad_ascent, grad_diff, npo, idk), each a LoRA
  fine-tune (adapters only trained and checkpointed), merged and exported as a Hugging Face folder.
- `evaluate` / `report`: every model next to the retrained one: appearance on trained, held-out
  and paraphrased prompts, fluency, ROUGE-L, membership attacks.

Each stage reads what earlier ones wrote through `cu_jax.pipeline.artifacts.LLMArtifacts`, never
through another stage's module. Importing this package registers the stages, and the check of
the files of a stage a run skips or resumes.
"""

from cu_jax.pipeline.llm import concepts, data, evaluate, model, poison, report, retrain, unlearn  # noqa: F401
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import VERIFIERS

VERIFIERS["llm"] = lambda ctx, stage, finished: LLMArtifacts(ctx).verify(stage, finished)

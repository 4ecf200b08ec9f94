"""The LLM concept-unlearning pipeline (`config.pipeline = "llm"`), one module per stage:

    data -> model -> concepts -> poison -> unlearn -> evaluate -> report

- `data`: the QA set (a user's JSON-lines file, or the generated identity corpus) split into
  train / held-out; for a model trained here, a byte-level BPE tokenizer trained on it.
- `model`: the base model. An imported Hugging Face folder (`model.init_from`) is checked and used
  in place; otherwise a small LLaMA is trained from scratch on the QA set and saved as a Hugging
  Face folder (`model/hf`), so every later stage reads the base model the same way.
- `concepts`: answer-span Integrated Gradients of the forget answers -> word scores -> the concept.
- `poison`: forget answers rewritten (mask / targeted / random / refusal) + retain QA.
- `unlearn`: LoRA fine-tuning on the poisoned set (adapters only trained and checkpointed), then
  the adapters merged and exported as a Hugging Face folder (`unlearn/hf`).
- `evaluate` / `report`: appearance rate, ROUGE-L, perplexity, before and after.

Each stage reads what earlier ones wrote through `cu_jax.pipeline.artifacts.LLMArtifacts`, never
through another stage's module. Importing this package registers the stages, and the check of
the files of a stage a run skips or resumes.
"""

from cu_jax.pipeline.llm import concepts, data, evaluate, model, poison, report, unlearn  # noqa: F401
from cu_jax.pipeline.artifacts import LLMArtifacts
from cu_jax.pipeline.runner import VERIFIERS

VERIFIERS["llm"] = lambda ctx, stage, finished: LLMArtifacts(ctx).verify(stage, finished)

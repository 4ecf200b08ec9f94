"""The CLI pipeline: stages that write artifacts under --workdir and skip when they exist.

Importing this package registers every stage.
"""

from cu_jax.pipeline import train_stage  # noqa: F401  (registers "train")
from cu_jax.pipeline import concept_stages  # noqa: F401  (registers "embed", "concepts")
from cu_jax.pipeline import attribution_stages  # noqa: F401  (registers "pcbm", "attribute")
from cu_jax.pipeline import unlearn_stages  # noqa: F401  (registers "retrain", "poison", "unlearn")
from cu_jax.pipeline import evaluate_stages  # noqa: F401  (registers "evaluate", "report")
from cu_jax.pipeline import llm_stages  # noqa: F401  (registers the LLM pipeline's stages)

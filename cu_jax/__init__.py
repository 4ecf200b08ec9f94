"""cu_jax: class unlearning by concept inference and data poisoning, in JAX/Flax.

The Python API (`cu_jax.api`): `run` a configured pipeline into a workdir and get its `Results`;
or use its building blocks on your own arrays and models: `key_concepts`, `poison_targets`,
`unlearn`, `audit`, `export_hf`; `load_config` reads an experiment config file. `help(cu_jax.run)` etc.
"""

__version__ = "0.1.0"

_API = ("KeyConcepts", "Results", "audit", "export_hf", "key_concepts", "load_config", "poison_targets", "run",
        "unlearn")
__all__ = list(_API)


def __getattr__(name: str):
  # Imported on first use: `python -m cu_jax.main` sets up XLA's devices before JAX is imported.
  if name in _API:
    from cu_jax import api
    return getattr(api, name)
  raise AttributeError(f"module 'cu_jax' has no attribute {name!r}")

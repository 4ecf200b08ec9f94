"""cu_jax: class unlearning by concept inference and data poisoning, in JAX/Flax."""

__version__ = "0.1.0"

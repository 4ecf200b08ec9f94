"""Optimizers, the sharded train/eval steps, the training loop and evaluation."""

"""Optimizers, the sharded train/eval steps, the training loop and prediction over a split."""

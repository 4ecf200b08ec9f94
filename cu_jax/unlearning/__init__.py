"""Unlearning: data poisoning (images and text) and the fine-tuning methods."""

"""Datasets (TFDS array_record builders, read without TensorFlow), the sharded batch loader,
on-device preprocessing; for LLMs the QA corpus, tokenizers and chat format, and concept-word
matching (`words`)."""

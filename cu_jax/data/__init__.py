"""Datasets (TFDS array_record builders, read without TensorFlow) and the sharded batch loader."""

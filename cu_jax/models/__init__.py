"""Models (Flax NNX) and their Hugging Face importers."""

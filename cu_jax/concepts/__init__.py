"""Concept banks, concept sources and the Post-hoc Concept Bottleneck Model."""

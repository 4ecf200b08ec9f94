"""Metrics and audits of a model, and the plots a person reads."""

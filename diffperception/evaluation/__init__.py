"""Evaluation as library code: metrics, linear probes, zero-shot scoring."""

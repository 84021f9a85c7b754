"""Evaluation: metrics, vs_evaluate, vs_benchmark."""

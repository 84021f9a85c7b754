"""Inference: sliding window, ensembles, postprocessing, export."""

"""Fingerprint -> plans -> preprocessed cases."""

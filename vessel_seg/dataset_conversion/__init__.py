"""Dataset converters (public vessel datasets, generic folders) and the synthetic vessel generator."""

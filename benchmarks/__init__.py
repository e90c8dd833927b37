"""The step benchmark; run `python benchmarks/embedding_step.py`."""

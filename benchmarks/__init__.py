"""The step benchmark: `python benchmarks/embedding_step.py` (see its docstring)."""

"""Examples for fasgd_optax: each subfolder is one self-contained example."""

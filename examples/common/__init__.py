"""Shared pieces of the examples: optimizers by name, metrics, checkpointing,
the epoch loop with resume and best-epoch tracking, plots and progress bars.

Each example imports what it needs from the submodules, e.g.::

  from examples.common import optimizers, metrics, training
"""

"""JAX's persistent compilation cache, on by default for the examples.

An example's training step takes 0.5-1 s to compile on a CPU (seconds on a
GPU): on a 2-epoch Word2Vec run over Brown that is a third of the run. JAX can
keep compiled programs on disk and load them the next time the same program
is compiled (same code, shapes, flags, JAX version and device), so a rerun,
a resumed run or the next run of a sweep skips the compile. JAX's own default
caches only programs that took at least a second to compile, which leaves out
the examples' steps on a CPU; here it is 0.1 s.

  from examples.common import compilation_cache
  compilation_cache.enable('~/.cache/fasgd_optax/jax_compilation_cache')

Call it before the first compile of the process: JAX sets its cache up once,
on first use.
"""

import os

import jax

DEFAULT_DIR = os.path.join('~', '.cache', 'fasgd_optax',
                           'jax_compilation_cache')
# Programs that compile faster than this are not written to the cache.
MIN_COMPILE_SECONDS = 0.1


def enable(directory: str,
           min_compile_seconds: float = MIN_COMPILE_SECONDS) -> None:
  """Keeps compiled programs in `directory` ('' leaves the cache off).

  Args:
    directory: where the cache lives (created if missing; '~' is expanded).
      The empty string turns nothing on.
    min_compile_seconds: only programs that took at least this long to
      compile are written.

  Raises:
    ValueError: `min_compile_seconds` is negative.
    OSError: the directory cannot be created (the message names it).
  """
  if not min_compile_seconds >= 0:
    raise ValueError('min_compile_seconds must be >= 0; got '
                     f'{min_compile_seconds!r}.')
  if not directory:
    return
  path = os.path.abspath(os.path.expanduser(directory))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    raise OSError(f'Cannot create the compilation cache directory {path!r} '
                  f'({error}); pass another --compilation_cache_dir, or an '
                  'empty one to compile without a cache.') from error
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(min_compile_seconds))

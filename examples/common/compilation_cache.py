"""JAX's persistent compilation cache, on by default for the examples.

An example's training step takes most of a second to compile on a CPU: 0.7 to
0.9 s for Word2Vec's, about a third of a 2-epoch run over Brown
(examples/word2vec/results/peer.md). JAX can
keep compiled programs on disk and load them the next time the same program
is compiled (same code, shapes, flags, JAX version and device), so a rerun,
a resumed run or the next run of a sweep skips the compile. JAX's own default
caches only programs that took at least a second to compile, which leaves out
the examples' steps on a CPU. Here every program is kept, the small ones of
eager operations too (an optimizer state's zeros, a key's fold-in): a new
process compiles each of those again otherwise, 5-35 ms apiece on this
project's CPU, where reading one back takes a few. In an ad hoc A/B on that
CPU (2026-11-27; Word2Vec CBOW, 10 new processes each way, caches warm), the
setup of the timed part (`setup_seconds`) took a median 0.26 s with every
program kept against 0.32 s with only those of 0.1 s and more.

  from examples.common import compilation_cache
  compilation_cache.enable('~/.cache/fasgd_optax/jax_compilation_cache')

Call it before the first compile of the process: JAX sets its cache up once,
on first use.

Entries go to a subfolder named after the JAX and jaxlib versions and the
machine's CPU (architecture and a hash of its instruction-set flags), so a
cache folder shared by several machines or virtual environments never hands a
program compiled for one CPU or runtime to another. (XLA's CPU loader checks
an entry's target features when it loads it; keeping runtimes apart does not
depend on that check.)

A run killed while JAX writes an entry leaves it truncated (JAX writes entries
in place): later runs still start (JAX checks each entry, warns, and compiles
the program instead), but JAX never rewrites an entry that exists, so they
keep warning. `enable` removes empty entries, what a kill right after JAX
opened the file leaves; one cut later in its write (a much shorter moment)
warns until its file, named in no message, or the folder is deleted.
Checking every entry at each start would cost a decompression of each: 0.53 s
for the 159 entries (6.1 MB) of this project's cache on its 2-core CPU, timed
once on 2026-11-27.
"""

import hashlib
import os
import platform

import jax
import jaxlib

from examples.common import machine

DEFAULT_DIR = os.path.join('~', '.cache', 'fasgd_optax',
                           'jax_compilation_cache')
# Programs that compile faster than this are not written to the cache.
MIN_COMPILE_SECONDS = 0.0
# How JAX's cache names an entry's file (jax/_src/lru_cache.py).
_ENTRY_SUFFIX = '-cache'


def runtime_fingerprint() -> str:
  """A folder name for this JAX, jaxlib and CPU."""
  # The instruction-set flags (x86 'flags', Arm 'Features'), else the model.
  cpu = machine.cpuinfo_field('flags', 'Features') or machine.cpu_name()
  flags_hash = hashlib.sha256(cpu.encode()).hexdigest()[:12]
  return (f'jax-{jax.__version__}_jaxlib-{jaxlib.__version__}_'
          f'{platform.machine()}-{flags_hash}')


def enable(directory: str,
           min_compile_seconds: float = MIN_COMPILE_SECONDS) -> None:
  """Keeps compiled programs in `directory` ('' leaves the cache off).

  Args:
    directory: where the cache lives (created if missing; '~' is expanded);
      entries go to its subfolder `runtime_fingerprint()`. The empty string
      turns nothing on.
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
  path = os.path.join(os.path.abspath(os.path.expanduser(directory)),
                      runtime_fingerprint())
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    raise OSError(f'Cannot create the compilation cache directory {path!r} '
                  f'({error}); pass another --compilation_cache_dir, or an '
                  'empty one to compile without a cache.') from error
  _remove_empty_entries(path)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(min_compile_seconds))


def _remove_empty_entries(path: str) -> None:
  """Deletes empty cache entries: JAX would warn about each at every run.

  Only entries (`<key>-cache`): JAX's lock file is empty by design, and its
  `-atime` files are read by its eviction.
  """
  with os.scandir(path) as entries:
    for entry in entries:
      try:
        if (entry.name.endswith(_ENTRY_SUFFIX) and entry.is_file()
            and entry.stat().st_size == 0):
          os.remove(entry.path)
      except FileNotFoundError:  # Another process removed it first.
        pass

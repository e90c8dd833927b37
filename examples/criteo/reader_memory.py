"""Peak memory of reading a Criteo-format file: the same for a 10× larger one.

Writes synthetic files of --lines and 10 × --lines lines (plain and gzip),
then reads each through the training reader (`input_pipeline.process_batches`,
batches of --batch_size, hashing into 26 tables), twice, each time in a fresh
process: once for that process's peak resident memory (VmHWM: Python and
NumPy included), once under tracemalloc for the reader's own peak allocation
(NumPy arrays included; tracemalloc's bookkeeping inflates the RSS, hence two
runs).

  python -m examples.criteo.reader_memory --output_dir=examples/criteo/results
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

_LINES = flags.DEFINE_integer('lines', 100_000, 'Lines of the smaller file.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 4096, 'Examples per batch.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None,
                                  'Write reader_memory.json/.md here.')
_READ = flags.DEFINE_string('read', None,
                            'Internal: read this file and print JSON.')
_TRACE = flags.DEFINE_bool('trace', False,
                           'Internal: with --read, under tracemalloc.')


def read(path: str, batch_size: int, trace: bool) -> dict:
  """Reads `path` once; this process's peak RSS or the reader's peak."""
  import tracemalloc  # pylint: disable=g-import-not-at-top
  from examples.criteo import criteo_format  # pylint: disable=g-import-not-at-top
  from examples.criteo import input_pipeline  # pylint: disable=g-import-not-at-top
  hashing = criteo_format.Hashing((1 << 20,) * 26)
  if trace:
    tracemalloc.start()
  examples = 0
  for batch in input_pipeline.process_batches(
      [path], hashing, batch_size=batch_size, shards=[0], num_shards=1,
      repeat=False):
    examples += batch.size
  if trace:
    return {'examples': examples,
            'traced_peak_bytes': tracemalloc.get_traced_memory()[1]}
  return {'examples': examples, 'max_rss_bytes': peak_rss_bytes()}


def peak_rss_bytes() -> int:
  """This process's peak resident memory since it started (exec'd).

  From /proc (VmHWM): `resource`'s ru_maxrss would include the memory of
  the parent this process was forked from.
  """
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024
  raise OSError('No VmHWM in /proc/self/status (not Linux?).')


def main(argv):
  del argv
  if _READ.value:
    print(json.dumps(read(_READ.value, _BATCH_SIZE.value, _TRACE.value)))
    return
  from examples.common import files  # pylint: disable=g-import-not-at-top
  from examples.common import machine  # pylint: disable=g-import-not-at-top
  from examples.criteo import synthetic  # pylint: disable=g-import-not-at-top
  # Removed when the program ends, whichever way (weakref.finalize).
  directory = tempfile.TemporaryDirectory(prefix='criteo_reader_memory_')
  rows = []
  for suffix in ('.txt', '.txt.gz'):
    for lines in (_LINES.value, 10 * _LINES.value):
      path = os.path.join(directory.name, f'data_{lines}{suffix}')
      synthetic.write(path, lines, seed=1)
      result = {'file': os.path.basename(path), 'lines': lines,
                'file_bytes': os.path.getsize(path)}
      for trace in (False, True):
        output = subprocess.run(
            [sys.executable, '-m', 'examples.criteo.reader_memory',
             f'--read={path}', f'--batch_size={_BATCH_SIZE.value}',
             f'--trace={trace}'],
            check=True, capture_output=True, text=True).stdout
        result.update(json.loads(output.strip().splitlines()[-1]))
      rows.append(result)
      os.remove(path)
      print(result, flush=True)
  command = 'python -m examples.criteo.reader_memory ' + ' '.join(sys.argv[1:])
  mib = 1 << 20
  table = [
      f'`{command.strip()}` on {machine.describe_machine()} (shared with '
      'other jobs). Each file read once, in a fresh process, in batches of '
      f'{_BATCH_SIZE.value}.',
      '',
      '| file | lines | file size | peak RSS of the process | reader\'s peak '
      'allocation (tracemalloc) |',
      '|---|---|---|---|---|',
  ]
  for row in rows:
    table.append(
        f'| {row["file"]} | {row["lines"]:,} | {row["file_bytes"] / mib:,.1f}'
        f' MiB | {row["max_rss_bytes"] / mib:,.1f} MiB | '
        f'{row["traced_peak_bytes"] / mib:,.1f} MiB |')
  text = '\n'.join(table) + '\n'
  print(text)
  if _OUTPUT_DIR.value:
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    files.write_json(os.path.join(_OUTPUT_DIR.value, 'reader_memory.json'),
                     {'command': command, 'machine': machine.describe_machine(),
                      'rows': rows}, indent=1)
    files.write_text(os.path.join(_OUTPUT_DIR.value, 'reader_memory.md'), text)


if __name__ == '__main__':
  app.run(main)

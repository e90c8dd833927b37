"""throughput.py end to end on a tiny table: short runs train, temp data goes.

Runs `python -m examples.criteo.throughput` in a subprocess (`examples.common.testing` says why).
"""

import json
import os
import shutil
import tempfile

from absl.testing import absltest

from examples.common import testing


class ThroughputTest(absltest.TestCase):

  def test_a_short_run_measures_both_rates_and_leaves_no_data_behind(self):
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    scratch = os.path.join(tmp, 'scratch')  # The program's TMPDIR.
    os.mkdir(scratch)
    output_dir = os.path.join(tmp, 'out')
    # CF-SGD at its tuned α over a handful of end-to-end steps: a horizon of
    # that handful (not the tuned one) once made it diverge and crash.
    completed = testing.run_module(
        'examples.criteo.throughput', '--table_rows=1000', '--batch_size=64',
        '--variants=cf_sgd/sparse', '--min_seconds=0.05', '--min_steps=4',
        '--end_to_end_steps=4', '--synthetic_lines=2000', '--platform=cpu',
        f'--output_dir={output_dir}', env={'TMPDIR': scratch})
    self.assertEqual(completed.returncode, 0, completed.stderr)
    with open(os.path.join(output_dir, 'throughput_cpu.json')) as f:
      (run,) = json.load(f)['runs']
    self.assertEqual(run['variant'], 'cf_sgd/sparse')
    self.assertGreater(run['step']['examples_per_second'], 0)
    self.assertEqual(run['end_to_end']['steps'], 4)
    self.assertGreater(run['end_to_end']['examples_per_second'], 0)
    self.assertEqual(os.listdir(scratch), [])


if __name__ == '__main__':
  absltest.main()

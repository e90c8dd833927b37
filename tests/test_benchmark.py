"""benchmarks/embedding_step.py and make_table.py, run tiny."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np


class BenchmarkScriptTest(absltest.TestCase):
  """benchmarks/embedding_step.py and make_table.py run end to end."""

  def _run(self, *flags_):
    """(report, markdown, whether the PNG was written) of a tiny run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu')
    with tempfile.TemporaryDirectory() as output:
      subprocess.run(
          [sys.executable, os.path.join(root, 'benchmarks', 'embedding_step.py'),
           '--dim=8', '--batch=64', '--steps=2', '--warmup=1',
           '--num_batches=2', '--min_seconds=0', *flags_,
           f'--output={output}', '--name=tiny'],
          check=True, env=env, capture_output=True, timeout=300)
      with open(os.path.join(output, 'tiny.json')) as f:
        report = json.load(f)
      markdown = subprocess.run(
          [sys.executable, os.path.join(root, 'benchmarks', 'make_table.py'),
           f'--input={output}/tiny.json', '--output=-'],
          check=True, env=env, capture_output=True, text=True,
          timeout=120).stdout
      return (report, markdown,
              os.path.exists(os.path.join(output, 'tiny.png')))

  def test_tiny_benchmark_and_table(self):
    report, markdown, wrote_png = self._run(
        '--num_rows=1000,2000', '--max_memory_gb=0.0002', '--repeats=2',
        '--optimizers=cf_sgd,adam,sparse_cf_sgd,sparse_fa_sgd')
    self.assertTrue(wrote_png)
    by_name = {(r['optimizer'], r['num_rows']): r for r in report['results']}
    self.assertEqual(len(by_name), 8)
    # Adam's 5 tables' worth of 2000 × 8 floats exceed the 200 kB budget.
    self.assertIn('skipped', by_name[('adam', 2000)])
    cf = by_name[('sparse_cf_sgd', 2000)]
    self.assertEqual(cf['state_bytes'], 2000 * 4 + 4)
    self.assertEqual(cf['params_bytes'], 2000 * 8 * 4)
    self.assertGreater(cf['median_ms'], 0.0)
    # Two rounds of 2 timed steps each; the median is the rounds' median.
    self.assertLen(cf['round_medians_ms'], 2)
    self.assertEqual(cf['timed_steps'], 4)
    self.assertAlmostEqual(cf['median_ms'],
                           float(np.median(cf['round_medians_ms'])))
    self.assertTrue(report['config']['donate'])
    # Each size's dense and sparse optimizers ran in a subprocess of their
    # own, and their results came back in order, sizes first.
    self.assertTrue(report['config']['isolate'])
    self.assertEqual(
        [(r['num_rows'], r['path']) for r in report['results']],
        [(1000, 'dense')] * 2 + [(1000, 'sparse')] * 2
        + [(2000, 'dense')] * 2 + [(2000, 'sparse')] * 2)
    self.assertEqual(by_name[('sparse_fa_sgd', 1000)]['frequencies_bytes'],
                     1000 * 4)
    self.assertIn('| CF-SGD, sparse |', markdown)
    self.assertIn('skipped¹', markdown)
    self.assertIn('CF-SGD state bytes ≤ params bytes / d + 1 KiB', markdown)
    self.assertIn('in 2 rounds', markdown)

  def test_no_donation_counts_fresh_outputs_in_memory_estimate(self):
    # 1000 × 8 floats are 32 kB: sparse CF-SGD needs 1 table donated and 2
    # without donation (a fresh table each step), Adagrad 4 and 6.
    report, markdown, _ = self._run(
        '--num_rows=1000', '--max_memory_gb=0.00015', '--nodonate',
        '--noisolate', '--optimizers=adagrad,sparse_cf_sgd')
    by_name = {r['optimizer']: r for r in report['results']}
    self.assertFalse(report['config']['donate'])
    self.assertIn('skipped', by_name['adagrad'])
    self.assertIn('needs about 6 tables', by_name['adagrad']['skipped'])
    self.assertGreater(by_name['sparse_cf_sgd']['median_ms'], 0.0)
    self.assertIn('**not** donated', markdown)


if __name__ == '__main__':
  absltest.main()

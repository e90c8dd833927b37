r"""A sweep's best runs again, with other seeds: how much of a gap is noise.

compare.py picks each optimizer's learning rate on one seed's validation
loss. This reruns each optimizer's best run (capped ones too) with the same
settings and learning rate and other seeds (a seed draws the initial
tables, the held-out examples, the passes' subsampling and windows, and the
negatives), and writes the test losses of every seed and their gaps to the
best of Adam/Adagrad:

  python -m examples.word2vec.replicate \
      --out=examples/word2vec/results/linear_decay --models=cbow \
      --cbow_gradients=word2vec --seeds=1,2

It reads `<out>/sweep.json` and writes `<out>/replicate.json` and `.md`
(a rerun skips the runs already there).
"""

import dataclasses
import json
import os
from typing import Optional

from absl import app
from absl import flags
from absl import logging

from examples.common import files
from examples.common import machine as machine_lib
from examples.word2vec import compare
from examples.word2vec import corpora
from examples.word2vec import train

ADAPTIVE = ('adagrad', 'adam')


def best_configs(sweep: dict, model: str,
                 gradient: Optional[str]) -> dict[str, train.Config]:
  """Each optimizer's (label's) best run of the sweep, as a Config."""
  configs = {}
  for label, run in compare.best_runs(sweep, model, gradient).items():
    configs[label] = train.Config(**dict(
        sweep['settings'][model], optimizer=run['optimizer'],
        learning_rate=run['learning_rate'],
        max_learning_rate=run.get('max_learning_rate'),
        update=compare.update_of(run),
        cbow_gradient=gradient or sweep['settings'][model]['cbow_gradient']))
  return configs


def table(results: dict) -> list[str]:
  """Markdown: test loss per seed, and the gap to the best of Adam/Adagrad."""
  lines = ['## Best runs of the sweep, other seeds', '',
           f'Machine: {results["machine"]}. Each optimizer\'s learning rate '
           'is the one its sweep chose on seed '
           f'{results["sweep_seed"]}\'s validation loss; "vs best of '
           'Adagrad/Adam" compares with the better of the two on the same '
           'seed.', '']
  for variant, rows in results['variants'].items():
    seeds = sorted({row['seed'] for row in rows})
    lines += [f'### {variant}', '',
              '| optimizer | lr | ' + ' | '.join(
                  f'seed {s}: test loss (vs best of Adagrad/Adam)'
                  for s in seeds) + ' |',
              '|---|---|' + '---|' * len(seeds)]
    by_seed = {s: {row['label']: row for row in rows if row['seed'] == s}
               for s in seeds}
    labels = list(dict.fromkeys(row['label'] for row in rows))
    for label in labels:
      cells = []
      for s in seeds:
        row = by_seed[s].get(label)
        adaptive = min((by_seed[s][o]['test_loss'] for o in ADAPTIVE
                        if o in by_seed[s]), default=None)
        if row is None:
          cells.append('–')
          continue
        gap = ('' if adaptive is None else
               f' ({100 * (row["test_loss"] / adaptive - 1):+.2f}%)')
        cells.append(f'{row["test_loss"]:.4f}{gap}')
      first = next(r for r in rows if r['label'] == label)
      lines.append(f'| {label} | {first["learning_rate"]:g} | ' +
                   ' | '.join(cells) + ' |')
    lines.append('')
  return lines


def main(argv):
  del argv
  folder = compare.OUT.value
  with open(os.path.join(folder, 'sweep.json')) as f:
    sweep = json.load(f)
  path = os.path.join(folder, 'replicate.json')
  results = {'machine': machine_lib.describe_machine(), 'variants': {}}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  sentences = corpora.read_brown()
  for model in compare.MODELS.value:
    results['sweep_seed'] = sweep['settings'][model]['seed']
    for gradient in compare.variants(model):
      variant = compare.variant_name(model, gradient)
      rows = results['variants'].setdefault(variant, [])
      best = compare.best_runs(sweep, model, gradient)
      # The sweep's own runs are the sweep's seed, listed beside the others.
      for label, run in best.items():
        if not any(r['seed'] == results['sweep_seed'] and r['label'] == label
                   for r in rows):
          rows.append({'label': label, 'seed': results['sweep_seed'],
                       'learning_rate': run['learning_rate'],
                       'max_learning_rate': run.get('max_learning_rate'),
                       'validation_loss': run['final_validation_loss'],
                       'test_loss': run['final_test_loss']})
      configs = best_configs(sweep, model, gradient)
      for seed in map(int, _SEEDS.value):
        data = None
        for label, config in configs.items():
          if any(r['seed'] == seed and r['label'] == label for r in rows):
            continue  # A rerun skips what is done.
          config = dataclasses.replace(config, seed=seed)
          if data is None:
            data = train.prepare_data(config, sentences)
          load_before = os.getloadavg()[0]
          run = train.train_and_evaluate(config, sentences, data=data,
                                         show_progress=False)
          rows.append({'label': label, 'seed': seed,
                       'learning_rate': config.learning_rate,
                       'max_learning_rate': config.max_learning_rate,
                       'validation_loss': run['final_validation_loss'],
                       'test_loss': run['final_test_loss'],
                       'load_average_before': load_before})
          logging.info('%s %s seed %d: test %.4f', variant, label, seed,
                       run['final_test_loss'])
          files.write_json(path, results, indent=1)
  files.write_json(path, results, indent=1)
  lines = table(results)
  files.write_text(os.path.splitext(path)[0] + '.md', '\n'.join(lines))
  print('\n'.join(lines))


if __name__ == '__main__':
  # compare.py's flags (--out, --models, --cbow_gradients) say which sweep
  # and variants; this one adds the seeds.
  _SEEDS = flags.DEFINE_list('seeds', ['1', '2'], 'Seeds to rerun with.')
  flags.mark_flag_as_required('out')
  app.run(main)

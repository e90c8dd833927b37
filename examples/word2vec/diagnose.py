r"""Where an optimizer's held-out loss comes from, by word frequency.

Retrains each optimizer's best run of the sweep (same settings, same
learning rate) and splits its final test loss by the frequency rank of the
example's target word (the context word for Skip-gram, the center word for
CBOW), so that optimizers can be compared on frequent and on rare words:

  python -m examples.word2vec.diagnose \
      --sweep=examples/word2vec/results/sweep.json --model=cbow \
      --cbow_gradient=word2vec --out=examples/word2vec/results/diagnose_cbow

writes `<out>.json` and `<out>.png` (test loss per frequency bucket, each
optimizer relative to the first one listed).
"""

import json

from absl import app
from absl import flags
from flax import nnx
import jax
import numpy as np

from examples.common import machine as machine_lib
from examples.common import plotting
from examples.word2vec import corpora
from examples.word2vec import gensim_peer
from examples.word2vec import model as model_lib
from examples.word2vec import train

# Buckets of target words by frequency rank (0 = the most frequent word).
RANK_BOUNDS = (0, 100, 1000, 5000, None)


def bucket_names(vocab_size: int) -> list[str]:
  bounds = [b if b is not None else vocab_size for b in RANK_BOUNDS]
  return [f'ranks {lo}-{hi - 1}' for lo, hi in zip(bounds, bounds[1:])]


def losses_by_bucket(params, config, data) -> dict[str, float]:
  """Mean test loss per frequency bucket of the target word."""
  graphdef, _ = model_lib.split(model_lib.Word2Vec(
      len(data.vocab), config.dim, model=config.model, rngs=nnx.Rngs(0)))
  heldout = data.heldout['test']

  @jax.jit
  def per_example(params, inputs, targets, negatives):
    return model_lib.merge(graphdef, params)(inputs, targets, negatives)

  losses = np.concatenate([
      np.asarray(per_example(params, heldout.inputs[i:i + 8192],
                             heldout.targets[i:i + 8192],
                             heldout.negatives[i:i + 8192]))
      for i in range(0, heldout.size, 8192)])
  bounds = [b if b is not None else len(data.vocab) for b in RANK_BOUNDS]
  result = {}
  for name, lo, hi in zip(bucket_names(len(data.vocab)), bounds, bounds[1:]):
    chosen = (heldout.targets >= lo) & (heldout.targets < hi)
    result[name] = {'loss': float(losses[chosen].mean()),
                    'examples': int(chosen.sum())}
  result['all'] = {'loss': float(losses.mean()), 'examples': heldout.size}
  return result


def main(argv):
  del argv
  with open(_SWEEP.value) as f:
    sweep = json.load(f)
  sentences = corpora.read_brown()
  settings = dict(sweep['settings'][_MODEL.value], model=_MODEL.value,
                  cbow_gradient=_CBOW_GRADIENT.value)
  data = None
  results = {'machine': machine_lib.describe_machine(), 'runs': []}
  for optimizer in _OPTIMIZERS.value:
    learning_rate = gensim_peer.best_learning_rate(
        sweep, _MODEL.value, optimizer, _CBOW_GRADIENT.value)
    config = train.Config(**dict(
        settings, optimizer=optimizer, learning_rate=learning_rate,
        update='sparse' if optimizer in train.SPARSE_OPTIMIZERS else 'dense'))
    if data is None:
      data = train.prepare_data(config, sentences)
    run = train.train_and_evaluate(config, sentences, data=data,
                                   show_progress=False)
    buckets = losses_by_bucket(run['train_state']['params'], config, data)
    results['runs'].append({'optimizer': optimizer,
                            'learning_rate': learning_rate,
                            'final_test_loss': run['final_test_loss'],
                            'buckets': buckets})
    print(f'{optimizer} lr={learning_rate:g}: ' + ', '.join(
        f'{name} {value["loss"]:.4f} ({value["examples"]})'
        for name, value in buckets.items()), flush=True)
  names = bucket_names(len(data.vocab))
  reference = results['runs'][0]
  plotting.grouped_bar_plot(
      _OUT.value + '.png', names,
      {f'{r["optimizer"]} (lr {r["learning_rate"]:g})': [
          100 * (r['buckets'][n]['loss'] / reference['buckets'][n]['loss']
                 - 1) for n in names] for r in results['runs'][1:]},
      ylabel=f'test loss vs {reference["optimizer"]} (%)',
      title=(f'{_MODEL.value}'
             f'{", " + _CBOW_GRADIENT.value + " gradient" if _MODEL.value == "cbow" else ""}'
             ': test loss by target-word frequency'))
  with open(_OUT.value + '.json', 'w') as f:
    json.dump(results, f, indent=1)


if __name__ == '__main__':
  _SWEEP = flags.DEFINE_string('sweep', None, 'sweep.json of compare.py.')
  _MODEL = flags.DEFINE_enum('model', 'cbow', model_lib.MODELS, 'Model.')
  _CBOW_GRADIENT = flags.DEFINE_enum(
      'cbow_gradient', 'word2vec', model_lib.CBOW_GRADIENTS,
      'CBOW\'s gradient convention.')
  _OPTIMIZERS = flags.DEFINE_list(
      'optimizers', ['adam', 'cf_sgd', 'sgd', 'rowwise_adagrad'],
      'Optimizers; the first is the reference of the plot.')
  _OUT = flags.DEFINE_string('out', None, 'Path stem of the JSON and PNG.')
  flags.mark_flags_as_required(['sweep', 'out'])
  app.run(main)

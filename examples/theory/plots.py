"""The two figures of the theory check, drawn from `train.run_experiment`'s results."""

from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from examples.common import plotting
from examples.theory import analysis

_COLORS = {'sgd': 'tab:gray', 'fa_sgd': 'tab:blue', 'cf_sgd': 'tab:orange'}
_LABELS = {'sgd': 'SGD', 'fa_sgd': 'FA-SGD', 'cf_sgd': 'CF-SGD'}
_TABLES = ('users', 'items')


def _title(results: dict[str, Any]) -> str:
  setup = results['setup']
  if setup['distribution'] == 'exponential':
    tail = f"p_n ∝ exp(-{setup['tau']:g} n)"
  else:
    tail = f"p_n ∝ n^-{setup['zipf_exponent']:g}"
  return (f"{tail}, {setup['num_users']} users × {setup['num_items']} items, "
          f"d={setup['dim']}, T={setup['num_steps']:,}, B={setup['batch_size']}, "
          f"{results['num_seeds']} seeds")


def plot_ratio_vs_rank(results: dict[str, Any], path: str) -> None:
  """ln(E_τ‖∇_k f‖²_SGD / E_τ‖∇_k f‖²_FA) against rank, with the fits and theory.

  The fits and the predicted slopes are lines in x = ln(p_1/p_k), drawn here
  against rank (x = τ (n - 1) for the exponential tail). Shaded: the rows
  where FA-SGD's step is larger than SGD's and below the cap (the line fit's
  rows).
  """
  quantity = 'mean_grad_sq'
  fa_fits = results['fits']['fa_sgd'][quantity]
  hinge, tail_fit = fa_fits['hinge'], fa_fits['tail']
  fig, axes = plt.subplots(1, len(_TABLES), figsize=(12, 4.8), sharey=True)
  for ax, table in zip(axes, _TABLES):
    probs = np.asarray(results['probs'][table])
    ranks = np.arange(1, len(probs) + 1)
    x = analysis.log_frequency_depth(probs)
    tail = np.asarray(results['fits']['fa_sgd']['tail_rows'][table])
    for i, rank in enumerate(ranks[tail]):
      ax.axvspan(rank - 0.5, rank + 0.5, color='tab:blue', alpha=0.07, lw=0,
                 label='rows fitted: SGD step < FA step < 1/(4L)'
                 if i == 0 else None)
    for method, marker in (('fa_sgd', 'o'), ('cf_sgd', 's')):
      ax.plot(ranks, results['fits'][method][quantity]['log_ratio'][table],
              marker, color=_COLORS[method], alpha=0.8,
              label=f'SGD / {_LABELS[method]}')
    fitted = hinge['level'] + hinge['slope'] * np.maximum(0.0, x - hinge['knee'])
    ax.plot(ranks, fitted, '-', color=_COLORS['fa_sgd'],
            label=f"hinge fit: slope {hinge['slope']:.2f}")
    if tail.any():
      ax.plot(ranks[tail],
              tail_fit['intercept'] + tail_fit['slope'] * x[tail], '-',
              color='tab:green', lw=1,
              label=f"line fit on the shaded rows: slope {tail_fit['slope']:.2f}")
    step_ratio = np.log(
        np.asarray(results['methods']['fa_sgd']['row_step_sizes'][table])
        / np.asarray(results['methods']['sgd']['row_step_sizes'][table]))
    ax.plot(ranks, step_ratio, '-.', color='gray', lw=1,
            label='ln(η_FA,k / η_SGD), the step-size ratio')
    start = x >= hinge['knee']
    for slope, style, name in ((0.5, '--', 'Thms 1-2 bounds'),
                               (1.0, ':', 'Corollary 3 as stated')):
      ax.plot(ranks[start], hinge['level'] + slope * (x[start] - hinge['knee']),
              style, color='black', label=f'{name}: slope {slope:g}')
    ax.axhline(0.0, color='lightgray', lw=0.8)
    if results['setup']['distribution'] == 'zipf':
      ax.set_xscale('log')
    ax.set_xlabel(f'frequency rank n of the {table[:-1]}')
    ax.set_title(f'{table} (slopes per unit of ln(p_1/p_n))')
  axes[0].set_ylabel('ln( E_τ‖∇_k f‖² of SGD / of FA or CF )')
  axes[0].legend(fontsize=7, loc='upper left')
  fig.suptitle(_title(results), fontsize=10)
  fig.tight_layout()
  plotting.save(fig, path, dpi=120)


def plot_grad_norms_by_rank(results: dict[str, Any], path: str) -> None:
  """Per-rank gradient norms, step sizes and loss curves of the three methods.

  Top: E_τ‖∇_k f‖² (solid) and ‖∇_k f(Θ^T)‖² (dotted). Bottom: the same
  divided by p_k², i.e. the gradient of the row's own conditional loss, where
  the methods' differences are not hidden by the p_k² every row carries.
  """
  fig, axes = plt.subplots(2, len(_TABLES) + 1, figsize=(15, 8.5))
  for column, table in enumerate(_TABLES):
    probs = np.asarray(results['probs'][table])
    ranks = np.arange(1, len(probs) + 1)
    for row, scale in ((0, np.ones_like(probs)), (1, probs ** -2)):
      ax = axes[row, column]
      for method, values in results['methods'].items():
        ax.semilogy(ranks, np.asarray(values['mean_grad_sq'][table]) * scale,
                    'o-', color=_COLORS[method], ms=3,
                    label=f'{_LABELS[method]} (α={values["alpha"]:.3g}), E_τ')
        ax.semilogy(ranks, np.asarray(values['final_grad_sq'][table]) * scale,
                    'x:', color=_COLORS[method], ms=4, alpha=0.6,
                    label=f'{_LABELS[method]}, final iterate')
      if results['setup']['distribution'] == 'zipf':
        ax.set_xscale('log')
      ax.set_xlabel(f'frequency rank of the {table[:-1]}')
      ax.set_ylabel('‖∇_k f‖²' if row == 0 else '‖∇_k f‖² / p_k²')
      ax.set_title(table if row == 0 else f'{table}, divided by p_k²')
  axes[0, 0].legend(fontsize=7)

  ax = axes[0, -1]
  steps = np.asarray(results['eval_steps'])
  for method, values in results['methods'].items():
    ax.loglog(steps, values['excess_loss_curve'], color=_COLORS[method],
              label=_LABELS[method])
  ax.set_xlabel('step t')
  ax.set_ylabel('f(Θ^t) - f*')
  ax.set_title('full-batch excess loss (mean over seeds)')
  ax.legend(fontsize=8)

  ax = axes[1, -1]
  for method, values in results['methods'].items():
    for table, style in zip(_TABLES, ('-', '--')):
      eta = values['row_step_sizes'][table]
      ax.semilogy(np.arange(1, len(eta) + 1), eta, style,
                  color=_COLORS[method], label=f'{_LABELS[method]}, {table}')
  ax.axhline(results['max_learning_rate'], color='black', lw=0.8, ls=':',
             label='cap 1/(4L)')
  ax.set_xlabel('frequency rank')
  ax.set_ylabel('step size η_k')
  ax.set_title('per-row step sizes at the tuned α')
  ax.legend(fontsize=7)
  fig.suptitle(_title(results), fontsize=10)
  fig.tight_layout()
  plotting.save(fig, path, dpi=120)

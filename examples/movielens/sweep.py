"""Optimizer comparison on MovieLens: learning-rate sweep, seeds, report.

Two stages, both run by `main.py`:

1. `select_learning_rates`: for each (model, optimizer), one run per learning
   rate of ONE shared log grid (seed 0); the rate with the best validation AUC
   (at its best epoch) wins. A winner at an edge of the grid is flagged, so the
   grid can be widened.
2. `compare`: each (model, optimizer) at its rate, over several seeds; a run's
   result is its test AUC at its best validation epoch.

`write_report` turns the results into a JSON file, PNG plots and a Markdown
table. Finished runs are cached as JSON in the workdir, so an interrupted
sweep restarted with the same flags skips the runs it has already done.
"""

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from examples.common import files
from examples.common import machine
from examples.common import plotting
from examples.common import progress
from examples.movielens import config as config_lib
from examples.movielens import input_pipeline
from examples.movielens import train

# Every optimizer's learning rate (α for fa_sgd / cf_sgd) comes from this
# grid: 10^-4 .. 10^3 in half decades.
LEARNING_RATE_GRID = tuple(float(f'{10 ** (e / 2):.3g}') for e in range(-8, 7))
# Step losses kept in the JSON: means over windows of this many steps.
LOSS_WINDOW = 20


def run_name(config: config_lib.Config) -> str:
  name = f'{config.model}_{config.optimizer}_lr{config.learning_rate:g}'
  if config.dense_optimizer is not None:
    lr = config.dense_learning_rate or config.learning_rate
    name += f'_dense-{config.dense_optimizer}_lr{lr:g}'
  if config.sparse:
    name += '_sparse'
  return f'{name}_seed{config.seed}'


def summarise(result: Mapping[str, Any]) -> dict[str, Any]:
  """The JSON-sized summary of one `train.train_and_evaluate` result."""
  history = result['history']
  best = result['best']
  step_losses = np.concatenate([r['step_losses'] for r in history])
  num_windows = len(step_losses) // LOSS_WINDOW
  windowed = step_losses[:num_windows * LOSS_WINDOW].reshape(num_windows, -1)
  return {
      'config': dict(result['config']),
      'best_epoch': best['epoch'],
      'num_epochs': len(history),
      'validation_auc': best['validation']['auc'],
      'validation_log_loss': best['validation']['log_loss'],
      'test_auc': best['test']['auc'],
      'test_log_loss': best['test']['log_loss'],
      'test_auc_by_bucket': best['test']['auc_by_bucket'],
      'validation_auc_by_epoch': [r['validation']['auc'] for r in history],
      'train_loss_by_epoch': [r['train_loss'] for r in history],
      'train_loss_windows': windowed.mean(axis=1).tolist(),
      'loss_window_steps': LOSS_WINDOW,
      'optimizer_state_bytes': result['optimizer_state_bytes'],
      'seconds': float(sum(r['seconds'] for r in history)),
  }


def run(
    config: config_lib.Config,
    dataset: input_pipeline.Dataset,
    workdir: str,
    *,
    checkpoint: bool,
) -> dict[str, Any]:
  """Trains `config` (or loads its cached summary) and returns its summary."""
  name = run_name(config)
  summary_path = os.path.join(workdir, 'runs', name + '.json')
  summary = files.read_cached_summary(summary_path)
  if summary is not None and summary['config'] == train.config_record(
      config, dataset):
    return summary
  checkpoint_dir = (
      os.path.join(workdir, 'checkpoints', name) if checkpoint else None
  )
  summary = summarise(
      train.train_and_evaluate(config, dataset, checkpoint_dir,
                               show_progress=False)
  )
  os.makedirs(os.path.dirname(summary_path), exist_ok=True)
  files.write_json(summary_path, summary)
  return summary


def _log(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


def select_learning_rates(
    base: config_lib.Config,
    dataset: input_pipeline.Dataset,
    workdir: str,
    *,
    models: Sequence[str],
    optimizer_names: Sequence[str],
    grid: Sequence[float] = LEARNING_RATE_GRID,
) -> dict[str, Any]:
  """Picks each (model, optimizer)'s learning rate by validation AUC.

  Returns:
    {'grid': grid, 'selected': {model: {optimizer: lr}},
     'at_edge': [(model, optimizer)...], 'runs': [summaries]}.
  """
  selected, at_edge, runs = {}, [], []
  jobs = [(m, o, lr) for m in models for o in optimizer_names for lr in grid]
  bar = progress.progress_bar(jobs, desc='lr sweep')
  for model, name, learning_rate in bar:
    config = dataclasses.replace(
        base, model=model, optimizer=name, learning_rate=learning_rate, seed=0
    )
    summary = run(config, dataset, workdir, checkpoint=False)
    runs.append(summary)
    _log(f'sweep {run_name(config)}: validation AUC '
         f'{summary["validation_auc"]:.4f} at epoch {summary["best_epoch"]}')
  for model in models:
    for name in optimizer_names:
      scores = [
          s['validation_auc'] for s in runs
          if s['config']['model'] == model and s['config']['optimizer'] == name
      ]
      scores = np.nan_to_num(np.array(scores, dtype=float), nan=-np.inf)
      best = int(np.argmax(scores))
      selected.setdefault(model, {})[name] = grid[best]
      if best in (0, len(grid) - 1):
        at_edge.append((model, name))
  return {'grid': list(grid), 'selected': selected, 'at_edge': at_edge,
          'runs': runs}


def compare(
    base: config_lib.Config,
    dataset: input_pipeline.Dataset,
    workdir: str,
    *,
    learning_rates: Mapping[str, Mapping[str, float]],
    seeds: Sequence[int],
    checkpoint: bool = True,
) -> list[dict[str, Any]]:
  """Runs every (model, optimizer) at its learning rate for every seed."""
  jobs = [
      (model, name, lr, seed)
      for model, by_optimizer in learning_rates.items()
      for name, lr in by_optimizer.items()
      for seed in seeds
  ]
  summaries = []
  for model, name, learning_rate, seed in progress.progress_bar(
      jobs, desc='runs'):
    config = dataclasses.replace(
        base, model=model, optimizer=name, learning_rate=learning_rate,
        seed=seed,
    )
    summary = run(config, dataset, workdir, checkpoint=checkpoint)
    summaries.append(summary)
    _log(f'{run_name(config)}: test AUC {summary["test_auc"]:.4f} at best '
         f'validation epoch {summary["best_epoch"]}/{summary["num_epochs"]} '
         f'({summary["seconds"]:.0f} s)')
  return summaries


def aggregate(summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Mean and std over seeds of each (model, optimizer)."""
  groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
  for summary in summaries:
    key = (summary['config']['model'], summary['config']['optimizer'])
    groups.setdefault(key, []).append(summary)
  rows = []
  for (model, name), group in groups.items():
    def stat(values):
      values = np.array(values, dtype=float)
      return {'mean': float(values.mean()),
              'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
              'n': int(len(values))}
    rows.append({
        'model': model,
        'optimizer': name,
        'learning_rate': group[0]['config']['learning_rate'],
        'seeds': [s['config']['seed'] for s in group],
        'test_auc': stat([s['test_auc'] for s in group]),
        'test_log_loss': stat([s['test_log_loss'] for s in group]),
        'validation_auc': stat([s['validation_auc'] for s in group]),
        'test_auc_by_bucket': {
            bucket: stat([s['test_auc_by_bucket'][bucket] for s in group])
            for bucket in input_pipeline.FREQUENCY_BUCKETS
        },
        'best_epochs': [s['best_epoch'] for s in group],
        'num_epochs': group[0]['num_epochs'],
        'optimizer_state_bytes': group[0]['optimizer_state_bytes'],
        'seconds_per_run': float(np.mean([s['seconds'] for s in group])),
    })
  return rows


def machine_description() -> str:
  return machine.describe_machine()


def _fmt(stat: Mapping[str, float]) -> str:
  if stat.get('n', 2) == 1:
    return f'{stat["mean"]:.4f}'
  return f'{stat["mean"]:.4f} ± {stat["std"]:.4f}'


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    command: str,
    machine: str,
    dataset: input_pipeline.Dataset,
    selection: Optional[Mapping[str, Any]] = None,
) -> str:
  """The results as Markdown: one row per (model, optimizer)."""
  buckets = input_pipeline.FREQUENCY_BUCKETS
  lines = [
      f'Command: `{command}`  ',
      f'Machine: {machine}  ',
      f'Data: {dataset.summary()}  ',
      'Test metrics at each run\'s best validation-AUC epoch; mean ± std over '
      'seeds. Buckets: movies ranked by training count (head = top 1% of '
      'movies, torso = next 19%, tail = remaining 80%). Optimizer state: '
      'bytes of the Optax state (FA-SGD keeps its per-row frequencies, one '
      'float32 per row like CF-SGD\'s counts, as constants outside it).',
      '',
      '| model | optimizer | lr | test AUC | test log loss | '
      + ' | '.join(f'AUC {b}' for b in buckets)
      + ' | best epochs | optimizer state |',
      '|---|---|---|---|---|' + '---|' * len(buckets) + '---|---|',
  ]
  for row in rows:
    lines.append(
        f'| {row["model"]} | {row["optimizer"]} | {row["learning_rate"]:g} | '
        f'{_fmt(row["test_auc"])} | {_fmt(row["test_log_loss"])} | '
        + ' | '.join(_fmt(row['test_auc_by_bucket'][b]) for b in buckets)
        + f' | {",".join(map(str, row["best_epochs"]))} of {row["num_epochs"]}'
        f' | {row["optimizer_state_bytes"] / 1024:.0f} KiB |'
    )
  by_key = {(r['model'], r['optimizer']): r for r in rows}
  notes = []
  for model in dict.fromkeys(r['model'] for r in rows):
    cf, sgd = by_key.get((model, 'cf_sgd')), by_key.get((model, 'sgd'))
    if cf and sgd:
      notes.append(
          f'- {model}: CF-SGD − SGD test AUC = '
          f'{cf["test_auc"]["mean"] - sgd["test_auc"]["mean"]:+.4f}; tail '
          f'bucket {cf["test_auc_by_bucket"][buckets[-1]]["mean"] - sgd["test_auc_by_bucket"][buckets[-1]]["mean"]:+.4f}.'
      )
      adaptive = [by_key[(model, o)] for o in ('adam', 'adagrad')
                  if (model, o) in by_key]
      if adaptive:
        best = max(adaptive, key=lambda r: r['test_auc']['mean'])
        notes.append(
            f'- {model}: CF-SGD − best of Adam/Adagrad ({best["optimizer"]}) '
            f'= {cf["test_auc"]["mean"] - best["test_auc"]["mean"]:+.4f}.'
        )
  if notes:
    lines += [''] + notes
  if selection is not None:
    lines += [
        '',
        'Learning rates chosen by validation AUC (seed 0) from the grid '
        + ', '.join(f'{lr:g}' for lr in selection['grid'])
        + '; winners at a grid edge: '
        + (', '.join('/'.join(k) for k in selection['at_edge']) or 'none')
        + '.',
    ]
  return '\n'.join(lines) + '\n'


def write_report(
    out_dir: str,
    summaries: Sequence[Mapping[str, Any]],
    *,
    command: str,
    dataset: input_pipeline.Dataset,
    selection: Optional[Mapping[str, Any]] = None,
) -> str:
  """Writes results.json, results.md and PNG plots; returns the Markdown."""
  os.makedirs(out_dir, exist_ok=True)
  rows = aggregate(summaries)
  machine = machine_description()
  table = markdown_table(rows, command=command, machine=machine,
                         dataset=dataset, selection=selection)
  files.write_json(os.path.join(out_dir, 'results.json'), {
        'command': command,
        'machine': machine,
        'dataset': dataset.summary(),
        'aggregate': rows,
        'runs': list(summaries),
        'learning_rate_selection': None if selection is None else {
            key: value for key, value in selection.items() if key != 'runs'
        } | {'validation_auc': [
            {'model': s['config']['model'], 'optimizer': s['config']['optimizer'],
             'learning_rate': s['config']['learning_rate'],
             'validation_auc': s['validation_auc'],
             'best_epoch': s['best_epoch']}
            for s in selection['runs']]},
  }, separators=(',', ':'))
  files.write_text(os.path.join(out_dir, 'results.md'), table)

  if selection is not None:
    for model in dict.fromkeys(s['config']['model'] for s in summaries):
      curves = {}
      for s in selection['runs']:
        if s['config']['model'] == model:
          lrs, aucs = curves.setdefault(s['config']['optimizer'], ([], []))
          lrs.append(s['config']['learning_rate'])
          aucs.append(s['validation_auc'])
      plotting.line_plot(
          os.path.join(out_dir, f'{model}_learning_rate_sweep.png'), curves,
          xlabel='learning rate (α for fa_sgd / cf_sgd)',
          ylabel='best validation AUC (seed 0)', log_x=True,
          title=f'{dataset.name} {model}: learning-rate sweep',
      )
  first_seed = min(s['config']['seed'] for s in summaries)
  for model in dict.fromkeys(s['config']['model'] for s in summaries):
    runs = [s for s in summaries if s['config']['model'] == model
            and s['config']['seed'] == first_seed]
    plotting.line_plot(
        os.path.join(out_dir, f'{model}_train_loss.png'),
        {s['config']['optimizer']: (
            (np.arange(len(s['train_loss_windows'])) + 1) * s['loss_window_steps'],
            s['train_loss_windows']) for s in runs},
        xlabel='step', ylabel=f'training loss ({LOSS_WINDOW}-step mean)',
        title=f'{dataset.name} {model}: training loss (seed {first_seed})',
        smooth=5,
    )
    plotting.line_plot(
        os.path.join(out_dir, f'{model}_validation_auc.png'),
        {s['config']['optimizer']: (
            np.arange(1, s['num_epochs'] + 1), s['validation_auc_by_epoch'])
         for s in runs},
        xlabel='epoch', ylabel='validation AUC',
        title=f'{dataset.name} {model}: validation AUC (seed {first_seed})',
    )
    model_rows = [r for r in rows if r['model'] == model]
    buckets = input_pipeline.FREQUENCY_BUCKETS
    plotting.grouped_bar_plot(
        os.path.join(out_dir, f'{model}_auc_by_bucket.png'),
        buckets,
        {r['optimizer']: [r['test_auc_by_bucket'][b]['mean'] for b in buckets]
         for r in model_rows},
        errors={r['optimizer']: [r['test_auc_by_bucket'][b]['std']
                                 for b in buckets] for r in model_rows},
        ylabel='test AUC',
        y_min=min(r['test_auc_by_bucket'][b]['mean'] for r in model_rows
                  for b in buckets) - 0.02,
        title=f'{dataset.name} {model}: test AUC by movie frequency',
    )
  return table

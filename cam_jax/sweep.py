r"""Config sweeps, big_vision style: the trials a config file lists, each a training run.

  python -m cam_jax.sweep --config=configs/synthetic_gap.py:sweep_map_resolution \
      --root=runs/map_resolution [--launcher=local|print|slurm] [--parallel=1]

A config file lists its sweeps in a module-level `get_hyper(hyper, arg)`. It gets the
`:arg` that `get_config` gets (a sweep is named like a variant, and `get_config(arg)` is
the config its trials start from) and returns the trials, each a dict
`{'config.field.path': value}`, built with `hyper.sweep`, `hyper.product` and `hyper.zip`:

  def get_hyper(hyper, arg):
    return hyper.product(hyper.sweep('config.seed', [0, 1]),
                         hyper.sweep('config.model.kwargs.cam_channels', [64, 256]))

Each trial is `python -m cam_jax.main --config=FILE:ARG --workdir=ROOT/NAME
--config.field.path=VALUE ...`, NAME made of its values (`seed=0,cam_channels=64`).
Overrides given here (`--config.data.data_dir=DIR`) go to every trial. Launchers:
- `local` runs the trials as subprocesses, each with its own JAX runtime, `--parallel` at
  once, each one's output in NAME/log.txt. The default is one at a time: a JAX process
  takes every device it sees (all CPU cores, or most of an accelerator's memory), so two
  trials side by side only compete for them.
- `print` writes the command lines, one per trial, to stdout and ROOT/commands.sh, for
  any other launcher;
- `slurm` submits them as one job array through submitit (`pip install 'cam_jax[slurm]'`;
  `--slurm_parameters` for the executor) and waits for them.

A trial whose workdir holds eval.json (written when a run ends) is finished and skipped; an
interrupted one runs again in its workdir and resumes from its checkpoints. Then the
finished trials' eval.json go to ROOT/results.csv and ROOT/results.md (the swept values,
then every scalar metric) and to ROOT/plots/METRIC--FIELD.png. Exit status 1 when some
trial failed or did not finish: each is named, with its exit status and the end of its log.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import importlib.util
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import types
from typing import Any, Iterable, Sequence

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from cam_jax import io_utils
from cam_jax import logs
from cam_jax import viz

Trial = dict[str, Any]  # {'config.field.path': value}

# ---------------------------------------------------------------------------
# The hyper algebra: lists of trials
# ---------------------------------------------------------------------------


def sweep(name: str, values: Sequence[Any]) -> list[Trial]:
  """One trial per value of the field `name` ('config.a.b')."""
  if not name.startswith('config.') or name == 'config.':
    raise ValueError(f"sweep: a field is named from the config, e.g. 'config.seed'; got "
                     f'{name!r}')
  if isinstance(values, (str, bytes)) or not values:
    raise ValueError(f'sweep of {name}: give a non-empty list of values, got {values!r}')
  return [{name: value} for value in values]


def _merge(trials: Iterable[Trial]) -> Trial:
  merged = {}
  for trial in trials:
    twice = set(merged) & set(trial)
    if twice:
      raise ValueError(f'{sorted(twice)[0]} is swept twice in one product or zip')
    merged.update(trial)
  return merged


def product(*sweeps: list[Trial]) -> list[Trial]:
  """Every combination, the last sweep varying fastest (as itertools.product)."""
  return [_merge(combination) for combination in itertools.product(*sweeps)]


def zip_(*sweeps: list[Trial]) -> list[Trial]:
  """The i-th trials of all sweeps together; the sweeps must have the same length."""
  lengths = [len(s) for s in sweeps]
  if len(set(lengths)) > 1:
    raise ValueError(f'zip of sweeps of unequal lengths {lengths}')
  return [_merge(trials) for trials in zip(*sweeps)]


# What a config's get_hyper receives (big_vision's `hyper`): the config file needs no import.
hyper = types.SimpleNamespace(sweep=sweep, product=product, zip=zip_)


def load_trials(config_arg: str) -> list[Trial]:
  """The trials of `FILE:ARG`: `get_hyper(hyper, ARG)` of the config file."""
  path, _, arg = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location('sweep_config', path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f'No config file {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_hyper'):
    raise ValueError(f'{path} defines no sweeps (no get_hyper(hyper, arg))')
  trials = list(module.get_hyper(hyper, arg or None))
  if not trials or not all(isinstance(t, dict) for t in trials):
    raise ValueError(f'get_hyper of {config_arg} must return a non-empty list of dicts, got '
                     f'{trials!r}')
  return trials


# ---------------------------------------------------------------------------
# Names: one folder per trial
# ---------------------------------------------------------------------------

_MAX_NAME = 100
_UNSAFE = re.compile(r'[^A-Za-z0-9._=,+-]')


def _fields(trials: Sequence[Trial]) -> list[str]:
  """Every swept field, in order of first appearance."""
  return list(dict.fromkeys(field for trial in trials for field in trial))


def short_names(fields: Sequence[str]) -> dict[str, str]:
  """Each field by the fewest trailing components that no other field ends with."""
  parts = {f: f.removeprefix('config.').split('.') for f in fields}
  short = {}
  for field, mine in parts.items():
    for k in range(1, len(mine) + 1):
      if all(other[-k:] != mine[-k:] for g, other in parts.items() if g != field):
        break
    short[field] = '.'.join(mine[-k:])
  return short


def display(value: Any) -> str:
  """A value as names and tables show it: tuples as 1-2-1."""
  if isinstance(value, (tuple, list)):
    return '-'.join(display(v) for v in value)
  return value if isinstance(value, str) else repr(value)


def _digest(trial: Trial) -> str:
  exact = repr(sorted((k, type(v).__name__, repr(v)) for k, v in trial.items()))
  return hashlib.sha1(exact.encode()).hexdigest()[:8]


def trial_names(trials: Sequence[Trial]) -> list[str]:
  """A distinct, filesystem-safe folder name per trial, from its values
  (`seed=1,lr=0.003`).

  Characters other than letters, digits and `._=,+-` become `_`; a name longer than 100
  characters is cut and ends with `+` and a hash of the exact values, as does every name
  that two trials would share (e.g. the values 1 and '1').
  """
  short = short_names(_fields(trials))
  names = []
  for trial in trials:
    name = _UNSAFE.sub('_', ','.join(f'{short[k]}={display(v)}' for k, v in trial.items()))
    name = name or 'default'
    if len(name) > _MAX_NAME:
      name = f'{name[:_MAX_NAME - 9]}+{_digest(trial)}'
    names.append(name)
  shared = {n for n in names if names.count(n) > 1}
  names = [f'{n[:_MAX_NAME - 9]}+{_digest(t)}' if n in shared else n
           for n, t in zip(names, trials)]
  if len(set(names)) < len(names):
    twice = next(t for t, n in zip(trials, names) if names.count(n) > 1)
    raise ValueError(f'the sweep lists the trial {twice} twice')
  return names


# ---------------------------------------------------------------------------
# Command lines that ml_collections parses back into the values
# ---------------------------------------------------------------------------


def _is_literal_string(text: str) -> bool:
  """Whether ml_collections' literal parser would read `text` as a Python literal."""
  if text in ('true', 'false'):
    return True
  try:
    ast.literal_eval(text)
  except (SyntaxError, ValueError):
    return False
  return True


def format_override(config: ml_collections.ConfigDict, field: str, value: Any) -> str:
  """`--config.a.b=TEXT`, TEXT what the field's parser in ml_collections reads as `value`."""
  path = field.removeprefix('config.')
  try:
    kind = config_path.get_type(path, config)
  except (AttributeError, KeyError, IndexError) as e:
    raise ValueError(f'{field} is not a field of the config ({e})') from None
  if value is None and kind is not object:
    raise ValueError(f'{field} is a {kind.__name__} field: the command line cannot set it '
                     'to None')
  if kind is str or (kind is object and isinstance(value, str)
                     and not _is_literal_string(value)):
    text = str(value)  # read as it is: no quotes needed
  elif kind is bool:
    text = 'true' if value else 'false'
  elif kind is tuple:
    text = repr(tuple(value))
  elif kind is ml_collections.ConfigDict:
    text = repr(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value)
  else:  # int, float, object (Python literals)
    text = repr(value)
  return f'--config.{path}={text}'


def parse_config(config_arg: str, args: Sequence[str]) -> ml_collections.ConfigDict:
  """The config `python -m cam_jax.main --config=CONFIG_ARG *args` runs with, parsed by
  ml_collections as cam_jax.main parses it (a locked config)."""
  argv = ['cam_jax.main', f'--config={config_arg}', *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def _same(a: Any, b: Any) -> bool:
  # Tuples travel as tuples or lists; ints as floats in float fields.
  if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, ml_collections.ConfigDict):
    a = a.to_dict()
  if isinstance(b, ml_collections.ConfigDict):
    b = b.to_dict()
  return a == b


@dataclasses.dataclass(frozen=True)
class Job:
  """One trial: its name, workdir and the arguments of `python -m cam_jax.main`."""
  name: str
  workdir: str
  trial: Trial
  args: tuple[str, ...]

  def argv(self, python: str = sys.executable) -> list[str]:
    return [python, '-m', 'cam_jax.main', *self.args]

  def command_line(self) -> str:
    """The command as a shell line, with `python` from the PATH."""
    return shlex.join(self.argv('python'))


def plan(config_arg: str, root: str, trials: Sequence[Trial],
         overrides: Trial | None = None) -> list[Job]:
  """A job per trial, `overrides` (`{'config.a.b': value}`) given to every one.

  Every command line is parsed back as cam_jax.main parses it and must give the values:
  a field that does not exist or a value of the wrong type fails here, before any run.
  """
  overrides = dict(overrides or {})
  unnamed = [f for t in (overrides, *trials) for f in t if not f.startswith('config.')]
  if unnamed:
    raise ValueError(f"{unnamed[0]!r}: fields are named from the config, e.g. 'config.seed'")
  base = parse_config(config_arg, [])
  jobs = []
  for name, trial in zip(trial_names(trials), trials):
    both = set(trial) & set(overrides)
    if both:
      raise ValueError(f'{sorted(both)[0]} is swept: do not also set it on the command line')
    values = {**overrides, **trial}
    args = (f'--config={config_arg}', f'--workdir={os.path.join(root, name)}',
            *(format_override(base, field, value) for field, value in values.items()))
    try:
      parsed = parse_config(config_arg, args[2:])
    except (flags.Error, ValueError, TypeError, KeyError, AttributeError) as e:
      raise ValueError(f'trial {name}: {e}') from None
    for field, value in values.items():
      got = config_path.get_value(field.removeprefix('config.'), parsed)
      if not _same(got, value):
        raise ValueError(f'trial {name}: {field}={value!r} reads back as {got!r}')
    jobs.append(Job(name, os.path.join(root, name), dict(trial), args))
  return jobs


def write_commands(root: str, jobs: Sequence[Job]) -> str:
  """ROOT/commands.sh: one command line per trial, in sweep order; returns its text."""
  text = ''.join(f'{job.command_line()}\n' for job in jobs)
  io_utils.atomic_write_text(os.path.join(root, 'commands.sh'), text)
  return text


# ---------------------------------------------------------------------------
# Running the trials
# ---------------------------------------------------------------------------

EVAL_JSON = 'eval.json'
LOG = 'log.txt'


def read_results(workdir: str) -> dict[str, Any] | None:
  """The eval.json of a finished run in `workdir`, or None."""
  try:
    with open(os.path.join(workdir, EVAL_JSON), encoding='utf-8') as f:
      results = json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None
  return results if isinstance(results, dict) else None


def is_finished(job: Job) -> bool:
  return read_results(job.workdir) is not None


@dataclasses.dataclass(frozen=True)
class Failure:
  """A trial that did not finish: its exit status (None when it did not fail: stopped
  without eval.json, e.g. by SIGTERM, or never started), why, and the end of its log."""
  name: str
  status: int | None
  reason: str
  log_tail: str = ''

  def report(self) -> str:
    end = f'; end of its log:\n{self.log_tail}' if self.log_tail else ''
    return f'trial {self.name}: {self.reason}{end}'


def tail(path: str, lines: int = 20) -> str:
  """The last `lines` lines of a text file ('' if there is none)."""
  try:
    with open(path, 'rb') as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 65536))
      text = f.read().decode('utf-8', errors='replace')
  except FileNotFoundError:
    return ''
  return '\n'.join(text.splitlines()[-lines:])


def _start(argv: Sequence[str], workdir: str, cwd: str | None = None) -> subprocess.Popen:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, LOG), 'a', encoding='utf-8') as log:
    log.write(f'# {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(argv)}\n')
    log.flush()
    # A session of its own: Ctrl-C reaches the sweep alone, which stops the trials with
    # SIGTERM, on which cam_jax.main saves a checkpoint and exits.
    return subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                            start_new_session=True)


def run_trial(argv: Sequence[str], workdir: str, cwd: str | None = None) -> int:
  """Runs one trial to its end, its output appended to WORKDIR/log.txt; the exit status."""
  return _start(argv, workdir, cwd).wait()


def _failure(job: Job, status: int) -> Failure | None:
  if status == 0 and is_finished(job):
    return None
  reason = (f'failed, exit status {status}' if status else
            'stopped before the end (run the sweep again to resume)')
  return Failure(job.name, status or None, reason, tail(os.path.join(job.workdir, LOG)))


def run_local(jobs: Sequence[Job], parallel: int = 1, *,
              python: str = sys.executable) -> list[Failure]:
  """Runs the unfinished jobs as subprocesses, `parallel` at once; the failures.

  SIGTERM or Ctrl-C stops the running trials with SIGTERM (each saves a checkpoint and
  exits) and starts no other.
  """
  pending = [job for job in jobs if not is_finished(job)]
  for job in jobs:
    if job not in pending:
      logging.info('%s: finished earlier, skipped', job.name)
  running: dict[subprocess.Popen, tuple[Job, float]] = {}
  failures = []
  stopping = False

  def stop(signum, frame):  # pylint: disable=unused-argument
    nonlocal stopping
    if stopping:
      return  # one SIGTERM each: a second one could cut a trial's checkpoint short
    logging.warning('%s: stopping the running trials (each saves a checkpoint)',
                    signal.Signals(signum).name)
    stopping = True
    for process in running:
      process.send_signal(signal.SIGTERM)

  # Handlers rather than KeyboardInterrupt: a Ctrl-C at any point stops the trials, whose
  # own sessions keep it from reaching them.
  previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    while running or (pending and not stopping):
      while pending and not stopping and len(running) < parallel:
        job = pending.pop(0)
        logging.info('%s: started (%s)', job.name, job.command_line())
        running[_start(job.argv(python), job.workdir)] = (job, time.time())
      time.sleep(0.2)
      for process in [p for p in running if p.poll() is not None]:
        job, started = running.pop(process)
        failure = _failure(job, process.returncode)
        logging.info('%s: %s after %.0f s', job.name, 'failed' if failure else 'finished',
                     time.time() - started)
        if failure:
          failures.append(failure)
  finally:
    for process in running:  # only after an error here: no trial is left behind
      if not stopping:
        process.send_signal(signal.SIGTERM)
      process.wait()
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  failures.extend(Failure(job.name, None, 'not started: the sweep was stopped')
                  for job in pending)
  return failures


NEEDS_SUBMITIT = "--launcher=slurm needs submitit: pip install 'cam_jax[slurm]'"


def run_slurm(jobs: Sequence[Job], root: str, parameters: dict[str, Any], *,
              cluster: str | None = None, python: str = sys.executable) -> list[Failure]:
  """Submits the unfinished jobs as one array through submitit and waits; the failures.

  `parameters` go to `AutoExecutor.update_parameters` (e.g. `timeout_min`,
  `slurm_partition`, `gpus_per_node`); submitit's own logs are in ROOT/slurm/. `cluster`:
  submitit's, None for the one it detects ('local' and 'debug' run here).
  """
  try:
    import submitit  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(NEEDS_SUBMITIT) from None
  pending = [job for job in jobs if not is_finished(job)]
  if not pending:
    return []
  executor = submitit.AutoExecutor(folder=os.path.join(root, 'slurm', '%j'), cluster=cluster)
  executor.update_parameters(**{'name': 'cam_jax_sweep', **parameters})
  with executor.batch():
    submitted = [executor.submit(run_trial, job.argv(python), job.workdir, os.getcwd())
                 for job in pending]
  logging.info('Submitted %d trials: %s', len(submitted),
               ', '.join(str(s.job_id) for s in submitted))
  failures = []
  for job, future in zip(pending, submitted):
    try:
      failure = _failure(job, future.result())
    except Exception as e:  # pylint: disable=broad-except
      # The job itself failed (cancelled, timed out, node failure): submitit says why.
      failure = Failure(job.name, -1, f'job failed: {e}', tail(os.path.join(job.workdir, LOG)))
    if failure:
      failures.append(failure)
  return failures


# ---------------------------------------------------------------------------
# Results: results.csv, results.md, plots
# ---------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _table(jobs: Sequence[Job]) -> tuple[list[str], list[str], list[tuple[Job, dict]]]:
  """(swept fields, metrics, [(job, scalar metrics)] of the finished jobs)."""
  rows = []
  for job in jobs:
    results = read_results(job.workdir)
    if results is not None:
      rows.append((job, {k: v for k, v in results.items() if _is_number(v)}))
  metrics = sorted({k for _, numbers in rows for k in numbers})
  return _fields([job.trial for job in jobs]), metrics, rows


def _exact(value: Any) -> str:
  return value if isinstance(value, str) else repr(value)


def _md_number(value: Any) -> str:
  if not _is_number(value):
    return ''
  return str(value) if isinstance(value, int) else f'{value:.4g}'


def write_results(root: str, jobs: Sequence[Job], title: str = '') -> list[dict[str, Any]]:
  """ROOT/results.csv, results.md and plots/ from the finished jobs; returns the rows
  (`{field or metric: value}`, fields named without 'config.')."""
  fields, metrics, rows = _table(jobs)
  columns = [f.removeprefix('config.') for f in fields] + metrics
  records = []
  for job, numbers in rows:
    record = {f.removeprefix('config.'): job.trial.get(f, '') for f in fields}
    record.update({m: numbers.get(m, '') for m in metrics})
    records.append(record)

  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(columns)
  for record in records:
    # Exact: strings as they are, other values and metrics as Python literals (repr: every
    # digit of a float).
    writer.writerow([_exact(record[c]) for c in columns])
  io_utils.atomic_write_text(os.path.join(root, 'results.csv'), buffer.getvalue())

  lines = [f'# Sweep {title}'.rstrip(), '', f'{len(rows)} of {len(jobs)} trials finished.', '']
  lines.append('| ' + ' | '.join(columns) + ' |')
  lines.append('|' + '---|' * len(fields) + '---:|' * len(metrics))
  for record in records:
    cells = [display(record[c]) for c in columns[:len(fields)]]
    cells += [_md_number(record[m]) for m in metrics]
    lines.append('| ' + ' | '.join(cells) + ' |')
  finished = {job.name for job, _ in rows}
  unfinished = [job.name for job in jobs if job.name not in finished]
  if unfinished:
    lines += ['', 'Not finished: ' + ', '.join(unfinished) + '.']
  io_utils.atomic_write_text(os.path.join(root, 'results.md'), '\n'.join(lines) + '\n')

  _write_plots(os.path.join(root, 'plots'), fields, metrics, rows)
  return records


def _x_order(values: list[Any]) -> list[Any]:
  distinct = list(dict.fromkeys(repr(v) for v in values))
  by_repr = {repr(v): v for v in values}
  ordered = [by_repr[r] for r in distinct]
  if all(_is_number(v) for v in ordered):
    ordered.sort()
  return ordered


def _write_plots(folder: str, fields: list[str], metrics: list[str],
                 rows: list[tuple[Job, dict]]) -> None:
  """A picture per (metric, swept field): the metric against the field's values (evenly
  spaced, in the x label's order), one curve per value of the other swept fields.

  Only metrics that are fractions (every value in [0, 1]) and that differ between trials:
  `viz.curve_plot` draws both axes from 0 to 1.
  """
  short = short_names(fields)
  for metric in metrics:
    values = [numbers.get(metric) for _, numbers in rows]
    if (any(v is None or not math.isfinite(v) or not 0 <= v <= 1 for v in values)
        or len(set(values)) < 2):
      continue
    for field in fields:
      order = _x_order([job.trial[field] for job, _ in rows if field in job.trial])
      if len(order) < 2:
        continue
      position = {repr(v): i / (len(order) - 1) for i, v in enumerate(order)}
      curves: dict[str, tuple[list[float], list[float]]] = {}
      for job, numbers in rows:
        if field not in job.trial:
          continue
        others = ','.join(f'{short[f]}={display(v)}' for f, v in job.trial.items() if f != field)
        xs, ys = curves.setdefault(others or metric, ([], []))
        xs.append(position[repr(job.trial[field])])
        ys.append(numbers[metric])
      if len(curves) > len(viz.CURVE_COLORS):
        logging.info('No plot of %s against %s: %d curves, at most %d are drawn', metric,
                     short[field], len(curves), len(viz.CURVE_COLORS))
        continue
      for xs, ys in curves.values():
        xs[:], ys[:] = zip(*sorted(zip(xs, ys)))
      x_label = f'{short[field]}: ' + ', '.join(display(v) for v in order)
      # The title names the metric: a y label would be drawn over it.
      picture = viz.curve_plot(curves, f'{metric} against {short[field]}', x_label, '')
      name = _UNSAFE.sub('_', f'{metric.replace("/", ".")}--{short[field]}')
      viz.save_png(os.path.join(folder, f'{name}.png'), picture)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _define_flags() -> None:
  """The command line's flags, defined when the module runs as a script only: a library
  import (tests, notebooks) then never clashes with another module's --config."""
  config_flags.DEFINE_config_file(
      'config', None, 'FILE:SWEEP, a config file and one of its sweeps (get_hyper). '
      '--config.a.b=VALUE overrides go to every trial.', lock_config=True)
  flags.DEFINE_string('root', None, 'Folder of the sweep: a workdir per trial, '
                      'commands.sh, results.csv, results.md, plots/.', required=True)
  flags.DEFINE_enum('launcher', 'local', ['local', 'print', 'slurm'],
                    'local: subprocesses here; print: write the command lines; '
                    'slurm: a job array through submitit.')
  flags.DEFINE_integer('parallel', 1, '--launcher=local: trials at once (each JAX process '
                       'takes every device it sees).', lower_bound=1)
  flags.DEFINE_string(
      'slurm_parameters', '{}', "--launcher=slurm: a dict for submitit's "
      "update_parameters, e.g. \"{'timeout_min': 600, 'slurm_partition': 'gpu', "
      "'gpus_per_node': 1}\".")


def main(argv: Sequence[str]) -> None:
  logs.quiet_libraries()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  root, launcher = f.root, f.launcher
  config_flag = f['config']
  if flags.FLAGS.config is None:
    raise app.UsageError('--config=FILE:SWEEP is required, e.g. '
                         '--config=configs/synthetic_gap.py:sweep_smoke')
  if launcher == 'slurm':
    if importlib.util.find_spec('submitit') is None:
      raise app.UsageError(NEEDS_SUBMITIT)
    try:
      slurm_parameters = ast.literal_eval(f.slurm_parameters)
    except (SyntaxError, ValueError):
      slurm_parameters = None
    if not isinstance(slurm_parameters, dict):
      raise app.UsageError(f'--slurm_parameters={f.slurm_parameters} is not a dict')
  config_arg = config_flag.config_filename
  overrides = {f'config.{k}': v for k, v in config_flag.override_values.items()}
  try:
    jobs = plan(config_arg, root, load_trials(config_arg), overrides)
  except (ValueError, FileNotFoundError) as e:
    # A sweep or a value to correct, named in the message: the message alone.
    logging.error('%s', e)
    raise SystemExit(1) from None
  commands = write_commands(root, jobs)
  logging.info('%d trials of %s in %s', len(jobs), config_arg, root)
  if launcher == 'print':
    print(commands, end='', flush=True)
    failures = []
  elif launcher == 'local':
    failures = run_local(jobs, f.parallel)
  else:
    failures = run_slurm(jobs, root, slurm_parameters)
  records = write_results(root, jobs, config_arg)
  logging.info('%d of %d trials finished: %s', len(records), len(jobs),
               os.path.join(root, 'results.md'))
  for failure in failures:
    logging.error('%s', failure.report())
  if failures:
    raise SystemExit(1)


if __name__ == '__main__':
  _define_flags()
  app.run(main)

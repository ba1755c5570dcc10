"""cam_jax.sweep: the hyper algebra, trial names, command lines that parse back, the local
runner (on a fake trainer), results, and one real `sweep_smoke` run through the entry
point. Also the model options of configs/common.py, which sweeps and the command line set."""

import csv
import json
import os
import shlex
import stat
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from cam_jax import checkpoints
from cam_jax import models
from cam_jax import restore
from cam_jax import sweep
from configs import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'configs/synthetic_gap.py:tiny'


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  # Config paths are relative to the repository, as on the command line.
  monkeypatch.chdir(REPO)


# --- The hyper algebra ----------------------------------------------------------------

def test_sweep_product_and_zip_sizes_and_values():
  seeds = sweep.sweep('config.seed', [0, 1, 2])
  assert seeds == [{'config.seed': 0}, {'config.seed': 1}, {'config.seed': 2}]
  lrs = sweep.hyper.sweep('config.optimizer.learning_rate', [1e-3, 3e-3])
  grid = sweep.hyper.product(seeds, lrs)
  assert len(grid) == 6
  # The last sweep varies fastest, as itertools.product.
  assert grid[:3] == [{'config.seed': 0, 'config.optimizer.learning_rate': 1e-3},
                      {'config.seed': 0, 'config.optimizer.learning_rate': 3e-3},
                      {'config.seed': 1, 'config.optimizer.learning_rate': 1e-3}]
  widths = sweep.sweep('config.model.kwargs.cam_channels', [64, 256])
  pairs = sweep.hyper.zip(widths, lrs)
  assert pairs == [{**widths[0], **lrs[0]}, {**widths[1], **lrs[1]}]
  assert pairs[1] == {'config.model.kwargs.cam_channels': 256,
                      'config.optimizer.learning_rate': 3e-3}
  # Nested: a product of a zip and a sweep; an empty product is the base config alone.
  assert len(sweep.product(pairs, seeds)) == 6
  assert sweep.product() == [{}]


def test_bad_sweeps_raise():
  with pytest.raises(ValueError, match=r'unequal lengths \[3, 2\]'):
    sweep.zip_(sweep.sweep('config.seed', [0, 1, 2]), sweep.sweep('config.batch_size', [8, 16]))
  with pytest.raises(ValueError, match='config.seed is swept twice'):
    sweep.product(sweep.sweep('config.seed', [0]), sweep.sweep('config.seed', [1]))
  with pytest.raises(ValueError, match="e.g. 'config.seed'"):
    sweep.sweep('seed', [0, 1])
  with pytest.raises(ValueError, match='non-empty list'):
    sweep.sweep('config.data.name', 'cam_synth')
  with pytest.raises(ValueError, match='non-empty list'):
    sweep.sweep('config.seed', [])


def test_config_names_its_sweeps_and_unknown_ones_are_listed():
  trials = sweep.load_trials('configs/synthetic_gap.py:sweep_smoke')
  assert trials == [{'config.seed': 0}, {'config.seed': 1}]
  resolution = sweep.load_trials('configs/synthetic_gap.py:sweep_map_resolution')
  assert [t['config.model.kwargs.stage_strides'] for t in resolution] == [
      (1, 2, 1), (1, 2, 2), (2, 2, 2)]  # maps of 32, 16 and 8 at 64×64
  assert sweep.load_trials('configs/synthetic_gap.py:sweep_pooling') == [
      {'config.model.kwargs.pooling': 'avg'}, {'config.model.kwargs.pooling': 'max'}]
  assert [t['config.eval.saliency'] for t in
          sweep.load_trials('configs/synthetic_gap.py:sweep_saliency')] == [
              'cam', 'backprop', 'gradcam']
  # A sweep is also the variant its trials start from.
  from configs import synthetic_gap  # pylint: disable=g-import-not-at-top
  assert synthetic_gap.get_config('sweep_smoke') == synthetic_gap.get_config('tiny')
  evaluate_only = synthetic_gap.get_config('sweep_saliency')  # another run's weights as they are
  assert evaluate_only.total_steps == 0 and evaluate_only.init_from.reinit == ()
  assert evaluate_only.init_from.workdir == 'runs/synthetic'
  for arg in ('nonsense', 'tiny', ''):
    with pytest.raises(ValueError, match='known sweeps: sweep_smoke, sweep_pooling, '
                                         'sweep_saliency, sweep_map_resolution'):
      sweep.load_trials(f'configs/synthetic_gap.py:{arg}')
  with pytest.raises(ValueError, match='defines no sweeps'):
    sweep.load_trials('configs/nin.py:runlocal')


# --- Names ----------------------------------------------------------------------------

def test_trial_names_are_readable_safe_and_distinct():
  trials = sweep.product(sweep.sweep('config.optimizer.learning_rate', [0.003]),
                         sweep.sweep('config.seed', [1, 2]))
  assert sweep.trial_names(trials) == ['learning_rate=0.003,seed=1',
                                       'learning_rate=0.003,seed=2']
  # Fields that end alike are told apart by one more component.
  assert sweep.trial_names([{'config.batch_size': 8, 'config.eval.batch_size': 16}]) == [
      'batch_size=8,eval.batch_size=16']
  assert sweep.trial_names(sweep.sweep('config.model.kwargs.stage_strides', [(1, 2, 1)])) == [
      'stage_strides=1-2-1']
  # Values that would share a name (1 and '1'; 'a/b' made safe is 'a_b') get a hash each.
  odd = sweep.sweep('config.init_from.workdir', [1, '1', 'a/b', 'a_b', 'x y', None, 'None'])
  names = sweep.trial_names(odd)
  assert len(set(names)) == len(names) == 7
  for name in names:
    assert name == os.path.basename(name) and not name.startswith(('.', '-'))
    assert all(c.isalnum() or c in '._=,+-' for c in name), name
  assert names[4] == 'workdir=x_y'  # made safe, shared by no other: no hash
  long = sweep.sweep('config.init_from.workdir', ['x' * 300, 'x' * 299 + 'y'])
  names = sweep.trial_names(long)
  assert names[0] != names[1] and all(len(n) <= 100 for n in names)
  with pytest.raises(ValueError, match='twice'):
    sweep.trial_names([{'config.seed': 1}, {'config.seed': 1}])


# --- Command lines --------------------------------------------------------------------

def test_print_commands_parse_back_to_the_values(tmp_path):
  """Every kind of value travels as ml_collections reads it back: strings, floats,
  tuples, None, booleans, and options of the model."""
  trials = sweep.zip_(
      sweep.sweep('config.model.kwargs.pooling', ['max', 'avg']),
      sweep.sweep('config.model.kwargs.stage_strides', [None, (1, 2)]),
      sweep.sweep('config.model.kwargs.widths', [(8, 16), [4, 8]]),
      sweep.sweep('config.optimizer.learning_rate', [3e-3, 1]),
      sweep.sweep('config.eval.heuristic_thresholds', [(0.5, 0.2), ()]),
      sweep.sweep('config.data.flip', [False, True]),
      sweep.sweep('config.eval.predictions_file', ['a b/p.jsonl', 'None']))
  root = str(tmp_path / 'sweep')
  jobs = sweep.plan(TINY, root, trials, {'config.data.data_dir': '/data dir'})
  text = sweep.write_commands(root, jobs)
  with open(os.path.join(root, 'commands.sh'), encoding='utf-8') as f:
    assert f.read() == text
  lines = text.splitlines()
  assert len(lines) == 2
  assert lines[0].startswith(f'python -m cam_jax.main --config={TINY} '
                             f'--workdir={root}/pooling=max,')
  assert '--config.model.kwargs.pooling=max ' in lines[0]  # no quotes needed
  assert "'--config.data.data_dir=/data dir'" in lines[0]
  for line, trial in zip(lines, trials):
    args = shlex.split(line)[3:]
    assert args[1] == f'--workdir={root}/{jobs[lines.index(line)].name}'
    config = sweep.parse_config(TINY, args[2:])
    assert config.data.data_dir == '/data dir'
    assert config.model.kwargs.pooling == trial['config.model.kwargs.pooling']
    assert config.model.kwargs.stage_strides == trial['config.model.kwargs.stage_strides']
    assert tuple(config.model.kwargs.widths) == tuple(trial['config.model.kwargs.widths'])
    assert config.optimizer.learning_rate == trial['config.optimizer.learning_rate']
    assert isinstance(config.optimizer.learning_rate, float)
    assert config.eval.heuristic_thresholds == trial['config.eval.heuristic_thresholds']
    assert config.data.flip is trial['config.data.flip']
    assert config.eval.predictions_file == trial['config.eval.predictions_file']


def test_bad_trials_fail_before_any_run(tmp_path):
  root = str(tmp_path)
  with pytest.raises(ValueError, match='config.nonsense is not a field'):
    sweep.plan(TINY, root, sweep.sweep('config.nonsense', [1]))
  with pytest.raises(ValueError, match='trial total_steps=0.5'):
    sweep.plan(TINY, root, sweep.sweep('config.total_steps', [0.5]))
  with pytest.raises(ValueError, match='cannot set it to None'):
    sweep.plan(TINY, root, sweep.sweep('config.data.data_dir', [None]))
  with pytest.raises(ValueError, match='config.seed is swept'):
    sweep.plan(TINY, root, sweep.sweep('config.seed', [0]), {'config.seed': 1})
  assert not os.listdir(root)


# --- Model options from the command line (configs/common.py) -------------------------

def _abstract_model(config):
  """The model as the trainer builds it (`restore.create_model`), shapes only."""
  return nnx.eval_shape(lambda: restore.create_model(config, 4, 0))


def test_every_model_option_is_settable_from_the_command_line():
  """Parsed as cam_jax.main parses its flags (a locked config): an option the config file
  does not set is still a key; the constructor gets only the options set."""
  config = sweep.parse_config(TINY, ['--config.model.kwargs.pooling=max',
                                     '--config.model.kwargs.widths=(4, 8)'])
  assert models.given_options(config.model.kwargs) == {'pooling': 'max', 'widths': (4, 8)}
  # What checkpoints record as model_kwargs: the options set, no others.
  assert checkpoints.checkpoint_meta(config, 4, 0)['model_kwargs'] == {
      'pooling': 'max', 'widths': (4, 8)}
  model = _abstract_model(config)
  assert model.pooling == 'max' and model.head.kernel.shape == (32, 4)
  with pytest.raises(Exception, match='nonsense'):
    sweep.parse_config(TINY, ['--config.model.kwargs.nonsense=1'])
  # An option left unset is the registered model's own default, e.g. tiny_gmp's pooling.
  config = sweep.parse_config(TINY, ['--config.model.name=tiny_gmp'])
  assert _abstract_model(config).pooling == 'max'
  # The default config's kwargs are as before: checkpoints written before still match.
  config = sweep.parse_config('configs/synthetic_gap.py', [])
  assert models.given_options(config.model.kwargs) == {
      'widths': (16, 32, 64), 'stage_strides': (1, 2, 1), 'cam_channels': 64}
  assert checkpoints.checkpoint_meta(config, 10, 0)['model_kwargs'] == {
      'widths': (16, 32, 64), 'stage_strides': (1, 2, 1), 'cam_channels': 64}


@pytest.mark.parametrize('name', ['googlenet_gap', 'alexnet_star_gap', 'nin'])
def test_paper_configs_list_their_network_options(name):
  config = sweep.parse_config(f'configs/{name}.py', ['--config.model.kwargs.batch_norm=true'])
  options = common.model_option_names(config.model.name)
  assert 'batch_norm' in options and 'dropout_rate' in options and 'dtype' not in options
  assert all(option in config.model.kwargs for option in options)
  assert config.model.kwargs.batch_norm is True
  with pytest.raises(ValueError, match="no option 'widths'; its options: "):
    common.model_options(config.model.name, widths=(1,))


# --- Running and collecting -----------------------------------------------------------

_FAKE_MAIN = '''#!{python}
"""A stand-in for `python -m cam_jax.main`: seed 3 fails, seed 2 stops early (as on
SIGTERM: exit 0, no eval.json), the others write eval.json."""
import json, os, sys, time
args = dict(a.split('=', 1) for a in sys.argv[3:])
workdir, seed = args['--workdir'], int(args['--config.seed'])
print('training', seed, flush=True)
time.sleep(0.3)
if seed == 3:
  print('Traceback: something broke', flush=True)
  sys.exit(3)
if seed == 2:
  sys.exit(0)
with open(os.path.join(workdir, 'eval.json'), 'w') as f:
  json.dump({{'cls_top1_error': seed / 10, 'gt_known_loc_accuracy': 1 - seed / 8,
             'step': 6, 'split': 'test', 'per_class_num_images': [1, 2]}}, f)
'''


@pytest.fixture
def fake_python(tmp_path):
  path = tmp_path / 'fake_python'
  path.write_text(_FAKE_MAIN.format(python=sys.executable))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


def test_local_runner_skips_finished_trials_and_reports_failures(fake_python, tmp_path):
  root = str(tmp_path / 'sweep')
  jobs = sweep.plan(TINY, root, sweep.sweep('config.seed', [0, 1, 2, 3]))
  # seed=0 finished in an earlier sweep: it is not run again (the fake would rewrite it).
  os.makedirs(jobs[0].workdir)
  with open(os.path.join(jobs[0].workdir, 'eval.json'), 'w') as f:
    json.dump({'cls_top1_error': 0.5, 'gt_known_loc_accuracy': 0.25}, f)

  failures = sorted(sweep.run_local(jobs, parallel=2, python=fake_python), key=lambda f: f.name)
  assert not os.path.exists(os.path.join(jobs[0].workdir, 'log.txt'))
  assert [(f.name, f.status) for f in failures] == [('seed=2', None), ('seed=3', 3)]
  assert 'stopped before the end (run the sweep again to resume)' in failures[0].report()
  assert 'Traceback: something broke' in failures[1].log_tail
  assert 'failed, exit status 3; end of its log:' in failures[1].report()
  assert sweep.read_results(jobs[1].workdir)['cls_top1_error'] == 0.1
  with open(os.path.join(jobs[1].workdir, 'log.txt')) as f:
    log = f.read()
  assert log.startswith('# ') and 'training 1' in log  # the command, then its output

  # Run again: only the unfinished trials run again, their logs appended to.
  assert [f.name for f in sweep.run_local(jobs, python=fake_python)] == ['seed=2', 'seed=3']
  with open(os.path.join(jobs[3].workdir, 'log.txt')) as f:
    assert f.read().count('training 3') == 2


def test_slurm_without_submitit_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'submitit', None)  # as if not installed
  jobs = sweep.plan(TINY, str(tmp_path), sweep.sweep('config.seed', [0]))
  with pytest.raises(ImportError, match=r"pip install 'cam_jax\[slurm\]'"):
    sweep.run_slurm(jobs, str(tmp_path), {})


def test_slurm_path_through_submitits_local_executor(fake_python, tmp_path):
  # submitit's 'local' cluster runs the job array here, as SLURM would run it elsewhere:
  # the same pickled run_trial calls, results and failures.
  root = str(tmp_path / 'sweep')
  jobs = sweep.plan(TINY, root, sweep.sweep('config.seed', [1, 3]))
  failures = sweep.run_slurm(jobs, root, {'timeout_min': 5}, cluster='local',
                             python=fake_python)
  assert [(f.name, f.status) for f in failures] == [('seed=3', 3)]
  assert sweep.read_results(jobs[0].workdir)['cls_top1_error'] == 0.1
  assert os.listdir(os.path.join(root, 'slurm'))  # submitit's own logs
  # Again: the finished trial is not submitted again.
  failures = sweep.run_slurm(jobs, root, {'timeout_min': 5}, cluster='local',
                             python=fake_python)
  assert [f.name for f in failures] == ['seed=3']
  with open(os.path.join(jobs[0].workdir, 'log.txt')) as f:
    assert f.read().count('training 1') == 1


def test_results_from_eval_json(tmp_path):
  root = str(tmp_path / 'sweep')
  trials = sweep.product(sweep.sweep('config.model.kwargs.stage_strides', [(1, 2, 1), (2, 2, 2)]),
                         sweep.sweep('config.model.kwargs.cam_channels', [64, 256]))
  jobs = sweep.plan('configs/synthetic_gap.py:sweep_map_resolution', root, trials)
  written = {}
  for k, job in enumerate(jobs[:3]):  # the last trial has not finished
    written[job.name] = {'cls_top1_error': 0.125 * k, 'gt_known_loc_accuracy': 0.8 - 0.1 * k,
                         'gt_known_mean_iou': 0.6, 'num_images': 1000, 'step': 600,
                         'split': 'test', 'per_class_num_images': [500, 500]}
    os.makedirs(job.workdir)
    with open(os.path.join(job.workdir, 'eval.json'), 'w') as f:
      json.dump(written[job.name], f)

  records = sweep.write_results(root, jobs, 'map resolution')
  assert len(records) == 3
  with open(os.path.join(root, 'results.csv'), newline='') as f:
    rows = list(csv.reader(f))
  # The swept values, then the scalar metrics (lists and strings left out).
  assert rows[0] == ['model.kwargs.stage_strides', 'model.kwargs.cam_channels',
                     'cls_top1_error', 'gt_known_loc_accuracy', 'gt_known_mean_iou',
                     'num_images', 'step']
  assert len(rows) == 4
  for row, job in zip(rows[1:], jobs):
    numbers = written[job.name]
    assert row[:2] == [repr(job.trial['config.model.kwargs.stage_strides']),
                       repr(job.trial['config.model.kwargs.cam_channels'])]
    assert [float(v) for v in row[2:]] == [numbers[k] for k in rows[0][2:]]

  with open(os.path.join(root, 'results.md'), encoding='utf-8') as f:
    md = f.read()
  assert md.startswith('# Sweep map resolution\n\n3 of 4 trials finished.\n')
  assert ('| stage_strides | cam_channels |' not in md and
          '| model.kwargs.stage_strides | model.kwargs.cam_channels | cls_top1_error |' in md)
  assert '| 1-2-1 | 256 | 0.125 | 0.7 | 0.6 | 1000 | 600 |' in md
  assert md.rstrip().endswith('Not finished: stage_strides=2-2-2,cam_channels=256.')

  # A plot per (fraction that varies, swept field); constant and other metrics have none.
  plots = sorted(os.listdir(os.path.join(root, 'plots')))
  assert plots == ['cls_top1_error--cam_channels.png', 'cls_top1_error--stage_strides.png',
                   'gt_known_loc_accuracy--cam_channels.png',
                   'gt_known_loc_accuracy--stage_strides.png']
  picture = np.asarray(Image.open(os.path.join(root, 'plots', plots[0])))
  assert picture.shape == (360, 480, 3) and len(np.unique(picture.reshape(-1, 3), axis=0)) > 2


# --- End to end -------------------------------------------------------------------------

def test_sweep_smoke_end_to_end(tiny_data_dir, tmp_path):
  """`python -m cam_jax.sweep` runs both trials of the tiny config through cam_jax.main,
  with a model option given on its command line, and collects them; run again, it skips
  them."""
  root = str(tmp_path / 'smoke')
  cmd = [sys.executable, '-m', 'cam_jax.sweep', '--config=configs/synthetic_gap.py:sweep_smoke',
         f'--root={root}', '--launcher=local', f'--config.data.data_dir={tiny_data_dir}',
         '--config.data.builder_config=tiny', '--config.data.prepare=False',
         '--config.figures.enabled=False', '--config.eval.box_workers=0',
         '--config.model.kwargs.pooling=max']
  # One device: compiling for the 8 fake ones would take longer, and test_main runs them.
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]

  results = {}
  for seed in (0, 1):
    workdir = os.path.join(root, f'seed={seed}')
    with open(os.path.join(workdir, 'eval.json')) as f:
      results[seed] = json.load(f)
    assert results[seed]['step'] == 6
    meta, _ = checkpoints.read_meta_at(workdir)
    assert meta['model'] == 'tiny_gap' and meta['model_kwargs'] == {'pooling': 'max'}
  with open(os.path.join(root, 'results.csv'), newline='') as f:
    rows = list(csv.DictReader(f))
  assert [row['seed'] for row in rows] == ['0', '1']
  for row, seed in zip(rows, (0, 1)):
    assert float(row['gt_known_loc_accuracy']) == results[seed]['gt_known_loc_accuracy']
    assert float(row['cls_top1_error']) == results[seed]['cls_top1_error']

  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr.count('finished earlier, skipped') == 2
  assert 'started' not in proc.stderr

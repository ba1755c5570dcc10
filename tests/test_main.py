"""`python -m cam_jax.main` end to end on the tiny synthetic config, as a user runs it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FRACTIONS = ['cls_top1_error', 'cls_top5_error', 'loc_top1_error', 'loc_top5_error',
             'gt_known_loc_accuracy', 'gt_known_mean_iou', 'center_baseline_loc_accuracy',
             'max_box_acc', 'max_box_acc_v2']


def _run_main(workdir, data_dir, *extra):
  cmd = [sys.executable, '-m', 'cam_jax.main', '--config=configs/synthetic_gap.py:tiny',
         f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *extra]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_main_trains_evaluates_and_writes_everything(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  proc = _run_main(workdir, tiny_data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| classification top-1 error |' in proc.stdout
  assert 'images/s' in proc.stderr and 'ETA' in proc.stderr

  with open(os.path.join(workdir, 'eval.json')) as f:
    results = json.load(f)
  for key in FRACTIONS:
    assert 0.0 <= results[key] <= 1.0, (key, results[key])
  assert results['num_images'] == 64  # the tiny test split
  assert 0 <= results['pxap'] <= 1  # cam_synth has masks
  assert results['step'] == 6 and results['top_k'] == 4  # 4 classes: top-5 is top-4
  # Top-5 is never worse than top-1; localization error is never below classification error.
  assert results['cls_top5_error'] <= results['cls_top1_error']
  assert results['loc_top5_error'] <= results['loc_top1_error']
  assert results['loc_top1_error'] >= results['cls_top1_error']
  assert results['loc_top5_error'] >= results['cls_top5_error']

  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train] == [2, 3, 4, 6]  # every 2 steps, and at checkpoints
  assert all(np.isfinite(r['loss']) and r['images_per_s'] > 0 for r in train)
  # The evaluations during training run on the validation split, which chooses best/;
  # the reported result (eval.json) on the test split.
  assert [r['step'] for r in records if r['split'] == 'validation'] == [4]
  assert results['split'] == 'test'

  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  # The eval at step 4 (the only one during training) is the best so far.
  assert os.listdir(os.path.join(workdir, 'best')) == ['4']
  events = os.listdir(os.path.join(workdir, 'tensorboard'))
  assert len(events) == 1 and events[0].startswith('events.out.tfevents')
  eval_4 = [r for r in records if r['split'] == 'validation'][0]
  assert 'gt_known_loc_accuracy' in eval_4  # localization is evaluated during training
  pictures = sorted(os.listdir(os.path.join(workdir, 'cams')))
  assert pictures == ['00.png', '01.png', '02.png', '03.png']
  png = np.asarray(Image.open(os.path.join(workdir, 'cams', '00.png')))
  assert png.ndim == 3 and png.shape[2] == 3 and png.shape[1] > png.shape[0] > 32
  # The paper's figures of the evaluation (cam_jax.figures).
  assert sorted(os.listdir(os.path.join(workdir, 'figures'))) == [
      'boxes.png', 'cam_vs_backprop.png', 'class_cams.png']

  # --mode=evaluate reads the checkpoint back and reproduces the numbers.
  os.remove(os.path.join(workdir, 'eval.json'))
  proc = _run_main(workdir, tiny_data_dir, '--mode=evaluate')
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'eval.json')) as f:
    again = json.load(f)
  # The backprop baseline (the config's eval.baselines) through the same box stage.
  for key in ('loc_top1_error', 'gt_known_loc_accuracy', 'max_box_acc', 'pxap'):
    assert 0 <= again.pop(f'backprop/{key}') <= 1, key
  assert '| backprop: GT-known localization accuracy |' in proc.stdout
  assert {k: v for k, v in again.items() if not k.startswith('backprop/')} == results


def test_evaluate_without_checkpoint_fails_clearly(tiny_data_dir, tmp_path):
  proc = _run_main(str(tmp_path / 'none'), tiny_data_dir, '--mode=evaluate')
  assert proc.returncode != 0
  assert 'No checkpoint in' in proc.stderr and 'train first' in proc.stderr


# --- The real-data loaders, end to end on small fake files in their real formats --------

_CONFIG_ON = '''"""synthetic_gap:tiny's model and schedule on another dataset (written by a test)."""
from configs import synthetic_gap


def get_config():
  config = synthetic_gap.get_config('tiny')
  config.data.builder_config = None
  config.data.prepare = False
  config.data.max_boxes = 4
  config.eval.num_pictures = 2
{settings}
  return config
'''


def _prepare_fake(kind, tmp_path):
  """Writes fake files of `kind`, prepares them if needed; `(config lines, num_eval)`."""
  from tests.data import fake_cub, fake_ilsvrc, fake_wsol  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / 'tfds')
  if kind == 'ilsvrc2012_loc':
    manual = str(tmp_path / 'manual')
    expected = fake_ilsvrc.write_fake_ilsvrc(manual, form='devkit')
    # The documented prepare command, as a user runs it.
    proc = subprocess.run(
        [sys.executable, '-m', 'cam_jax.data.prepare', '--dataset=ilsvrc2012_loc',
         f'--data_dir={data_dir}', f'--manual_dir={manual}'],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = {'name': kind, 'data_dir': data_dir, 'eval_split': 'validation',
                'train_crop': 'random_resized', 'eval_crop': 'resize_crop',
                'select_split': 'holdout', 'holdout': 4}
    return settings, len(expected['validation'])
  if kind == 'cub2011_loc':
    from cam_jax import data  # pylint: disable=g-import-not-at-top
    expected = fake_cub.write_fake_cub(str(tmp_path / 'manual'))
    data.prepare(data.get_builder(kind, 'segmentation', data_dir), str(tmp_path / 'manual'))
    # Worker processes decode, and their state goes into the checkpoints.
    settings = {'name': kind, 'builder_config': 'segmentation', 'data_dir': data_dir,
                'num_workers': 1, 'select_split': 'holdout', 'holdout': 2}
    return settings, len(expected['splits']['test'])
  expected = fake_wsol.write_fake_wsol(str(tmp_path / 'wsol'), 'CUB')
  settings = {'name': 'wsol', 'wsol.dataset': 'CUB',
              'wsol.metadata_root': expected['metadata_root'],
              'wsol.image_root': expected['image_root'], 'select_split': 'val'}
  return settings, len(expected['splits']['test']['image_ids'])


@pytest.mark.parametrize('kind', ['ilsvrc2012_loc', 'cub2011_loc', 'wsol'])
def test_main_trains_and_evaluates_on_each_real_format(kind, tmp_path):
  settings, num_eval = _prepare_fake(kind, tmp_path)
  lines = '\n'.join(f'  config.data.{k} = {v!r}' for k, v in settings.items())
  config_path = tmp_path / 'config.py'
  config_path.write_text(_CONFIG_ON.format(settings=lines))
  workdir = str(tmp_path / 'run')
  cmd = [sys.executable, '-m', 'cam_jax.main', f'--config={config_path}', f'--workdir={workdir}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': REPO})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'eval.json')) as f:
    results = json.load(f)
  assert results['num_images'] == num_eval and results['step'] == 6
  for key in FRACTIONS:
    assert 0.0 <= results[key] <= 1.0, (key, results[key])
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert len(os.listdir(os.path.join(workdir, 'cams'))) == 2
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    selections = [json.loads(line)['split'] for line in f if '"train"' not in line]
  assert selections == [settings['select_split']]

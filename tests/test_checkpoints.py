"""Checkpoint helpers: the best checkpoint, parameter paths."""

import os

import jax
import numpy as np
import pytest

from cam_jax import checkpoints
from configs import synthetic_gap


def test_best_checkpoint_keeps_the_best_across_reopening(tmp_path):
  config = synthetic_gap.get_config('tiny')
  config.best_metric, config.best_mode = 'cls_top1_error', 'min'
  state = {'w': np.arange(3.0)}
  best = checkpoints.BestCheckpoint(str(tmp_path), config)
  assert best.update(4, state, {'step': 4}, {'cls_top1_error': 0.5})
  assert not best.update(8, state, {'step': 8}, {'cls_top1_error': 0.6})
  assert best.update(12, state, {'step': 12}, {'cls_top1_error': 0.25})
  best.close()
  again = checkpoints.BestCheckpoint(str(tmp_path), config)
  assert again.value == 0.25
  assert not again.update(16, state, {'step': 16}, {'cls_top1_error': 0.3})
  again.close()
  assert os.listdir(tmp_path / 'best') == ['12']
  with pytest.raises(KeyError, match='best_metric'):
    checkpoints.BestCheckpoint(str(tmp_path), config).update(20, state, {}, {'other': 1})


def test_param_path_of_live_and_restored_trees():
  live = [(jax.tree_util.DictKey('trunk'), jax.tree_util.SequenceKey(3),
           jax.tree_util.DictKey('kernel'), jax.tree_util.GetAttrKey('value'))]
  restored = [(jax.tree_util.DictKey('trunk'), jax.tree_util.DictKey('3'),
               jax.tree_util.DictKey('kernel'), jax.tree_util.DictKey('value'))]
  assert checkpoints.param_path(live[0]) == 'trunk/3/kernel'
  assert checkpoints.param_path(restored[0]) == 'trunk/3/kernel'


def test_checkpoint_locations(tmp_path):
  work = tmp_path / 'w'
  (work / 'checkpoints' / '12' / 'meta').mkdir(parents=True)
  (work / 'best' / '8' / 'meta').mkdir(parents=True)
  ckpt = str(work / 'checkpoints')
  assert checkpoints.checkpoint_location(str(work)) == (ckpt, None)
  assert checkpoints.checkpoint_location(ckpt) == (ckpt, None)
  assert checkpoints.checkpoint_location(str(work / 'best')) == (str(work / 'best'), None)
  assert checkpoints.checkpoint_location(os.path.join(ckpt, '12')) == (ckpt, 12)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    checkpoints.checkpoint_location(str(tmp_path / 'missing'))


def _settings(**changes):
  config = synthetic_gap.get_config('tiny')
  for key, value in changes.items():
    node = config
    *path, last = key.split('.')
    for name in path:
      node = node[name]
    node[last] = value
  return checkpoints.resume_settings(config)


def test_resume_settings_name_what_an_exact_resume_needs():
  settings = _settings()
  assert settings['batch_size'] == 16 and settings['process_count'] == 1
  assert settings['data.image_size'] == 32 and settings['data.builder_config'] == 'tiny'
  assert settings['optimizer.schedule'] == 'cosine' and settings['total_steps'] == 6
  assert settings['optimizer.new_layers'] == ['cam_conv/.*', 'head/.*']  # as JSON stores it


@pytest.mark.parametrize('field,value', [
    ('batch_size', 32), ('data.image_size', 48), ('data.train_split', 'validation'),
    ('data.holdout', 10), ('data.builder_config', 'default'), ('seed', 1),
    ('optimizer.learning_rate', 0.1), ('total_steps', 12), ('label_smoothing', 0.1)])
def test_a_resume_that_changes_the_run_is_refused_naming_the_field(field, value):
  meta = {'resume': _settings()}
  with pytest.raises(ValueError, match=rf'other settings.*{field}: .* in the checkpoint, '
                                       rf'.*{value!r} now.*Use the config'):
    checkpoints.check_resume(meta, _settings(**{field: value}), '/w/checkpoints/3')


def test_a_resume_goes_on_with_a_warning_where_it_is_safe(caplog):
  meta = {'resume': _settings(**{'optimizer.schedule': 'step'})}
  now = _settings(**{'optimizer.schedule': 'step', 'total_steps': 12,
                     'model.dtype': 'bfloat16'})
  now['process_count'] = 4
  checkpoints.check_resume(meta, now, '/w/checkpoints/3')  # no error
  for change in ('process_count: 1 in the checkpoint, 4 now', 'total_steps: 6',
                 "model.dtype: 'float32' in the checkpoint, 'bfloat16' now"):
    assert change in caplog.text
  # A checkpoint from before the settings were recorded: a warning, nothing checked.
  checkpoints.check_resume({}, now, '/w/checkpoints/3')
  assert 'before checkpoints recorded their run settings' in caplog.text

"""The three splits of a run: training (less its held-out part), selection, report."""

import numpy as np
import pytest

from cam_jax import data
from configs import common


def _config(data_dir, **changes):
  config = common.get_common().data
  config.builder_config = 'tiny'
  config.data_dir = data_dir
  for key, value in changes.items():
    config[key] = value
  return config


def _images(source):
  return [bytes(source[i]['image']) for i in range(len(source))]


def test_cam_synth_has_a_validation_split_of_its_own(tiny_data_dir):
  train, _ = data.load_source(_config(tiny_data_dir), 'train')
  validation, _ = data.load_source(_config(tiny_data_dir), 'validation')
  test, _ = data.load_source(_config(tiny_data_dir), 'test')
  assert (len(train), len(validation), len(test)) == (256, 64, 64)
  assert not set(_images(validation)) & (set(_images(train)) | set(_images(test)))


def test_the_held_out_part_of_train_is_kept_out_of_training(tiny_data_dir):
  config = _config(tiny_data_dir, holdout=40)
  kept, _ = data.load_train_source(config)
  held, info = data.load_source(config, 'holdout')
  full, _ = data.load_source(config, 'train')
  assert (len(kept), len(held)) == (216, 40) and info.num_classes == 4
  assert set(_images(kept)) | set(_images(held)) == set(_images(full))
  assert not set(_images(kept)) & set(_images(held))
  # A fixed random choice over the whole split (not its tail, which for a split stored
  # class by class would be a few classes), the same for every run.
  indices = data.holdout_indices(256, 40)
  np.testing.assert_array_equal(indices, data.holdout_indices(256, 40))
  assert indices[0] < 64 and indices[-1] > 192
  assert _images(held) == [bytes(full[int(i)]['image']) for i in indices]
  # Without a holdout, training reads the whole split.
  assert len(data.load_train_source(_config(tiny_data_dir))[0]) == 256


def test_holdout_errors_name_the_setting(tiny_data_dir):
  with pytest.raises(ValueError, match=r"split 'holdout' .*set config.data.holdout"):
    data.load_source(_config(tiny_data_dir), 'holdout')
  with pytest.raises(ValueError, match=r'config.data.holdout=256: expected 0 <= holdout < 256'):
    data.load_train_source(_config(tiny_data_dir, holdout=256))
  with pytest.raises(ValueError, match=r"no split 'val'; splits: .*validation.*or 'holdout'"):
    data.load_source(_config(tiny_data_dir, select_split='val'), 'val')

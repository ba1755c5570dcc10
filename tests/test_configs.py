"""Every config loads, names registered models, and its small variant runs end to end."""

import glob
import importlib
import json
import os
import subprocess
import sys

import pytest

from cam_jax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
                 if not os.path.basename(p).startswith(('_', 'common')))
SMALL_VARIANT = {'synthetic_gap': 'tiny'}


def _variant(name):
  return SMALL_VARIANT.get(name, 'runlocal')


@pytest.mark.parametrize('name', CONFIGS)
def test_config_loads_and_names_a_registered_model(name):
  module = importlib.import_module(f'configs.{name}')
  assert 'python -m cam_jax.main --config=configs/' in module.__doc__  # the run command
  for arg in (None, _variant(name)):
    config = module.get_config(arg)
    assert config.model.name in models.MODELS
    assert config.batch_size % 8 == 0  # runs on 8 devices
  with pytest.raises(ValueError, match='unknown variant'):
    module.get_config('nonsense')


@pytest.mark.parametrize('name', [n for n in CONFIGS if n != 'synthetic_gap'])
def test_small_variant_runs_through_main(name, tiny_data_dir, tmp_path):
  """The real architecture, a few steps on the tiny synthetic split (32×32 images)."""
  workdir = str(tmp_path / name)
  cmd = [sys.executable, '-m', 'cam_jax.main', f'--config=configs/{name}.py:{_variant(name)}',
         f'--workdir={workdir}', f'--config.data.data_dir={tiny_data_dir}',
         '--config.data.builder_config=tiny', '--config.data.image_size=32',
         '--config.data.prepare=False']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'eval.json')) as f:
    results = json.load(f)
  assert results['num_images'] == 16 and 0 <= results['gt_known_loc_accuracy'] <= 1

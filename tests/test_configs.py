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


# GMP and AlexNet*-GAP differ from these only in layers that the unit tests check; each
# end-to-end run of a big graph costs tens of seconds of compilation.
@pytest.mark.parametrize('name', ['vgg16_gap', 'googlenet_gap', 'alexnet_gap', 'nin'])
def test_small_variant_runs_through_main(name, tiny_data_dir, tmp_path):
  """The real architecture, a few steps on the tiny synthetic split (32×32 images, resized
  to the variant's input size; boxes are scored back on the 32×32 originals)."""
  workdir = str(tmp_path / name)
  cmd = [sys.executable, '-m', 'cam_jax.main', f'--config=configs/{name}.py:{_variant(name)}',
         f'--workdir={workdir}', f'--config.data.data_dir={tiny_data_dir}',
         '--config.data.builder_config=tiny', '--config.data.prepare=False',
         # The figures' backprop graph of each network would double the compilation;
         # test_main and test_figures run them.
         '--config.figures.enabled=False']
  # One device: compiling these graphs for 8 fake devices takes twice as long, and
  # tests/test_main.py already runs the entry point on 8.
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'eval.json')) as f:
    results = json.load(f)
  assert results['num_images'] == 16 and 0 <= results['gt_known_loc_accuracy'] <= 1

"""Every config loads, names registered models, and its small variant runs end to end."""

import glob
import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cam_jax import models
from cam_jax import sharding
from cam_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
                 if not os.path.basename(p).startswith(('_', 'common')))
SMALL_VARIANT = {'synthetic_gap': 'tiny', 'cub_transfer': 'tiny'}


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


# Two networks end to end (each run of a big graph costs tens of seconds of compilation);
# every other config's model, optimizer and train step are traced below, and their
# layers are checked by tests/models.
END_TO_END = ['vgg16_gap', 'googlenet_gap']


@pytest.mark.parametrize('name', [n for n in CONFIGS if n not in END_TO_END + ['synthetic_gap']])
def test_small_variant_train_step_traces(name):
  """The small variant's train step, traced on abstract values (nothing compiled)."""
  config = importlib.import_module(f'configs.{name}').get_config(_variant(name))
  mesh = sharding.make_mesh()
  graphdef, state = train.abstract_train_state(config, 4, mesh)
  step = train.make_train_step(graphdef, mesh)
  size = config.data.image_size
  batch = {'image': jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
  new_state, metrics = jax.eval_shape(step, state, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert metrics['loss'].shape == () and metrics['loss'].dtype == jnp.float32


@pytest.mark.parametrize('name', END_TO_END)
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

"""Test-wide set-up: eight fake CPU devices, so that sharded code runs as on 8 chips.

The flag must be set before JAX initialises its backends, hence here, before any test
module imports jax.
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """A TFDS data dir with cam_synth/tiny prepared once for the whole session."""
  from cam_jax import data  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  data.get_builder('cam_synth', 'tiny', data_dir).download_and_prepare()
  return data_dir

"""Test-wide set-up: eight fake CPU devices, so that sharded code runs as on 8 chips, and
one persistent compilation cache for the session.

The settings must be made before JAX initialises, hence here, before any test module
imports jax. The cache is inherited by the subprocesses that run the real entry point
(test_main, the multi-process jobs), which would otherwise compile the same programs
again in every run.
"""

import atexit
import os
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='cam_jax_test_jit_cache_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'

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

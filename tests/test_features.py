"""Feature extraction (cam_jax.features): the pooled features are the network's own, the
cache resumes, crops are the boxes' pixels."""

import glob
import os

import jax
import numpy as np
import pytest
from flax import nnx

from cam_jax import data as data_lib
from cam_jax import features
from cam_jax import restore
from cam_jax import sharding
from cam_jax.data import conventions
from cam_jax.data import pipeline
from configs import synthetic_gap

NUM = 40  # images of the tiny test split used (not a multiple of the batch: padding)


@pytest.fixture(scope='module')
def setup(tiny_data_dir):
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.data.builder_config = 'tiny'
  source, info = data_lib.load_source(config.data, 'test')
  model = restore.create_model(config, info.num_classes, seed=3)
  return config, source, model, sharding.make_mesh()


def _extract(setup, **kwargs):
  config, source, model, mesh = setup
  return features.extract(model, mesh, source, image_size=config.data.image_size,
                          batch_size=16, convention=conventions.from_config(config.data),
                          num_examples=NUM, **kwargs)


def _direct(setup, crop_boxes=None):
  """The network called on the preprocessed images, pooled by numpy."""
  config, source, model, _ = setup
  prep = pipeline.EvalPreprocess(config.data.image_size, config.data.max_boxes,
                                 convention=conventions.from_config(config.data),
                                 crop_boxes=crop_boxes)
  images = np.stack([prep.map((i, source[i]))['image'] for i in range(NUM)])
  _, aux = model(images, train=False)
  maps = np.asarray(aux['features'], np.float64)
  return maps.mean(axis=(1, 2)), maps


def test_pooled_features_are_the_networks_own(setup):
  got = _extract(setup, with_maps=True)
  pooled, maps = _direct(setup)
  np.testing.assert_allclose(got.pooled_NK, pooled, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.maps_NhwK, maps, rtol=1e-5, atol=1e-6)
  _, source, _, _ = setup
  np.testing.assert_array_equal(got.indices_N, np.arange(NUM))
  np.testing.assert_array_equal(got.labels_N, [source[i]['label'] for i in range(NUM)])
  assert got.file_names == [pipeline.example_name(source[i], i) for i in range(NUM)]


def test_crop_boxes_give_the_features_of_the_crops(setup):
  rng = np.random.default_rng(0)
  x0, y0 = rng.integers(0, 12, NUM), rng.integers(0, 12, NUM)
  boxes = np.stack([x0, y0, x0 + rng.integers(8, 20, NUM), y0 + rng.integers(8, 20, NUM)], 1)
  got = _extract(setup, crop_boxes=boxes)
  pooled, _ = _direct(setup, crop_boxes=boxes)
  np.testing.assert_allclose(got.pooled_NK, pooled, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got.pooled_NK, _direct(setup)[0], atol=1e-3)


def test_cache_resumes_and_a_stale_cache_is_recomputed(setup, tmp_path, monkeypatch):
  monkeypatch.setattr(features, 'CHUNK_BATCHES', 1)  # one chunk per batch: 3 chunks
  cache = str(tmp_path / 'cache')
  first = _extract(setup, cache_dir=cache, fingerprint={'checkpoint': 'a'})
  chunks = sorted(glob.glob(os.path.join(cache, '*.npz')))
  assert len(chunks) == 3
  os.remove(chunks[-1])
  stamps = {p: os.stat(p).st_mtime_ns for p in chunks[:-1]}
  again = _extract(setup, cache_dir=cache, fingerprint={'checkpoint': 'a'})
  np.testing.assert_array_equal(again.pooled_NK, first.pooled_NK)
  assert again.file_names == first.file_names
  assert {p: os.stat(p).st_mtime_ns for p in chunks[:-1]} == stamps  # not recomputed
  assert os.path.exists(chunks[-1])
  # Another checkpoint: every chunk afresh.
  _extract(setup, cache_dir=cache, fingerprint={'checkpoint': 'b'})
  assert all(os.stat(p).st_mtime_ns != t for p, t in stamps.items())
  assert not glob.glob(os.path.join(cache, '.*'))  # no temporary files left


def test_networks_without_a_pooled_head_are_refused():

  class Plain(nnx.Module):
    pass

  with pytest.raises(TypeError, match='no global pooling layer'):
    features.pooling_of(Plain())


def test_several_processes_need_a_cache_folder(setup, monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  with pytest.raises(ValueError, match='pass cache_dir'):
    _extract(setup)

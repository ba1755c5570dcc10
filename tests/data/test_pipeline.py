"""grain pipelines: determinism by step (what resume relies on), padding, normalisation."""

import numpy as np

from cam_jax import data
from cam_jax.data import pipeline


def _source(data_dir, split):
  return data.get_builder('cam_synth', 'tiny', data_dir).as_data_source(split)


def test_train_batches_resume_yields_the_same_batches(tiny_data_dir):
  source = _source(tiny_data_dir, 'train')
  kwargs = dict(image_size=32, process_batch_size=8, seed=3)
  straight = pipeline.train_batches(source, **kwargs)
  first = [next(straight) for _ in range(40)]  # 40 * 8 = 320 > 256: crosses an epoch
  resumed = pipeline.train_batches(source, start_step=35, **kwargs)
  for k in range(35, 40):
    batch = next(resumed)
    np.testing.assert_array_equal(batch['image'], first[k]['image'])
    np.testing.assert_array_equal(batch['label'], first[k]['label'])
  assert first[0]['image'].shape == (8, 32, 32, 3) and first[0]['image'].dtype == np.float32
  # Each epoch has its own order.
  epoch0 = np.concatenate([b['label'] for b in first[:32]])
  epoch1 = np.concatenate([b['label'] for b in first[32:40]])
  assert not np.array_equal(epoch0[:64], epoch1)


def test_eval_batches_pad_and_keep_ground_truth(tiny_data_dir):
  source = _source(tiny_data_dir, 'test')
  got = list(pipeline.eval_batches(source, image_size=32, process_batch_size=24, max_boxes=4))
  assert [n for _, n in got] == [24, 24, 16]  # 64 images
  last, n = got[-1]
  assert last['image'].shape == (24, 32, 32, 3)
  np.testing.assert_array_equal(last['index'][:n], np.arange(48, 64))
  for i in (0, 5, 63):
    batch, _ = got[i // 24]
    row = i % 24
    ex = source[i]
    k = len(ex['boxes'])
    assert batch['num_boxes'][row] == k
    np.testing.assert_array_equal(batch['boxes'][row, :k], ex['boxes'])
    assert (batch['boxes'][row, k:] == -1).all()
    np.testing.assert_array_equal(batch['orig_hw'][row], [32, 32])
    np.testing.assert_array_equal(pipeline.denormalize(batch['image'][row]), ex['image'])


def test_eval_batches_limit_examples(tiny_data_dir):
  source = _source(tiny_data_dir, 'test')
  got = list(pipeline.eval_batches(source, image_size=32, process_batch_size=8, max_boxes=4,
                                   num_examples=10))
  assert [n for _, n in got] == [8, 2]


def test_resize_and_grayscale():
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
  rgb = pipeline.to_rgb_uint8(gray)
  assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == gray).all()
  assert pipeline.resize(rgb, 8).shape == (8, 8, 3)


def test_eval_batches_of_an_empty_share_keep_the_batch_shape(tiny_data_dir, monkeypatch):
  """Process 3 of 4 reading 3 images owns none of them, but must step with the others."""
  import jax  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, 'process_index', lambda: 3)
  monkeypatch.setattr(jax, 'process_count', lambda: 4)
  source = _source(tiny_data_dir, 'test')
  got = list(pipeline.eval_batches(source, image_size=32, process_batch_size=8, max_boxes=4,
                                   num_examples=3))
  assert [n for _, n in got] == [0]
  assert got[0][0]['image'].shape == (8, 32, 32, 3)

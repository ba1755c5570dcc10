"""cam_synth: what the dataset promises, checked on drawn examples and a prepared split."""

import collections
import hashlib

import numpy as np
import pytest

from cam_jax import boxes as boxes_lib
from cam_jax import data
from cam_jax.data import synthetic


# sha256 of the first five test images and masks of cam_synth/default 1.2.0.
_DIGEST_1_2_0 = '3c15a944eb5342f457cfaf484ebd017274041c077810122210d01d75deca0e67'


def _examples(n, size=64, num_classes=10, split=0):
  return [synthetic.render_example(np.random.default_rng([0, split, i]), size, num_classes)
          for i in range(n)]


def test_render_is_deterministic_in_the_seed():
  a = synthetic.render_example(np.random.default_rng([0, 0, 7]), 64, 10)
  b = synthetic.render_example(np.random.default_rng([0, 0, 7]), 64, 10)
  c = synthetic.render_example(np.random.default_rng([0, 0, 8]), 64, 10)
  for key in ('image', 'mask', 'boxes'):
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['image'], c['image'])


def test_boxes_are_tight_around_the_mask_and_sized_20_to_50_percent():
  for ex in _examples(200):
    boxes_N4, mask_HW = ex['boxes'], ex['mask']
    assert 1 <= len(boxes_N4) <= 2
    # Each box's side is between 20 % and 50 % of the 64-pixel side: 13..32 pixels
    # (0.2 * 64 = 12.8 rounds to 13).
    sides = np.concatenate([boxes_N4[:, 2] - boxes_N4[:, 0] + 1, boxes_N4[:, 3] - boxes_N4[:, 1] + 1])
    assert sides.min() >= 13 and sides.max() <= 32, sides
    # The union of the boxes holds every mask pixel, and each box edge touches the mask.
    covered = np.zeros_like(mask_HW, bool)
    for x0, y0, x1, y1 in boxes_N4:
      covered[y0:y1 + 1, x0:x1 + 1] = True
      inside = mask_HW[y0:y1 + 1, x0:x1 + 1]
      assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    assert not (mask_HW.astype(bool) & ~covered).any()


def test_labels_cover_every_class_and_positions_spread():
  exs = _examples(500)
  labels = np.array([ex['label'] for ex in exs])
  assert set(labels) == set(range(10))
  centres = np.array([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for ex in exs for b in ex['boxes']])
  # Uniform positions: centres reach every quarter of the image.
  assert (centres < 24).any(0).all() and (centres > 40).any(0).all()


def test_center_box_baseline_scores_at_most_25_percent():
  """A centred box of the mean object size must rarely hit: positions are uniform."""
  exs = _examples(500, split=1)
  all_boxes = np.concatenate([ex['boxes'] for ex in exs])
  mean_h = (all_boxes[:, 3] - all_boxes[:, 1] + 1).mean()
  mean_w = (all_boxes[:, 2] - all_boxes[:, 0] + 1).mean()
  centre = boxes_lib.center_box((64, 64), (mean_h, mean_w))
  hits = np.mean([boxes_lib.max_iou(centre, ex['boxes']) >= 0.5 for ex in exs])
  assert hits <= 0.25, hits


def test_prepared_split_reads_back_with_every_feature(tiny_data_dir):
  builder = data.get_builder('cam_synth', 'tiny', tiny_data_dir)
  assert builder.info.splits['train'].num_examples == 256
  assert builder.info.splits['test'].num_examples == 64
  info = data.builder_info('cam_synth', builder.info)
  assert info.class_names == synthetic.CLASS_NAMES[:4] and info.num_classes == 4
  assert info.has_masks
  source = builder.as_data_source('test')
  ex = source[5]
  expected = synthetic.render_example(np.random.default_rng([0, 1, 5]), 32, 4)
  np.testing.assert_array_equal(ex['image'], expected['image'])  # PNG is lossless
  np.testing.assert_array_equal(ex['boxes'], expected['boxes'])
  assert ex['label'] == expected['label']
  np.testing.assert_array_equal(ex['segmentation_mask'][..., 0] > 127, expected['mask'] == 1)


def test_unknown_builder_config_is_named():
  with pytest.raises(ValueError, match="cam_synth"):
    data.get_builder('cam_synth', 'huge')


def test_objects_are_named_exact_disjoint_and_make_up_the_mask():
  names = set(synthetic.object_names(10))
  for ex in _examples(150) + _examples(150, size=32, num_classes=4):
    objects = ex['objects']
    classes = [m for name, m in objects if not name.startswith('distractor:')]
    distractors = [name for name, _ in objects if name.startswith('distractor:')]
    # The labelled instances come first, named by the class, one per box; then 0-2
    # distractors (0 only when none could be placed).
    assert [name for name, _ in objects[:len(classes)]] == (
        [synthetic.CLASS_NAMES[ex['label']]] * len(ex['boxes']))
    assert len(distractors) <= 2 and {name for name, _ in objects} <= names
    count_HW = np.zeros(ex['mask'].shape, int)
    for name, mask_HW in objects:
      assert mask_HW.dtype == bool and mask_HW.any(), name
      # Exact pixels: the image holds the object's single colour on all of them.
      assert len(np.unique(ex['image'][mask_HW], axis=0)) == 1, name
      count_HW += mask_HW
    assert count_HW.max() == 1  # objects are placed apart: disjoint masks
    np.testing.assert_array_equal(np.any(classes, axis=0), ex['mask'] == 1)


def test_both_distractor_kinds_are_drawn():
  counts = collections.Counter(name for ex in _examples(100) for name, _ in ex['objects']
                               if name.startswith('distractor:'))
  assert set(counts) == {'distractor:zigzag', 'distractor:cross'}


def test_drawing_is_unchanged_since_1_2_0():
  """The prepared cam_synth 1.2.0 holds these pixels: a change here changes the dataset
  (bump the builder's VERSION) and every stored example's objects."""
  digest = hashlib.sha256()
  for ex in _examples(5, split=1):
    digest.update(ex['image'].tobytes())
    digest.update(ex['mask'].tobytes())
  assert digest.hexdigest() == _DIGEST_1_2_0


def test_regenerated_examples_are_the_stored_ones(tiny_data_dir):
  builder = data.get_builder('cam_synth', 'tiny', tiny_data_dir)
  for split, indices in (('train', (0, 255)), ('test', (0, 17, 63)), ('validation', (9,))):
    source = builder.as_data_source(split)
    for index in indices:
      ex = synthetic.regenerate_example('tiny', split, index)
      np.testing.assert_array_equal(source[index]['image'], ex['image'])
      assert source[index]['label'] == ex['label']
      objects = synthetic.example_objects(builder.builder_config, split, index)
      assert [n for n, _ in objects] == [n for n, _ in ex['objects']]
      for (_, a), (_, b) in zip(objects, ex['objects']):
        np.testing.assert_array_equal(a, b)


def test_regenerating_outside_the_dataset_is_an_error():
  with pytest.raises(ValueError, match="no split 'val'"):
    synthetic.example_objects('tiny', 'val', 0)
  with pytest.raises(IndexError, match='64 examples, no index 64'):
    synthetic.example_objects('tiny', 'test', 64)
  with pytest.raises(ValueError, match="no builder config 'huge'"):
    synthetic.example_objects('huge', 'test', 0)

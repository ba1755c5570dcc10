"""cam_jax.patterns: Fig. 9's counts on hand-drawn images, the boundaries of the
threshold and of the overlap rule, and a run on the tiny synthetic set."""

import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from cam_jax import checkpoints
from cam_jax import patterns
from cam_jax import sharding
from cam_jax import train
from tests import square_detector

SQUARE, ZIGZAG, CROSS = 'square', 'distractor:zigzag', 'distractor:cross'


def _mask(*pixels, hw=(4, 4)):
  mask = np.zeros(hw, bool)
  for y, x in pixels:
    mask[y, x] = True
  return mask


def _cam(*pixels, hw=(4, 4), low=0.0):
  """1.0 at `pixels` (the high-CAM region at any threshold in (0, 1]), `low` elsewhere."""
  cam = np.full(hw, low, np.float32)
  for y, x in pixels:
    cam[y, x] = 1.0
  return cam


TOP_LEFT = ((0, 0), (0, 1), (1, 0), (1, 1))


def _hand_made():
  """Four 4×4 images; the square is the top-left 2×2 block (4 pixels) wherever it is.

  A (predicted 0): the CAM covers the square; a zigzag at the bottom right is outside.
  B (predicted 0): the CAM covers 1 of the square's 4 pixels (< half: no) and the first
    of two crosses (one cross overlapping is enough).
  C (predicted 1): a circle, and a CAM whose maximum is negative: no region at all.
  D (predicted 0): the CAM covers 2 of the square's 4 pixels: exactly half, it overlaps.
  """
  square = _mask(*TOP_LEFT)
  predicted = [0, 0, 1, 0]
  cams = [_cam(*TOP_LEFT),
          _cam((0, 0), (3, 0)),
          np.full((4, 4), -1.0, np.float32),
          _cam((0, 0), (1, 1))]
  objects = [
      [(SQUARE, square), (ZIGZAG, _mask((3, 3), (3, 2)))],
      [(SQUARE, square), (CROSS, _mask((3, 0))), (CROSS, _mask((3, 3)))],
      [('circle', _mask((2, 2), (2, 3), (3, 2)))],
      [(SQUARE, square)],
  ]
  return predicted, cams, objects


def test_counts_and_ranks_of_a_hand_made_case():
  predicted, cams, objects = _hand_made()
  rows = patterns.informative_objects(predicted, cams, objects, num_classes=3,
                                      class_names=['square', 'circle', 'empty'])
  square, circle, empty = rows
  assert square['num_images'] == 3 and circle['num_images'] == 1
  # Class 0, 3 images (A, B, D): the square is in all 3 and overlaps in A and D; the
  # zigzag is in A alone and never overlaps; the crosses are in B alone (counted once)
  # and overlap there.
  assert square['objects'] == {
      SQUARE: {'images': 3, 'overlap_images': 2, 'frequency': 1.0, 'informative': 2 / 3,
               'overlap_rate': 2 / 3},
      ZIGZAG: {'images': 1, 'overlap_images': 0, 'frequency': 1 / 3, 'informative': 0.0,
               'overlap_rate': 0.0},
      CROSS: {'images': 1, 'overlap_images': 1, 'frequency': 1 / 3, 'informative': 1.0,
              'overlap_rate': 1 / 3},
  }
  # Frequent: the square, then the two distractors tied at 1/3 (1 image each), by name.
  assert square['frequent'] == [(SQUARE, 1.0), (CROSS, 1 / 3), (ZIGZAG, 1 / 3)]
  assert square['informative'] == [(CROSS, 1.0), (SQUARE, 2 / 3), (ZIGZAG, 0.0)]
  # Class 1: the circle is always there and never overlaps (no region).
  assert circle['frequent'] == [('circle', 1.0)]
  assert circle['informative'] == [('circle', 0.0)]
  assert empty == {'class': 2, 'name': 'empty', 'num_images': 0, 'objects': {},
                   'frequent': [], 'informative': []}
  top1 = patterns.informative_objects(predicted, cams, objects, num_classes=3, top=1)
  assert top1[0]['name'] == 'class 0'
  assert top1[0]['frequent'] == [(SQUARE, 1.0)] and top1[0]['informative'] == [(CROSS, 1.0)]


def test_counts_add_up_over_batches():
  predicted, cams, objects = _hand_made()
  names = ('circle', CROSS, SQUARE, ZIGZAG)
  whole = patterns.count_objects(predicted, cams, objects, num_classes=3, names=names)
  parts = (patterns.count_objects(predicted[:2], cams[:2], objects[:2], num_classes=3,
                                  names=names)
           + patterns.count_objects(predicted[2:], cams[2:], objects[2:], num_classes=3,
                                    names=names))
  for key in ('images_C', 'present_CV', 'overlap_CV'):
    np.testing.assert_array_equal(getattr(parts, key), getattr(whole, key))
  np.testing.assert_array_equal(whole.overlap_CV, [[0, 1, 2, 0], [0, 0, 0, 0], [0] * 4])


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_the_region_is_threshold_times_max_inclusive(dtype):
  # Max 10: the region is >= 2.0 (0.2 × 10 is exactly 2 in both dtypes).
  cam = np.array([[10.0, 2.0, np.nextafter(dtype(2.0), dtype(0.0)), 0.0]], dtype)
  objects = [(n, _mask((0, x), hw=(1, 4))) for n, x in (('max', 0), ('at', 1),
                                                          ('below', 2), ('zero', 3))]
  assert patterns.overlapping(cam, objects, threshold=0.2) == [True, True, False, False]
  assert patterns.overlapping(cam, objects, threshold=0.0) == [True, True, True, True]
  assert patterns.overlapping(cam, objects, threshold=1.0) == [True, False, False, False]


def test_an_object_overlaps_with_half_its_pixels_inside():
  cam = _cam((0, 0), (0, 1), (0, 2))
  objects = [('3 of 6', _mask((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2))),
             ('3 of 7', _mask((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3))),
             ('1 of 1', _mask((0, 1)))]
  assert patterns.overlapping(cam, objects) == [True, False, True]
  assert patterns.overlapping(cam, objects, min_overlap=1.0) == [False, False, True]
  assert patterns.overlapping(cam, objects, min_overlap=0.4) == [True, True, True]
  with pytest.raises(ValueError, match='min_overlap'):
    patterns.overlapping(cam, objects, min_overlap=0.0)


def test_inconsistent_inputs_are_named():
  predicted, cams, objects = _hand_made()
  with pytest.raises(ValueError, match='4 predictions, 3 CAMs'):
    patterns.count_objects(predicted, cams[:3], objects, num_classes=2)
  with pytest.raises(ValueError, match=r'predicted classes must be in \[0, 1\)'):
    patterns.count_objects(predicted, cams, objects, num_classes=1)
  with pytest.raises(ValueError, match=r"\['circle'\] are not among"):
    patterns.count_objects(predicted, cams, objects, num_classes=2, names=(SQUARE, CROSS,
                                                                           ZIGZAG))
  with pytest.raises(ValueError, match='at the image resolution'):
    patterns.overlapping(np.zeros((2, 2)), objects[0])
  with pytest.raises(ValueError, match='empty mask'):
    patterns.overlapping(cams[0], [('ghost', np.zeros((4, 4), bool))])


def test_markdown_has_fig_9s_two_lists():
  predicted, cams, objects = _hand_made()
  result = {'dataset': 'hand', 'split': 'test', 'checkpoint': 'ckpt', 'num_images': 4,
            'threshold': 0.2, 'min_overlap': 0.5,
            'classes': patterns.informative_objects(predicted, cams, objects, num_classes=3,
                                                    class_names=['sq', 'ci', 'em'])}
  text = patterns.format_markdown(result)
  assert '## sq (3 images predicted)' in text
  assert '| Frequent object | Informative object |' in text
  assert f'| {SQUARE}:1.00 | {CROSS}:1.00 |' in text
  assert f'| {ZIGZAG}:0.33 | {ZIGZAG}:0.00 |' in text
  assert '## em (0 images predicted)\n\nNo image is predicted as this class.' in text


# ---------------------------------------------------------------------------
# A run on the tiny synthetic set
# ---------------------------------------------------------------------------

def _config(data_dir):
  config = square_detector.config()
  config.data.data_dir = data_dir
  config.data.prepare = False
  return config


@pytest.fixture(scope='module')
def two_class_workdir(tmp_path_factory):
  """The square detector (tests/square_detector.py), its class 1 biased up so that it
  wins on darker images: logit 0 = m, logit 1 = 0.5 m + 0.15 (m: the mean brightness
  channel), so class 0 needs m > 0.3; the tiny test split's m spans 0.09 to 0.70, median
  0.29, none within 0.002 of 0.3. Both classes' CAMs are the bright pixels."""
  config = square_detector.config()
  graphdef, _ = train.abstract_train_state(config, len(square_detector.CLASS_NAMES),
                                           sharding.make_mesh())
  model, optimizer = nnx.merge(graphdef, square_detector.square_detector(config))
  model.head.bias[1] = 0.15
  path = str(tmp_path_factory.mktemp('two_classes'))
  with checkpoints.checkpoint_manager(path, config) as manager:
    checkpoints.save_checkpoint(
        manager, square_detector.STEP, nnx.state((model, optimizer)),
        checkpoints.checkpoint_meta(config, 4, square_detector.STEP))
    manager.wait_until_finished()
  return path


def test_write_informative_objects_on_the_tiny_synthetic_set(two_class_workdir,
                                                              tiny_data_dir):
  result = patterns.write_informative_objects(_config(tiny_data_dir), two_class_workdir)
  out = os.path.join(two_class_workdir, 'patterns')
  # Atomic writes: the three files and no temporary one left behind.
  assert sorted(os.listdir(out)) == ['informative_objects.json', 'informative_objects.md',
                                     'informative_objects.png']
  with open(os.path.join(out, 'informative_objects.json'), encoding='utf-8') as f:
    assert json.load(f) == json.loads(json.dumps(result))
  assert result['dataset'] == 'cam_synth/tiny' and result['split'] == 'test'
  assert result['num_images'] == 64 and result['threshold'] == 0.2
  rows = result['classes']
  assert [r['name'] for r in rows] == ['circle', 'square', 'triangle', 'plus']
  assert sum(r['num_images'] for r in rows) == 64
  assert rows[0]['num_images'] > 10 and rows[1]['num_images'] > 10  # two classes win
  for row in rows[:2]:
    objects = row['objects']
    # Every image holds one class shape; the 10 % with two instances count once.
    shapes = [o['images'] for name, o in objects.items() if ':' not in name]
    assert sum(shapes) == row['num_images']
    assert 0 < objects['distractor:zigzag']['images'] < row['num_images']
    for o in objects.values():
      assert o['frequency'] == o['images'] / row['num_images']
      assert o['informative'] == o['overlap_images'] / o['images'] <= 1
    assert [name for name, _ in row['frequent']] == sorted(
        objects, key=lambda n: (-objects[n]['frequency'], -objects[n]['images'], n))
  with open(os.path.join(out, 'informative_objects.md'), encoding='utf-8') as f:
    text = f.read()
  assert '## circle' in text and '## plus (0 images predicted)' in text
  with Image.open(os.path.join(out, 'informative_objects.png')) as im:
    # figures.num_classes = 2 rows of (text + figures.per_class = 2 tiles), 160 px tiles.
    assert im.mode == 'RGB' and im.size[0] == 3 * 160 + 2 * 2 and im.size[1] > 2 * 160


def test_a_dataset_other_than_cam_synth_is_refused(tmp_path):
  config = _config(str(tmp_path))
  config.data.name = 'cub2011_loc'
  with pytest.raises(ValueError, match=r"config.data.name='cub2011_loc'.*expected 'cam_synth'"):
    patterns.write_informative_objects(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_a_checkpoint_is_required(tiny_data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    patterns.write_informative_objects(_config(tiny_data_dir), str(tmp_path))

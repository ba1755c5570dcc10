"""cam_jax.figures: the per-class selection by hand, and the figures of a tiny run."""

import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from cam_jax import figures, models, sharding
from configs import synthetic_gap
from tests import model_params


def test_top_per_class_keeps_the_best_of_the_largest_classes():
  best = figures.TopPerClass(per_class=2)
  # (label, prob, index): class 1 has 4 images, classes 0 and 2 have 2, class 3 has 1.
  for label, prob, index in [(1, 0.5, 0), (0, 0.9, 1), (1, 0.7, 2), (2, 0.1, 3),
                             (1, 0.2, 4), (2, 0.3, 5), (1, 0.7, 6), (0, 0.4, 7),
                             (3, 1.0, 8)]:
    best.add(label, prob, index, payload=f'map{index}')
  assert best.counts == {1: 4, 0: 2, 2: 2, 3: 1}
  # Class 1: 0.7 (index 2), 0.7 (index 6: a tie, the earlier index first); 0.5 and 0.2
  # dropped. Classes 0 and 2 tie on 2 images: class 0 first. Class 3 is left out.
  assert best.select(3) == [
      (1, [(0.7, 2, 'map2'), (0.7, 6, 'map6')]),
      (0, [(0.9, 1, 'map1'), (0.4, 7, 'map7')]),
      (2, [(0.3, 5, 'map5'), (0.1, 3, 'map3')]),
  ]
  assert [c for c, _ in best.select(10)] == [1, 0, 2, 3]
  assert best.select(10)[-1][1] == [(1.0, 8, 'map8')]  # fewer than per_class: all of them


def test_top_per_class_tie_keeps_the_earlier_image():
  best = figures.TopPerClass(per_class=1)
  for index in (5, 3, 9):  # arrival order is not index order
    best.add(0, 0.5, index)
  assert best.select(1) == [(0, [(0.5, 3, None)])]
  with pytest.raises(ValueError, match='per_class'):
    figures.TopPerClass(per_class=0)


def _png_shape(path):
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.mode == 'RGB'
    return np.asarray(im).shape


def _tiny_model(num_classes=4):
  # NumPy-drawn parameters: NNX's initialisers would compile one program per shape.
  return model_params.random_model(lambda: models.get_model(
      'tiny_gap', num_classes=num_classes, rngs=nnx.Rngs(0)))


def _tiny_config(data_dir):
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = data_dir
  config.data.prepare = False
  return config


def test_figures_of_a_tiny_run(tiny_data_dir, tmp_path):
  config = _tiny_config(tiny_data_dir)
  model = _tiny_model()
  paths = figures.write_evaluation_figures(config, model, sharding.make_mesh(), str(tmp_path))
  folder = os.path.join(str(tmp_path), 'figures')
  assert sorted(paths) == [os.path.join(folder, n) for n in
                           ('boxes.png', 'cam_vs_backprop.png', 'class_cams.png')]
  # 32×32 images are upscaled ×5 to 160 px tiles, below a 14 px title; 2 px between cells.
  tile_h, tile_w = 14 + 160, 160
  # Fig. 3: 2 classes (rows, 6 px apart) of 2 images.
  assert _png_shape(os.path.join(folder, 'class_cams.png')) == (2 * tile_h + 6,
                                                                2 * tile_w + 2, 3)
  # Fig. 5: 4 images, rows of image | CAM | backprop.
  assert _png_shape(os.path.join(folder, 'cam_vs_backprop.png')) == (4 * tile_h + 3 * 2,
                                                                     3 * tile_w + 2 * 2, 3)
  # Fig. 6a: 4 images in one row.
  assert _png_shape(os.path.join(folder, 'boxes.png')) == (tile_h, 4 * tile_w + 3 * 2, 3)
  for path in paths:
    assert os.path.getsize(path) < 300_000
  boxes_HW3 = np.asarray(Image.open(os.path.join(folder, 'boxes.png')))
  assert np.all(boxes_HW3 == (0, 255, 0), axis=-1).any()  # ground truth drawn
  assert np.all(boxes_HW3 == (255, 0, 0), axis=-1).any()  # prediction drawn


def test_centre_crop_figures_and_disabled(tiny_data_dir, tmp_path):
  config = _tiny_config(tiny_data_dir)
  config.data.eval_crop = 'resize_crop'
  config.data.eval_resize_shorter = 40  # the central 32×32 of a 40×40 resize
  config.figures.num_examples = 16
  model = _tiny_model()
  paths = figures.write_evaluation_figures(config, model, sharding.make_mesh(), str(tmp_path))
  assert len(paths) == 3
  config.figures.enabled = False
  assert figures.write_evaluation_figures(config, model, sharding.make_mesh(),
                                          str(tmp_path / 'off')) == []


class _FCClassifier(nnx.Module):
  """A fully connected classifier: no CAM."""

  def __init__(self, num_classes, *, rngs):
    self.classifier = nnx.Linear(32 * 32 * 3, num_classes, rngs=rngs)

  def __call__(self, x, train=False):
    return self.classifier(x.reshape(x.shape[0], -1)), {'features': x}


def test_no_cam_head_writes_nothing(tiny_data_dir, tmp_path):
  paths = figures.write_evaluation_figures(_tiny_config(tiny_data_dir),
                                           _FCClassifier(4, rngs=nnx.Rngs(0)),
                                           sharding.make_mesh(), str(tmp_path))
  assert paths == [] and not os.path.exists(tmp_path / 'figures')


def test_split_without_boxes_shows_only_predictions(tmp_path):
  from tests.data import fake_wsol  # pylint: disable=g-import-not-at-top
  expected = fake_wsol.write_fake_wsol(str(tmp_path / 'wsol'), 'OpenImages')
  config = synthetic_gap.get_config('tiny')
  config.data = fake_wsol.data_config(expected)
  config.data.image_size = 32
  config.data.eval_split = 'test'
  model = _tiny_model(expected['num_classes'])
  paths = figures.write_evaluation_figures(config, model, sharding.make_mesh(),
                                           str(tmp_path / 'run'))
  boxes_path = os.path.join(str(tmp_path / 'run'), 'figures', 'boxes.png')
  assert boxes_path in paths
  boxes_HW3 = np.asarray(Image.open(boxes_path))
  assert not np.all(boxes_HW3 == (0, 255, 0), axis=-1).any()  # no ground truth
  assert np.all(boxes_HW3 == (255, 0, 0), axis=-1).any()  # the predictions still

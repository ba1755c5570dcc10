"""The paper's localization protocol on hand-made CAMs, and the report formatting."""

import numpy as np
from flax import nnx

from cam_jax import evaluate, models, sharding
from configs import synthetic_gap


def _blob(hw, box):
  """A CAM that is 1 on the inclusive box (x0, y0, x1, y1) and 0 elsewhere."""
  cam = np.zeros(hw)
  x0, y0, x1, y1 = box
  cam[y0:y1 + 1, x0:x1 + 1] = 1.0
  return cam


def _score(classes_k, label, cams, gt, orig_hw=(8, 8)):
  return evaluate.score_localization(np.asarray(classes_k), label, np.stack(cams),
                                     np.asarray(gt), orig_hw, cam_threshold=0.2,
                                     iou_threshold=0.5)


def test_top1_class_right_and_box_right():
  gt = [[1, 1, 4, 4]]
  good = _blob((8, 8), (1, 1, 4, 4))
  top1, topk, gt_known, iou, boxes = _score([2, 0], 2, [good, good, good], gt)
  assert (top1, topk, gt_known) == (True, True, True) and iou == 1.0
  np.testing.assert_array_equal(boxes[0], [1, 1, 4, 4])


def test_right_class_second_counts_only_at_top_k():
  gt = [[1, 1, 4, 4]]
  wrong = _blob((8, 8), (5, 5, 7, 7))   # top-1 class (wrong) looks elsewhere
  right = _blob((8, 8), (1, 1, 4, 4))   # the label, ranked second, localizes
  top1, topk, gt_known, _, _ = _score([3, 2], 2, [wrong, right, right], gt)
  assert (top1, topk, gt_known) == (False, True, True)


def test_right_class_with_a_bad_box_is_wrong_everywhere():
  gt = [[0, 0, 3, 3]]
  # Box (2, 2, 5, 5) against (0, 0, 3, 3): intersection 2*2 = 4, union 16 + 16 - 4 = 28,
  # IoU 1/7 < 0.5.
  off = _blob((8, 8), (2, 2, 5, 5))
  top1, topk, gt_known, iou, _ = _score([1], 1, [off, off], gt)
  assert (top1, topk, gt_known) == (False, False, False)
  np.testing.assert_allclose(iou, 4 / 28)


def test_any_ground_truth_box_counts():
  gt = [[0, 0, 1, 1], [4, 4, 7, 7]]
  cam = _blob((8, 8), (4, 4, 7, 7))
  assert _score([0], 0, [cam, cam], gt)[:3] == (True, True, True)


def test_boxes_are_scored_in_the_original_grid():
  # The network saw 8x8; the original image is 16 (high) x 32 (wide). The CAM box
  # (2, 2, 5, 5) covers pixels 2..5 of 8, i.e. x 8..23 of 32 and y 4..11 of 16.
  cam = _blob((8, 8), (2, 2, 5, 5))
  _, _, gt_known, iou, boxes = _score([0], 0, [cam, cam], [[8, 4, 23, 11]], orig_hw=(16, 32))
  np.testing.assert_array_equal(boxes[0], [8, 4, 23, 11])
  assert gt_known and iou == 1.0


def test_table_lists_metrics_in_percent():
  table = evaluate.format_table({'num_images': 10, 'cls_top1_error': 0.1,
                                 'gt_known_loc_accuracy': 0.875})
  assert '| metric (10 images) | % |' in table
  assert '| classification top-1 error | 10.00 |' in table
  assert '| GT-known localization accuracy | 87.50 |' in table


class _MLPClassifier(nnx.Module):
  """A network with a fully connected classifier and no `head`: CAM does not apply."""

  def __init__(self, num_classes, *, rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.classifier = nnx.Linear(4 * 32 * 32, num_classes, rngs=rngs)

  def __call__(self, x, train=False):
    feats = nnx.relu(self.conv(x))
    return self.classifier(feats.reshape(feats.shape[0], -1)), {'features': feats}


def test_fc_classifier_is_evaluated_for_classification_only(tiny_data_dir):
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.data.prepare = False
  results = evaluate.evaluate(config, _MLPClassifier(4, rngs=nnx.Rngs(0)),
                              sharding.make_mesh(), localization=True, num_pictures=2)
  assert results['num_images'] == 64
  assert 0 <= results['cls_top1_error'] <= 1
  assert 'gt_known_loc_accuracy' not in results and 'loc_top1_error' not in results


def test_split_without_boxes_is_scored_for_classification_only(tmp_path):
  """OpenImages in the WSOL layout has masks, not boxes: no box metric, no division by 0."""
  from tests.data import fake_wsol  # pylint: disable=g-import-not-at-top
  expected = fake_wsol.write_fake_wsol(str(tmp_path), 'OpenImages')
  config = synthetic_gap.get_config('tiny')
  config.data = fake_wsol.data_config(expected)
  config.data.image_size = 32
  config.data.eval_split = 'test'
  model = models.get_model('tiny_gap', num_classes=expected['num_classes'], rngs=nnx.Rngs(0))
  results = evaluate.evaluate(config, model, sharding.make_mesh(), localization=True,
                              num_pictures=2)
  assert results['num_images'] == len(expected['splits']['test']['image_ids'])
  assert 0 <= results['cls_top1_error'] <= 1
  assert 'gt_known_loc_accuracy' not in results and 'pictures' not in results

"""The paper's localization protocol on hand-made CAMs, and the report formatting."""

import numpy as np
import pytest
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
    return self.logits_from_features(feats), {'features': feats}

  def logits_from_features(self, feats, train=False):
    return self.classifier(feats.reshape(feats.shape[0], -1))


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


def test_wsol_scores_by_hand():
  """Two 8×8 maps on an 8×8 image (whole-image window, so boxes keep their pixels).

  Image A: a hot 3×3 block at columns 1..3, rows 2..4 (value 1), a warm pixel at (6, 6)
  (value 0.5), zeros elsewhere; ground truth box (1, 2, 3, 4). Normalised map = itself.
  At τ <= 0.5 the largest component is still the block (9 pixels against 1): IoU 1 at
  every τ in (0, 1]; at τ = 0 the mask is the whole image: box (0, 0, 7, 7), IoU 9/64.
  On the grid 0, 0.25, 0.5, 0.75: MaxBoxAcc = 1 (best τ 0.25, the lowest that hits).
  Image B: the same map, ground truth (5, 5, 7, 7) around the warm pixel only: the largest
  component never covers it, IoU <= 1/9 at τ in (0, 0.5]; but V2 scores every component:
  at τ = 0.25 and 0.5 the warm pixel's own box (6, 6, 6, 6) has IoU 1/9 with the 3×3
  truth, < 0.3. So V1: 1 hit of 2 -> 0.5; V2 per δ: 0.3: 1/2, 0.5: 1/2, 0.7: 1/2 -> 0.5.
  PxAP of image A's map with mask = the block: every threshold in (0, 1] keeps the
  block (precision 1 until the warm pixel joins at τ <= 0.5, when recall is already 1),
  so AP = 1.
  """
  map_hw = np.zeros((8, 8), np.float32)
  map_hw[2:5, 1:4] = 1.0
  map_hw[6, 6] = 0.5
  scores = evaluate.WsolScores(0.25, 0.001, with_masks=True)
  window = np.array([0, 0, 8, 8], np.float32)
  mask = map_hw == 1.0
  scores.add(map_hw, np.array([[1, 2, 3, 4]]), window, (8, 8), mask, np.zeros_like(mask))
  scores.add(map_hw, np.array([[5, 5, 7, 7]]), window, (8, 8))
  got = scores.result(scores.state())
  assert got['max_box_acc'] == 0.5 and got['max_box_acc_threshold'] == 0.25
  assert got['max_box_acc_v2'] == 0.5
  assert got['pxap'] == 1.0


def test_fc_classifier_is_localized_with_backprop_or_gradcam(tiny_data_dir):
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.data.prepare = False
  for method in ('backprop', 'gradcam'):
    config.eval.saliency = method
    results = evaluate.evaluate(config, _MLPClassifier(4, rngs=nnx.Rngs(0)),
                                sharding.make_mesh(), localization=True, num_examples=16)
    assert results['saliency'] == method
    for key in ('gt_known_loc_accuracy', 'max_box_acc', 'max_box_acc_v2', 'pxap'):
      assert 0 <= results[key] <= 1, (method, key)


def test_table_puts_the_paper_number_beside_ours():
  results = {'num_images': 10, 'cls_top1_error': 0.3, 'loc_top1_error': 0.6,
             'max_box_acc': 0.5}
  table = evaluate.format_table(results, 'GoogLeNet-GAP').splitlines()
  assert table[0] == '| metric (10 images) | % | paper (GoogLeNet-GAP) |'
  assert '| classification top-1 error | 30.00 | 35.00 |' in table
  assert '| localization top-1 error | 60.00 | 56.40 |' in table
  assert '| MaxBoxAcc (IoU 0.5) | 50.00 | |' in table  # not in the paper
  with pytest.raises(ValueError, match='known rows: GoogLeNet-GAP'):
    evaluate.format_table(results, 'ResNet')


def test_heuristic_hit_by_hand():
  """A 10×10 CAM per class. Class 7's CAM: value 1 on columns 2..3 (rows 2..3), value 0.3 on
  the ring around them out to columns 1..6, rows 1..6. Tight (0.5 × max) keeps the 2×2
  core: box (2, 2, 3, 3); loose (0.2 × max) keeps the ring too: box (1, 1, 6, 6).
  Ground truth (1, 1, 6, 6): only the loose box hits (IoU 1; the tight one has 4/36)."""
  cam = np.zeros((10, 10), np.float32)
  cam[1:7, 1:7] = 0.3
  cam[2:4, 2:4] = 1.0
  cams = np.stack([np.zeros((10, 10), np.float32), cam, cam])  # ranks 0, 1, 2
  gt = np.array([[1, 1, 6, 6]])
  window = np.array([0, 0, 10, 10], np.float32)
  hit = lambda classes, tight, loose: evaluate.heuristic_hit(
      np.array(classes), 7, cams, gt, (10, 10), window, tight=tight, loose=loose,
      iou_threshold=0.5)
  assert hit([3, 7, 4], 0.5, 0.2)  # the label is 2nd: its loose box hits
  assert not hit([3, 7, 4], 0.5, 0.5)  # both "loose" and tight keep only the core
  assert hit([3, 4, 7], 0.5, 0.2)  # 3rd: one loose box, which hits
  assert not hit([3, 4, 5], 0.5, 0.2)  # the label is not among the top 3

"""evaluate(): classification-only and saliency paths end to end, and the report formatting."""

import json
import multiprocessing
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cam_jax import evaluate, evaluators, models, sharding
from cam_jax.data import pipeline
from cam_jax.data.base import SourceInfo
from configs import synthetic_gap


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


class _ChannelGAP(nnx.Module):
  """A GAP network whose features are the raw RGB pixels and whose head is the identity:
  logit c = mean of channel c, CAM of class c = channel c. Every metric is then worked
  out by hand from the images."""

  def __init__(self):
    self.head = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
    self.head.kernel[...] = jnp.eye(3)
    self.head.bias[...] = jnp.zeros(3)

  def __call__(self, x, train=False):
    # Back to raw 0..255 pixels: the hand-worked values read straight off the images.
    feats = x * np.float32(pipeline.DEFAULT_INPUT.std)[None, None, None] + np.float32(pipeline.DEFAULT_INPUT.mean)[None, None, None]
    return self.head(feats.mean((1, 2))), {'features': feats}


def _hand_image(channel_values):
  image = np.zeros((8, 8, 3), np.uint8)
  for channel, value, (x0, y0, x1, y1) in channel_values:
    image[y0:y1 + 1, x0:x1 + 1, channel] = value
  return image


def _hand_examples():
  """Images A, B, C (one box each) and D (no box), worked out in the next test."""
  return [
      {'image': _hand_image([(0, 200, (1, 1, 4, 4)), (1, 10, (0, 0, 7, 7))]), 'label': 0,
       'boxes': np.array([[1, 1, 4, 4]]), 'file_name': 'a.png'},
      {'image': _hand_image([(1, 100, (4, 4, 7, 7)), (0, 40, (0, 0, 7, 7))]), 'label': 1,
       'boxes': np.array([[4, 4, 7, 7]]), 'file_name': 'b.png'},
      {'image': _hand_image([(2, 255, (0, 0, 1, 1))]), 'label': 2,
       'boxes': np.array([[0, 0, 5, 5]]), 'file_name': 'c.png'},
      {'image': _hand_image([(0, 200, (2, 2, 5, 5))]), 'label': 0,
       'boxes': np.zeros((0, 4), np.int32), 'file_name': 'd.png'},
  ]


def _hand_config(monkeypatch):
  """The tiny config on the hand images (8×8, top 2), their source patched in."""
  examples = _hand_examples()
  info = SourceInfo(name='hand', num_classes=3, class_names=('r', 'g', 'b'), has_masks=False)
  monkeypatch.setattr(evaluate.data_lib, 'load_source', lambda data, split: (examples, info))
  config = synthetic_gap.get_config('tiny')
  config.data.image_size = 8
  config.eval.top_k = 2
  config.eval.batch_size = 8
  return config


def _evaluate_hand(monkeypatch, num_pictures=0, predictions_file=None, **eval_fields):
  config = _hand_config(monkeypatch)
  config.eval.update(eval_fields)
  return evaluate.evaluate(config, _ChannelGAP(), sharding.make_mesh(),
                           num_pictures=num_pictures, predictions_file=predictions_file)


def test_every_metric_by_hand(monkeypatch):
  """Three 8×8 images seen at 8×8 (boxes and maps keep their pixels), classes 0, 1, 2 =
  channels R, G, B; top_k = 2.

  Image A, label 0: R = 200 on (1, 1, 4, 4) (16 px: mean 50), G = 10 everywhere (mean 10).
    Top classes [0, 1]: right. R's CAM is 200 on the block: paper box (1, 1, 4, 4) = the
    truth, IoU 1.
  Image B, label 1: G = 100 on (4, 4, 7, 7) (mean 25), R = 40 everywhere (mean 40).
    Top classes [0, 1]: wrong at top 1, right at top 2; G's box (4, 4, 7, 7) = the truth.
  Image C, label 2: B = 255 on (0, 0, 1, 1) (mean 15.9), R = G = 0: top 1 right; its box
    (0, 0, 1, 1) against the truth (0, 0, 5, 5): IoU 4/36: wrong.
  Image D, label 0, no ground-truth box (as most ILSVRC training images): R = 200 on
    (2, 2, 5, 5): top 1 right. It counts for classification only; every localization
    rate divides by the 3 images that have boxes.
  Classification: top-1 error 1/4 (B), top-2 error 0.
  Paper localization: top-1 A only -> error 2/3; top-2 A, B -> error 1/3; GT-known A, B
    -> 2/3; mean IoU (1 + 1 + 1/9) / 3 = 19/27. Heuristic: the tight (0.5 of max) and
    loose boxes of a block map are the block: A (rank 0) and B (rank 1) hit -> error 1/3.
  Centre baseline: mean relative size (4/8 + 4/8 + 6/8) / 3 = 7/12 of 8 = 4.67 -> 5 px
    square, centred at x0 = (8 - 5) // 2 = 1: (1, 1, 5, 5). A: 16/25 hit; B: overlap
    (4..5)² = 4, union 25 + 16 - 4 = 37: miss; C: 25/36 hit -> 2/3.
  MaxBoxAcc (0.01 grid): τ = 0 keeps every pixel, box (0, 0, 7, 7): IoU A 16/64, B 16/64,
    C 36/64 = 0.5625 (hit) -> 1/3; every τ in (0, 1) keeps the block: A, B hit, C 4/36
    misses -> 2/3 at τ = 0.01. V2: δ 0.3 and 0.5: 2/3 (τ > 0); δ 0.7: 2/3 -> 2/3.
  """
  got = _evaluate_hand(monkeypatch, num_pictures=1)
  expected = {
      'num_images': 4, 'num_images_with_boxes': 3, 'num_images_without_boxes': 1,
      'cls_top1_error': 1 / 4, 'cls_top5_error': 0.0,
      'loc_top1_error': 2 / 3, 'loc_top5_error': 1 / 3, 'loc_top5_error_heuristic': 1 / 3,
      'gt_known_loc_accuracy': 2 / 3, 'gt_known_mean_iou': 19 / 27,
      'center_baseline_loc_accuracy': 2 / 3, 'max_box_acc': 2 / 3,
      'max_box_acc_threshold': 0.01, 'max_box_acc_v2': 2 / 3,
  }
  for key, value in expected.items():
    # The mean IoU is summed in fixed point (2**-32 units, exact in any order).
    tolerance = 1e-9 if key == 'gt_known_mean_iou' else 1e-12
    assert got[key] == pytest.approx(value, abs=tolerance), key
  assert got['split'] == 'test'  # the reported split is named
  assert 'pxap' not in got  # no masks
  assert len(got['pictures']) == 1


def test_per_class_accuracy_and_predictions_by_hand(monkeypatch, tmp_path):
  """The hand images of the test above, per class and image by image.

  Classes 0 (A, D), 1 (B), 2 (C). Top-1 classification: A, D, C right -> [1, 0, 1].
  Images with boxes: A, B, C -> [1, 1, 1]; top-1 localization: A only -> [1, 0, 0];
  GT-known: A, B -> [1, 1, 0].
  Records: A's top 2 are R (its box the block (1, 1, 4, 4)) and G (10 everywhere: the
  whole image); B's are R (40 everywhere: whole) and G (its block (4, 4, 7, 7)); the
  probabilities are the softmax of the channel means (A: 50, 10, 0).
  """
  path = tmp_path / 'predictions.jsonl'
  got = _evaluate_hand(monkeypatch, predictions_file=str(path))
  assert got['per_class_cls_top1_accuracy'] == [1.0, 0.0, 1.0]
  assert got['per_class_num_images_with_boxes'] == [1, 1, 1]
  assert got['per_class_loc_top1_accuracy'] == [1.0, 0.0, 0.0]
  assert got['per_class_gt_known_loc_accuracy'] == [1.0, 1.0, 0.0]
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r['index'] for r in lines] == [0, 1, 2, 3]
  a, b, c, d = lines
  assert (a['label'], a['top_k'], a['height'], a['width']) == (0, [0, 1], 8, 8)
  assert a['boxes'] == [[1, 1, 4, 4], [0, 0, 7, 7]] and a['gt_known_box'] == [1, 1, 4, 4]
  probs = np.exp([50.0, 10.0, 0.0]) / np.exp([50.0, 10.0, 0.0]).sum()
  np.testing.assert_allclose(a['scores'], probs[:2], rtol=1e-5, atol=1e-12)
  assert (a['loc_top1'], a['loc_topk'], a['gt_known'], a['gt_known_iou']) == (1, 1, 1, 1.0)
  assert b['top_k'] == [0, 1] and b['boxes'] == [[0, 0, 7, 7], [4, 4, 7, 7]]
  assert (b['loc_top1'], b['loc_topk'], b['gt_known']) == (0, 1, 1)
  assert c['gt_known'] == 0 and c['gt_known_box'] == [0, 0, 1, 1]
  assert 'gt_known' not in d  # no ground truth: no hits, the boxes only
  assert d['gt_known_box'] == [2, 2, 5, 5]
  assert not list(tmp_path.glob('*.part-*'))  # the parts are merged and removed


def test_predictions_file_holds_the_main_evaluation_not_a_baselines(monkeypatch, tmp_path):
  # evaluate_and_report with the backprop baseline: predictions.jsonl (relative: under the
  # workdir) has CAM's hits, written once, and nothing is written where training runs.
  config = _hand_config(monkeypatch)
  config.eval.predictions_file = 'predictions.jsonl'
  config.eval.num_pictures = 0
  monkeypatch.chdir(tmp_path)
  workdir = tmp_path / 'w'
  results = evaluators.evaluate_and_report(config, _ChannelGAP(), sharding.make_mesh(),
                                           str(workdir), step=0, baselines=('backprop',))
  lines = [json.loads(line) for line in (workdir / 'predictions.jsonl').read_text().splitlines()]
  with_boxes = [r for r in lines if 'gt_known' in r]
  assert sum(r['gt_known'] for r in with_boxes) / len(with_boxes) == pytest.approx(
      results['gt_known_loc_accuracy'])
  assert sum(r['gt_known_iou'] for r in with_boxes) / len(with_boxes) == pytest.approx(
      results['gt_known_mean_iou'])
  assert sorted(os.listdir(tmp_path)) == ['w']


def test_threshold_calibration_counts_only_images_with_boxes():
  """experiments/calibrate_threshold.py on the hand images of the test above: A and B's
  label maps are blocks (their box at any threshold of the max is the block, IoU 1); C's
  is a 2×2 block against a 6×6 truth (IoU 4/36); D has no box and counts apart."""
  # pylint: disable=g-import-not-at-top
  from experiments import calibrate_threshold
  examples = _hand_examples()
  config = synthetic_gap.get_config('tiny')
  config.data.image_size = 8
  config.eval.batch_size = 8
  got = calibrate_threshold.gt_known_hits(config, _ChannelGAP(), sharding.make_mesh(),
                                          examples, None, (0.2, 0.6))
  assert got['with_boxes'] == 3 and got['without_boxes'] == 1
  np.testing.assert_array_equal(got['hits'], [2, 2])  # A and B at both thresholds


def test_an_evaluation_that_fails_stops_its_input_workers(tiny_data_dir, monkeypatch):
  """The traceback keeps the evaluation's frames (and so its batch generator) alive: the
  grain worker processes must be stopped by evaluate itself, not by garbage collection."""
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.data.prepare = False
  config.data.num_workers = 1

  def failing_predict_fn(*args, **kwargs):
    def predict(*a):
      raise RuntimeError('device lost')
    return predict

  monkeypatch.setattr(evaluate, 'make_predict_fn', failing_predict_fn)
  before = set(multiprocessing.active_children())
  model = models.get_model('tiny_gap', num_classes=4, rngs=nnx.Rngs(0))
  with pytest.raises(RuntimeError, match='device lost') as raised:
    evaluate.evaluate(config, model, sharding.make_mesh(), localization=False)
  assert raised.traceback  # still held here
  assert not set(multiprocessing.active_children()) - before

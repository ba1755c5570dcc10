"""evaluate(): classification-only and saliency paths end to end, and the report formatting."""

import pytest
from flax import nnx

from cam_jax import evaluate, models, sharding
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

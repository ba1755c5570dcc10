"""The cam_official evaluator end to end on the tiny synthetic split, and its pieces."""

import numpy as np
import pytest
from flax import nnx

from cam_jax import evaluate
from cam_jax import evaluators
from cam_jax import models
from cam_jax import sharding
from cam_jax.data import conventions
from cam_jax.protocols import cam_official
from cam_jax.protocols import official_eval
from cam_jax.protocols import wsol_eval
from configs import synthetic_gap


def test_frame_and_crops():
  assert official_eval.frame_size(224) == 256 and official_eval.frame_size(227) == 256
  assert official_eval.frame_size(32) == 37  # 32 · 256 / 224 = 36.6
  image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)
  conv = conventions.preset('imagenet')
  crops = official_eval.crop_inputs(image, 32, conv)
  assert crops.shape == (10, 32, 32, 3) and crops.dtype == np.float32
  frame = np.clip(np.floor(cam_official.imresize(image.astype(float), (37, 37), 'bilinear')
                           + 0.5), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(crops[2], conv.normalize(frame[0:32, 5:37]))  # x = 5, y = 0
  np.testing.assert_array_equal(crops[7], crops[2][:, ::-1])  # its mirror


def test_cam_official_evaluator_through_evaluate_and_report(tiny_data_dir, tmp_path, capsys):
  config = synthetic_gap.get_config('tiny,protocols')
  config.data.data_dir = tiny_data_dir
  config.data.prepare = False
  config.eval.num_examples = 16
  config.eval.baselines = ()
  config.evals.official.batch_size = 8
  config.evals.wsol.select_split = 'validation'
  config.eval.paper_row = 'GoogLeNet-GAP'
  model = models.get_model('tiny_gap', num_classes=4, rngs=nnx.Rngs(0))
  results = evaluators.evaluate_and_report(config, model, sharding.make_mesh(), str(tmp_path),
                                         step=0)
  assert results['official/num_images'] == 16 and results['official/protocol'] == 'cam_official'
  for k in range(1, 6):
    assert 0 <= results[f'official/loc_top{k}_error'] <= 1
  # More guesses never hurt; the heuristic's five guesses include the first box of the
  # top three classes.
  first = [results[f'official/loc_top{k}_error'] for k in range(1, 6)]
  assert first == sorted(first, reverse=True)
  assert results['official/loc_top5_error_heuristic'] <= results['official/loc_top3_error']
  assert 0 <= results['wsol/max_box_acc'] <= 1 and 0 <= results['wsol/max_box_acc_v2'] <= 1
  assert results['wsol/num_images_with_boxes'] == 16
  assert len(results['wsol/box_acc_curve']) == 1000
  assert max(results['wsol/box_acc_curve']) == results['wsol/max_box_acc']
  # The operating τ chosen on the validation split, the test split scored at it.
  assert results['wsol/selected_on'] == 'validation'
  assert results['wsol/box_acc_at_selected_tau'] <= results['wsol/max_box_acc']
  assert 0 <= results['wsol/top1_loc'] <= results['wsol/max_box_acc']
  per_class = results['per_class_cls_top1_accuracy']
  assert len(per_class) == 4 and all(v is None or 0 <= v <= 1 for v in per_class)
  # Weighted by their images, the per-class rates give back the overall one.
  counts = results['per_class_num_images']
  assert sum(counts) == 16
  assert sum((a or 0) * m for a, m in zip(per_class, counts)) / 16 == pytest.approx(
      1 - results['cls_top1_error'])
  printed = capsys.readouterr().out
  assert 'official (cam_official):' in printed and 'paper (GoogLeNet-GAP)' in printed
  assert 'Paper, Table 3 (ILSVRC test set' in printed
  assert '(protocol cam_jax):' in printed


def test_unknown_evaluator_type_is_named():
  config = synthetic_gap.get_config('tiny')
  config.evals.x = dict(type='nope')
  try:
    evaluators.run_evaluators(config, None, None)
  except ValueError as e:
    assert ("Unknown evaluator type 'nope'; known: cam_jax, cam_official, classification, "
            'wsolevaluation') in str(e)
  else:
    raise AssertionError('no error')


def test_wsol_ious_of_one_block():
  # The CAM is the 32×32 input itself (no resize): a block of 1s at rows 8..15, cols
  # 4..11. For every τ < 1 the block is kept; its contour's boundingRect (4, 8, 8, 8) gives
  # their box [4, 8, 12, 16]. Against the ground truth [4, 8, 11, 15] (inclusive, the
  # original image 32×32, so resize_box keeps it): intersection 8 · 8 = 64, areas 9 · 9 =
  # 81 and 64, IoU 64 / 81.
  cam = np.zeros((32, 32))
  cam[8:16, 4:12] = 1.0
  single, multi = wsol_eval.image_ious(wsol_eval.scoremap_of(cam, 32),
                                       np.array([[4, 8, 11, 15]]), (32, 32),
                                       np.array([0.0, 0.5, 0.99]))
  np.testing.assert_allclose(single, 64 / 81)
  np.testing.assert_allclose(multi, 64 / 81)


def test_pxap_from_histograms_worked_by_hand():
  # Bins [0, .5), [.5, 1), [1, 2), [2, 3) (interval 0.5). Foreground scores 0.9, 0.6, 0.2;
  # background 0.7, 0.1: true hist [1, 2, 0, 0], false [1, 1, 0, 0]. From the top bin down:
  # tp = 0, 0, 2, 3; fp = 0, 0, 1, 2; recall 0, 0, 2/3, 1; precision -, -, 2/3, 3/5.
  # AP = sum over steps with tp + fp > 0 of precision · Δrecall = 2/3 · 2/3 + 3/5 · 1/3.
  edges = wsol_eval.pxap_bins(0.5)
  np.testing.assert_allclose(edges, [0, 0.5, 1, 2, 3])
  true_hist = np.histogram([0.9, 0.6, 0.2], bins=edges)[0]
  false_hist = np.histogram([0.7, 0.1], bins=edges)[0]
  np.testing.assert_array_equal(true_hist, [1, 2, 0, 0])
  assert wsol_eval.pxap_from_histograms(true_hist, false_hist) == pytest.approx(
      2 / 3 * 2 / 3 + 3 / 5 * 1 / 3)


def test_wsol_evaluator_scores_pxap_on_a_mask_dataset(tmp_path):
  """OpenImages in the WSOL layout: masks and ignore masks, no boxes."""
  from tests.data import fake_wsol  # pylint: disable=import-outside-toplevel
  expected = fake_wsol.write_fake_wsol(str(tmp_path), 'OpenImages')
  config = synthetic_gap.get_config('tiny')
  config.data = fake_wsol.data_config(expected)
  config.data.image_size = 32
  config.data.eval_split = 'test'
  config.evals.wsol = dict(type='wsolevaluation', cam_curve_interval=0.01)
  model = models.get_model('tiny_gap', num_classes=expected['num_classes'], rngs=nnx.Rngs(0))
  (name, results), = evaluators.run_evaluators(config, model, sharding.make_mesh()).items()
  assert name == 'wsol' and results['num_images_with_boxes'] == 0
  assert 0 < results['pxap'] <= 1 and 'max_box_acc' not in results
  assert results['pxap_recall_curve'][-1] == 1.0
  assert len(results['pxap_precision_curve']) == len(results['pxap_recall_curve'])


def test_cam_official_blacklist_counts_for_classification_only(tiny_data_dir, tmp_path):
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.data.prepare = False
  (tmp_path / 'blacklist.txt').write_text('1\n3\n8\n')  # 1-based, as the devkit's file
  model = models.get_model('tiny_gap', num_classes=4, rngs=nnx.Rngs(0))
  results = official_eval.evaluate_official(config, model, sharding.make_mesh(),
                                            num_examples=8, batch_size=8,
                                            blacklist_file=str(tmp_path / 'blacklist.txt'))
  assert results['num_images'] == 8 and results['num_blacklisted'] == 3
  assert results['num_images_with_boxes'] == 5
  assert official_eval.read_blacklist(str(tmp_path / 'blacklist.txt')) == {0, 2, 7}


def test_cam_jax_and_classification_as_evaluators(tiny_data_dir):
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.data.prepare = False
  config.evals.val = dict(type='cam_jax', split='validation', cam_threshold=0.3,
                          num_examples=16)
  config.evals.cls = dict(type='classification', num_examples=16)
  model = models.get_model('tiny_gap', num_classes=4, rngs=nnx.Rngs(0))
  out = evaluators.run_evaluators(config, model, sharding.make_mesh())
  assert list(out) == ['cls', 'val']  # ConfigDict keeps its keys sorted
  assert out['val']['split'] == 'validation' and out['val']['cam_threshold'] == 0.3
  assert 'gt_known_loc_accuracy' in out['val'] and 'gt_known_loc_accuracy' not in out['cls']
  config.evals.val.nonsense = 1
  with pytest.raises(ValueError, match="'nonsense' is not a field of config.eval"):
    evaluators.run_evaluators(config, model, sharding.make_mesh())


def test_a_blob_seen_through_ten_crops_is_boxed_where_it_is():
  # A positive blob centred at (x, y) = (54, 17) of the 73×73 frame of a 64×64 image
  # (crop 64): each crop sees its part, at the 32×32 map resolution. Merged back, resized
  # to the image and boxed, the first box must hold the blob's centre, at
  # (54, 17) · 64 / 73 = (47.3, 14.9) in the image.
  yy, xx = np.mgrid[0:73, 0:73]
  frame_map = np.exp(-(((xx - 54) / 8.0) ** 2 + ((yy - 17) / 8.0) ** 2))
  crops = cam_official.ten_crops(frame_map[..., None], 64)[..., 0]
  cams = crops.reshape(10, 32, 2, 32, 2).mean((2, 4))
  heat = cam_official.heat_map(cams, (64, 64), 64, square=official_eval.frame_size(64))
  assert np.unravel_index(heat.argmax(), heat.shape) == (15, 47)
  x0, y0, x1, y1 = cam_official.corner_boxes(cam_official.dt_boxes(heat))[0]
  assert x0 <= 47 <= x1 and y0 <= 15 <= y1


def test_a_misspelt_evaluator_argument_is_a_config_error():
  config = synthetic_gap.get_config('tiny')
  config.evals.official = dict(type='cam_official', treshold=(20, 100, 110))
  with pytest.raises(ValueError, match="config.evals.official: .*'treshold'"):
    evaluators.run_evaluators(config, None, None)


def test_an_evaluator_during_training_chooses_the_best_checkpoint(tiny_data_dir, tmp_path):
  """Adding a metric to training is a config entry: wsolevaluation's MaxBoxAcc, on the
  selection split during training, picks best/."""
  import json  # pylint: disable=import-outside-toplevel
  from cam_jax import checkpoints, train  # pylint: disable=import-outside-toplevel
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.data.prepare = False
  config.figures.enabled = False
  config.eval.baselines = ()
  config.evals.w = dict(type='wsolevaluation', cam_curve_interval=0.05, during_training=True)
  config.best_metric = 'w/max_box_acc'
  config.best_mode = 'max'
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['w/split'] == 'test'  # at the end: the reported split
  with open(tmp_path / 'metrics.jsonl', encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  during = [r for r in records if 'w/max_box_acc' in r]
  assert during and all(r['w/split'] == 'validation' for r in during)
  assert all('w/box_acc_curve' not in r for r in during)  # curves stay out of the log
  meta, _ = checkpoints.read_meta_at(str(tmp_path / 'best'))
  assert meta['w/max_box_acc'] == max(r['w/max_box_acc'] for r in during)


def test_wsol_evaluator_saves_scoremaps_for_rescoring(tiny_data_dir, tmp_path):
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.data.prepare = False
  model = models.get_model('tiny_gap', num_classes=4, rngs=nnx.Rngs(0))
  wsol_eval.evaluate_wsol(config, model, sharding.make_mesh(), num_examples=16,
                          cam_curve_interval=0.1, scoremap_dir=str(tmp_path / 'scoremaps'))
  saved = sorted(p for p in (tmp_path / 'scoremaps').rglob('*.npy'))
  assert len(saved) == 16
  first = np.load(saved[0])
  assert first.shape == (32, 32) and first.min() >= 0 and first.max() <= 1
  assert wsol_eval.scoremap_path('/d', {'file_name': b'val/a.jpg'}, 3) == '/d/val/a.jpg.npy'
  assert wsol_eval.scoremap_path('/d', {'file_name': '../x.jpg'}, 3) == '/d/3.npy'


def test_curve_pictures():
  from cam_jax import viz  # pylint: disable=import-outside-toplevel
  numbers = {'cam_curve_interval': 0.5, 'box_acc_curve': [0.2, 0.9],
             'box_acc_v2_iou30_curve': [0.5, 1.0], 'pxap': 0.5,
             'pxap_precision_curve': [1.0, 0.5], 'pxap_recall_curve': [0.5, 1.0]}
  pictures = evaluators.curve_pictures('wsol', numbers)
  assert set(pictures) == {'box_acc', 'pxap'}
  picture = pictures['box_acc']
  assert picture.shape == (360, 480, 3) and picture.dtype == np.uint8
  # The first curve's colour is drawn; the plot is not blank.
  assert (picture == viz.CURVE_COLORS[0]).all(-1).any()
  with pytest.raises(ValueError, match='1 to 5 curves'):
    viz.curve_plot({}, 't', 'x', 'y')


def test_cam_official_thresholds_chosen_on_another_split_and_predictions(tiny_data_dir,
                                                                          tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  config = synthetic_gap.get_config('tiny')
  config.data.data_dir = tiny_data_dir
  config.data.prepare = False
  model = models.get_model('tiny_gap', num_classes=4, rngs=nnx.Rngs(0))
  mesh = sharding.make_mesh()
  choices = ((20, 100, 110), (60, 120, 200))
  results = official_eval.evaluate_official(
      config, model, mesh, num_examples=8, batch_size=8, select_split='validation',
      threshold_choices=choices, predictions_file=str(tmp_path / 'pred.jsonl'))
  assert results['selected_on'] == 'validation'
  assert tuple(results['selected_thresholds']) in choices
  assert results['thresholds'] == results['selected_thresholds']
  # The choice is the one with the lowest top-1 error on validation: check by scoring it.
  on_val = [official_eval.evaluate_official(config, model, mesh, split='validation',
                                            num_examples=8, batch_size=8,
                                            thresholds=c)['loc_top1_error'] for c in choices]
  assert tuple(results['selected_thresholds']) == choices[int(np.argmin(on_val))]
  with open(tmp_path / 'pred.jsonl', encoding='utf-8') as f:
    lines = [json.loads(line) for line in f]
  assert [line['index'] for line in lines] == list(range(8))
  assert len(lines[0]['classes']) == 4 and len(lines[0]['first_boxes'][0]) == 4
  assert not list(tmp_path.glob('pred.jsonl.part-*'))
  with pytest.raises(ValueError, match='is the reported split'):
    official_eval.evaluate_official(config, model, mesh, select_split='test')


def test_choe_row_is_printed_beside_wsolevaluation_only():
  numbers = {'protocol': 'wsolevaluation', 'num_images': 10, 'max_box_acc_v2': 0.5,
             'choe_row': 'ImageNet VGG'}
  table = evaluate.format_protocol_table(numbers)
  assert 'Choe et al. (ImageNet VGG)' in table and '| max_box_acc_v2 | 50.00 | 60.00 |' in table
  with pytest.raises(ValueError, match='known rows'):
    evaluate.format_protocol_table({**numbers, 'choe_row': 'ImageNet AlexNet'})


def test_thresholds_print_as_values_and_rates_at_them_in_percent():
  table = evaluate.format_protocol_table({
      'protocol': 'wsolevaluation', 'num_images': 4, 'max_box_acc_tau': 0.342,
      'box_acc_at_selected_tau': 0.697, 'box_acc_selected_tau': 0.318})
  assert '| max_box_acc_tau | τ = 0.342 |' in table
  assert '| box_acc_selected_tau | τ = 0.318 |' in table
  assert '| box_acc_at_selected_tau | 69.70 |' in table

"""The host box stage: the paper's protocol and the WSOL counts on hand-made maps, and the
worker processes against the main process."""

import os

import numpy as np
import pytest

from cam_jax import box_stage

PARAMS = box_stage.BoxParams(input_size=8)


def _blob(hw, box, value=1.0):
  """A map that is `value` on the inclusive box (x0, y0, x1, y1) and 0 elsewhere."""
  cam = np.zeros(hw, np.float32)
  x0, y0, x1, y1 = box
  cam[y0:y1 + 1, x0:x1 + 1] = value
  return cam


def _score(classes_k, label, maps, gt, orig_hw=(8, 8), window=None, params=PARAMS):
  window = np.array([0, 0, orig_hw[1], orig_hw[0]]) if window is None else window
  return box_stage.score_paper(np.asarray(classes_k), label, np.stack(maps), np.asarray(gt),
                               window, orig_hw, params)


def _flags(got):
  return tuple(bool(got[k]) for k in ('loc_top1', 'loc_topk', 'gt_known'))


# --- the paper's protocol -------------------------------------------------------------
# An 8×8 map on an 8×8 image through the whole window is resampled onto itself (each
# pixel centre falls on a map cell's centre), so boxes are read off the blobs.

def test_top1_class_right_and_box_right():
  good = _blob((8, 8), (1, 1, 4, 4))
  got = _score([2, 0], 2, [good, good, good], [[1, 1, 4, 4]])
  assert _flags(got) == (True, True, True) and got['gt_known_iou'] == 1.0


def test_right_class_second_counts_only_at_top_k():
  wrong = _blob((8, 8), (5, 5, 7, 7))   # the top-1 class (wrong) looks elsewhere
  right = _blob((8, 8), (1, 1, 4, 4))   # the label, ranked second, localizes
  assert _flags(_score([3, 2], 2, [wrong, right, right], [[1, 1, 4, 4]])) == (
      False, True, True)


def test_right_class_with_a_bad_box_is_wrong_everywhere():
  # Box (2, 2, 5, 5) against (0, 0, 3, 3): intersection 2*2 = 4, union 16 + 16 - 4 = 28,
  # IoU 1/7 < 0.5.
  off = _blob((8, 8), (2, 2, 5, 5))
  got = _score([1], 1, [off, off], [[0, 0, 3, 3]])
  assert _flags(got) == (False, False, False)
  np.testing.assert_allclose(got['gt_known_iou'], 4 / 28)


def test_label_outside_the_top_k_is_wrong_but_gt_known_still_counts():
  good = _blob((8, 8), (1, 1, 4, 4))
  assert _flags(_score([5, 6], 2, [good, good, good], [[1, 1, 4, 4]])) == (
      False, False, True)


def test_any_ground_truth_box_counts():
  cam = _blob((8, 8), (4, 4, 7, 7))
  assert _flags(_score([0], 0, [cam, cam], [[0, 0, 1, 1], [4, 4, 7, 7]])) == (
      True, True, True)


def test_the_map_is_resized_to_the_original_image_before_boxing():
  """The network saw 8×8 of a 16-high, 32-wide image (whole window: 4 original columns and
  2 rows per map cell); the map is 1 on cells x 2..5, y 2..5.

  Column x samples the map at u = (x + 0.5) / 4 - 0.5; between cells 1 (0) and 2 (1) the
  value is u - 1, kept when >= 0.2 (of the max 1): x = 6 gives u = 1.125, 0.125, out;
  x = 7 gives 1.375, 0.375, in. On the right, between cells 5 (1) and 6 (0), the value is
  6 - u: x = 24 gives u = 5.625, 0.375, in; x = 25 gives 5.875, 0.125, out. Rows sample
  at v = (y + 0.5) / 2 - 0.5: y = 2 gives 0.75 (cells 0 and 1, both 0), out; y = 3 gives
  1.25, 0.25, in; y = 12 gives 5.75, 0.25, in; y = 13 gives 6.25, 0, out.
  Box (7, 3, 24, 12): 18 × 10. Against the truth (8, 4, 23, 11), 16 × 8 inside it:
  IoU 128 / 180. (Mapping the 8×8 box (2, 2, 5, 5) instead would give (8, 4, 23, 11).)
  """
  cam = _blob((8, 8), (2, 2, 5, 5))
  got = _score([0], 0, [cam, cam], [[8, 4, 23, 11]], orig_hw=(16, 32))
  np.testing.assert_allclose(got['gt_known_iou'], 128 / 180)
  assert got['gt_known']
  np.testing.assert_array_equal(box_stage.paper_boxes_on_original(
      cam, np.array([0, 0, 32, 16]), (16, 32), (0.2,)), [[7, 3, 24, 12]])


def test_boxes_through_a_centre_crop_are_offset_into_the_original():
  # An 8-high, 16-wide image whose central 8×8 (x 4..11) the network saw: the map's cells
  # are the window's pixels, so the blob (1, 2, 3, 5) is (5, 2, 7, 5) in the original.
  # Columns outside the window have no map value and never join a box.
  cam = _blob((8, 8), (1, 2, 3, 5))
  window = np.array([4, 0, 12, 8])
  np.testing.assert_array_equal(
      box_stage.paper_boxes_on_original(cam, window, (8, 16), (0.2,)), [[5, 2, 7, 5]])
  # A constant map keeps everything it covers: the window's block, x 4..11.
  np.testing.assert_array_equal(box_stage.paper_boxes_on_original(
      np.ones((8, 8)), window, (8, 16), (0.2, 0.9)), [[4, 0, 11, 7]] * 2)
  assert _score([0], 0, [cam, cam], [[5, 2, 7, 5]], (8, 16), window)['gt_known_iou'] == 1


def test_heuristic_by_hand():
  """Class 7's map: 1 on a 2×2 core (x, y 2..3), 0.3 on the square around it out to
  x, y 1..6. Tight (0.5 × max) keeps the core: box (2, 2, 3, 3); loose (0.2 × max) the
  square too: box (1, 1, 6, 6). Ground truth (1, 1, 6, 6): only the loose box hits (IoU 1;
  the tight one has 4/36)."""
  cam = _blob((10, 10), (1, 1, 6, 6), 0.3)
  cam[2:4, 2:4] = 1.0
  maps = [np.zeros((10, 10), np.float32), cam, cam, cam]  # ranks 0, 1, 2, then the label
  gt = [[1, 1, 6, 6]]

  def hit(classes, tight, loose):
    params = box_stage.BoxParams(10, heuristic_thresholds=(tight, loose))
    return bool(_score(classes, 7, maps, gt, (10, 10), params=params)['loc_heuristic'])

  assert hit([3, 7, 4], 0.5, 0.2)  # the label is 2nd: its loose box hits
  assert not hit([3, 7, 4], 0.5, 0.5)  # both "loose" and tight keep only the core
  assert hit([3, 4, 7], 0.5, 0.2)  # 3rd: one loose box, which hits
  assert not hit([3, 4, 5], 0.5, 0.2)  # the label is not among the top 3
  # The tight box is the one that fits when the truth is the core.
  params = box_stage.BoxParams(10, heuristic_thresholds=(0.5, 0.2))
  assert _score([3, 7, 4], 7, maps, [[2, 2, 3, 3]], (10, 10), params=params)['loc_heuristic']
  assert not _score([3, 4, 7], 7, maps, [[2, 2, 3, 3]], (10, 10),
                    params=params)['loc_heuristic']  # 3rd: no tight box


def test_a_different_map_at_the_labels_rank_is_the_one_scored_for_top_k():
  # Saliency maps could differ between the rank's column and the label's column; top-k
  # uses the rank's map, GT-known the label's.
  right = _blob((8, 8), (1, 1, 4, 4))
  wrong = _blob((8, 8), (5, 5, 7, 7))
  assert _flags(_score([2], 2, [wrong, right], [[1, 1, 4, 4]])) == (False, False, True)


def test_maps_of_the_top_1_only_stand_the_labels_map_in_for_its_rank():
  # Evaluation computes the top-1 map and the label's: the label ranked 2nd is scored with
  # its own map (a map is a function of the class, not of the rank).
  wrong = _blob((8, 8), (5, 5, 7, 7))
  right = _blob((8, 8), (1, 1, 4, 4))
  got = _score([3, 2, 6], 2, [wrong, right], [[1, 1, 4, 4]])
  assert _flags(got) == (False, True, True) and got['loc_heuristic'] == 1.0


# --- MaxBoxAcc, MaxBoxAccV2, PxAP -----------------------------------------------------

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
  scores = box_stage.WsolScores(0.25, 0.001, with_masks=True)
  window = np.array([0, 0, 8, 8], np.float32)
  mask = map_hw == 1.0
  scores.add(map_hw, np.array([[1, 2, 3, 4]]), window, (8, 8), mask, np.zeros_like(mask))
  scores.add(map_hw, np.array([[5, 5, 7, 7]]), window, (8, 8))
  got = scores.result(scores.state())
  assert got['max_box_acc'] == 0.5 and got['max_box_acc_threshold'] == 0.25
  assert got['max_box_acc_v2'] == 0.5
  assert got['pxap'] == 1.0


def test_wsol_boxes_are_scored_in_the_original_image():
  """The label's 4×4 map, on a 4×4 input showing a 12-high, 8-wide image (3 rows and 2
  columns per input pixel), is 1 on the input pixel (1, 1) and 0 elsewhere. Its box at
  every τ in (0, 1] is (1, 1, 1, 1) on the input: edges x 1..2, y 1..2 -> original edges
  x 2..4, y 3..6 -> box (2, 3, 3, 5), which is the ground truth: IoU 1. At τ = 0 the
  whole input: (0, 0, 7, 11), IoU 6/96 = 1/16. Grid 0, 0.5: MaxBoxAcc 1 at τ = 0.5."""
  map_SS = _blob((4, 4), (1, 1, 1, 1))
  scores = box_stage.WsolScores(0.5, 0.001, with_masks=False)
  scores.add(map_SS, np.array([[2, 3, 3, 5]]), np.array([0, 0, 8, 12]), (12, 8))
  got = scores.result(scores.state())
  assert got['max_box_acc'] == 1.0 and got['max_box_acc_threshold'] == 0.5
  # V2 at δ 0.3, 0.5, 0.7: the τ = 0.5 box hits all three.
  assert got['max_box_acc_v2'] == 1.0


def test_scores_resize_the_labels_map_to_the_input_grid():
  """A 2×2 feature-grid map of an 8×8 input (an 8×8 image, whole window), hot at cell
  (0, 0). Resized like jax.image.resize: along a row u = (x + 0.5) / 4 - 0.5, clamped to
  [0, 1], and the value 1 - u: 1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0; the map is the
  product of a row's and a column's factors.
  MaxBoxAcc on the grid 0, 0.5: at τ = 0.5 the pixels with product >= 0.5 span x, y 0..3
  ((3, 0) and (0, 3) have 0.625), box (0, 0, 3, 3) = the truth: 1.
  Paper box (>= 0.2 of the max, on the original 8×8): (4, 0) has 0.375, (5, 0) 0.125, so
  (0, 0, 4, 4); IoU with (0, 0, 3, 3) = 16/25 = 0.64 >= 0.5: GT-known hit.
  """
  cam = np.array([[1, 0], [0, 0]], np.float32)
  np.testing.assert_allclose(box_stage.on_input_grid(cam, 8)[0],
                             [1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0])
  scores = box_stage.Scores(box_stage.BoxParams(8, box_threshold_step=0.5))
  scores.add(np.array([0]), 0, np.stack([cam, cam]), np.array([[0, 0, 3, 3]]),
             np.array([0, 0, 8, 8]), (8, 8))
  got = scores.result(scores.state())
  assert got['max_box_acc'] == 1.0 and got['max_box_acc_threshold'] == 0.5
  assert got['paper/gt_known'] == 1.0 and got['paper/loc_top1'] == 1.0
  np.testing.assert_allclose(got['paper/gt_known_iou'], 0.64)


# --- all cores ------------------------------------------------------------------------

def _random_images(n, rng, size=16, with_masks=True):
  maps = rng.normal(size=(n, 3, 4, 4)).astype(np.float32)
  x0 = rng.integers(0, 20, n)
  y0 = rng.integers(0, 10, n)
  boxes = np.full((n, 2, 4), -1, np.int32)
  boxes[:, 0] = np.stack([x0, y0, x0 + rng.integers(2, 12, n), y0 + rng.integers(2, 10, n)], 1)
  images = {'classes_Bk': rng.integers(0, 3, (n, 2)).astype(np.int32),
            'label': rng.integers(0, 3, n).astype(np.int32), 'maps_BThw': maps,
            'boxes': boxes, 'num_boxes': np.ones(n, np.int32),
            'window': np.tile(np.float32([0, 0, 32, 24]), (n, 1)),
            'orig_hw': np.tile(np.int32([24, 32]), (n, 1))}
  if with_masks:
    images['mask'] = rng.random((n, size, size)) < 0.3
    images['ignore'] = np.zeros((n, size, size), bool)
  return images


def test_worker_processes_give_the_same_totals_as_the_main_process():
  rng = np.random.default_rng(0)
  params = box_stage.BoxParams(16, box_threshold_step=0.05, with_masks=True, num_classes=3)
  batches = [_random_images(n, rng) for n in (13, 8, 5)]
  totals = []
  for workers in (0, 2):
    stage = box_stage.BoxStage(params, workers)
    for images in batches:
      stage.submit(images)
    totals.append(stage.finish())
  # And by hand, image by image.
  scores = box_stage.Scores(params)
  for images in batches:
    for i in range(len(images['label'])):
      scores.add(images['classes_Bk'][i], int(images['label'][i]), images['maps_BThw'][i],
                 images['boxes'][i, :1], images['window'][i], (24, 32),
                 images['mask'][i], images['ignore'][i])
  assert totals[0].keys() == totals[1].keys() == scores.state().keys()
  for key, value in scores.state().items():
    # Exactly equal whatever the workers and however the images are grouped: every count
    # is an integer (the IoU sum in units of 2**-32).
    np.testing.assert_array_equal(totals[0][key], totals[1][key], err_msg=key)
    np.testing.assert_array_equal(totals[0][key], value, err_msg=key)
    assert np.asarray(value).dtype.kind == 'i', key
  assert totals[0]['box/num_images'] == 26
  # Per class: the classes' counts add up to the totals.
  assert totals[0]['class/num_images_with_boxes'].sum() == 26
  assert totals[0]['class/gt_known'].sum() == totals[0]['paper/gt_known']
  assert totals[0]['class/loc_top1'].sum() == totals[0]['paper/loc_top1']


def test_records_come_back_in_submission_order_from_the_workers():
  rng = np.random.default_rng(1)
  params = box_stage.BoxParams(16, box_threshold_step=0.25, records=True)
  images = _random_images(19, rng, with_masks=False)
  images['index'] = np.arange(100, 119)
  images['scores_Bk'] = rng.random((19, 2))
  got = []
  for workers in (0, 2):
    stage = box_stage.BoxStage(params, workers)
    stage.submit(images)
    got.append(stage.finish()['records'])
  assert got[0] == got[1]
  assert [r['index'] for r in got[0]] == list(range(100, 119))
  for i, r in enumerate(got[0]):
    # Each record's box is the paper box of that class's map, as scored.
    expected = box_stage.paper_boxes_on_original(images['maps_BThw'][i, 0],
                                                 images['window'][i], (24, 32), (0.2,))[0]
    assert r['boxes'][0] == expected.tolist() and r['top_k'] == images['classes_Bk'][i].tolist()
    assert r['scores'] == images['scores_Bk'][i].tolist()


def test_a_workers_error_reaches_the_caller():
  images = _random_images(3, np.random.default_rng(1), with_masks=False)
  images['maps_BThw'][2, -1, 0, 0] = np.nan
  stage = box_stage.BoxStage(box_stage.BoxParams(16), workers=1)
  stage.submit(images)
  with pytest.raises(ValueError, match='non-finite'):
    stage.finish()


class _DiesWhenUnpickled:
  """Kills the worker process that unpickles it, as an out-of-memory kill would."""

  def __reduce__(self):
    return (os._exit, (1,))


def test_dead_workers_leave_the_work_to_the_main_process(caplog):
  rng = np.random.default_rng(2)
  params = box_stage.BoxParams(16, box_threshold_step=0.05, with_masks=True)
  batches = [_random_images(n, rng) for n in (13, 8)]
  in_main = box_stage.BoxStage(params, 0)
  for images in batches:
    in_main.submit(images)
  stage = box_stage.BoxStage(params, 1)
  for images in batches:
    # An extra array that score_chunk does not read, but the worker must unpickle.
    images['poison'] = np.array([_DiesWhenUnpickled()] * len(images['label']), dtype=object)
    stage.submit(images)
  got, want = stage.finish(), in_main.finish()
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  assert 'box-stage worker processes died' in caplog.text


def test_shutting_the_pools_down_stops_their_worker_processes():
  """What runs at exit (atexit): every pool's workers stop; a later stage starts a new
  pool."""
  params = box_stage.BoxParams(16, box_threshold_step=0.05)
  stage = box_stage.BoxStage(params, workers=2)
  stage.submit(_random_images(16, np.random.default_rng(3), with_masks=False))
  stage.finish()
  workers = list(stage._pool._processes.values())  # pylint: disable=protected-access
  assert workers and all(p.is_alive() for p in workers)
  box_stage.shutdown_pools()
  assert not any(p.is_alive() for p in workers)
  again = box_stage.BoxStage(params, workers=2)
  again.submit(_random_images(4, np.random.default_rng(4), with_masks=False))
  assert again.finish()['box/num_images'] == 4

"""cam_jax's box stage against wsolevaluation's, one golden case per documented difference.

wsolevaluation (clovaai/wsolevaluation, `evaluation.py`, `compute_bboxes_from_scoremaps`)
boxes a map s in [0, 1] at τ like this: `u = (s * 255).astype(np.uint8)`, keep
`u > int(τ * u.max())` (strict), OpenCV contours (`RETR_TREE`: outer borders of
8-connected blobs and the borders of their holes), the contour of largest
`cv2.contourArea` (polygon area through pixel centres: a line or a single pixel has area
0), box `[x, y, x + w, y + h]` from `cv2.boundingRect`, clipped to W - 1 / H - 1 (one
pixel past the blob on the right and bottom unless it touches the border); no contour
gives `[0, 0, 0, 0]`. cam_jax (`boxes`, `box_sweep`) keeps `s >= τ` on the float map, takes
8-connected components, the largest by pixel count, inclusive corners, and the whole
image when the mask is empty. Both score IoU with +1 areas, `>= δ`.

For a float64 map with max 1, uint8 truncation and `>` together make wsolevaluation keep
`s >= (int(255 τ) + 1) / 255` (up to the rounding of 255 s) where cam_jax keeps
`s >= τ`: it drops the band [τ, (int(255 τ) + 1) / 255), e.g. [0.2, 52/255 = 0.20392...),
and never keeps more. Tests 1 and 2 split that band into its two causes.

Boxes are `(x0, y0, x1, y1)`, x the column, y the row; cam_jax's inclusive, wsolevaluation's
as its code writes them. Every expected value is a literal worked out by hand in the
comments. OpenCV is not a dependency: the contours are worked out by hand too, and
`_wsol_boxes`, wsolevaluation's rule restated for maps whose blobs are filled rectangles,
checks that arithmetic where it applies.
"""

import numpy as np
import pytest
from scipy import ndimage

from cam_jax import box_stage, box_sweep, boxes, metrics, windows


def _wsol_boxes(scoremap_HW: np.ndarray, tau: float) -> tuple[list[int], list[list[int]]]:
  """wsolevaluation's boxes at τ: (the largest contour's, every contour's).

  Only for maps whose kept blobs are filled rectangles (lines and single pixels
  included): such a blob has a single contour, through its outer pixel centres, of area
  (w - 1) * (h - 1) and bounding rectangle (x0, y0, w, h). Other shapes raise; their
  contours are worked out by hand in the tests.
  """
  height, width = scoremap_HW.shape
  image_HW = (scoremap_HW * 255).astype(np.uint8)
  kept_HW = image_HW > int(tau * np.max(image_HW))
  labels_HW, num = ndimage.label(kept_HW, structure=np.ones((3, 3), bool))
  if num == 0:
    return [0, 0, 0, 0], [[0, 0, 0, 0]]
  areas, wsol_boxes = [], []
  for label, (rows, cols) in enumerate(ndimage.find_objects(labels_HW), 1):
    if not np.all(labels_HW[rows, cols] == label):
      raise ValueError('not a filled rectangle: work its contours out by hand')
    w, h = cols.stop - cols.start, rows.stop - rows.start
    areas.append((w - 1) * (h - 1))
    wsol_boxes.append([cols.start, rows.start, min(cols.start + w, width - 1),
                       min(rows.start + h, height - 1)])
  # OpenCV's contour order would break a tie; the cases here avoid ties.
  if areas.count(max(areas)) > 1:
    raise ValueError(f'tie in contour area {areas}')
  return wsol_boxes[int(np.argmax(areas))], wsol_boxes


def _polygon_area(points: list[tuple[int, int]]) -> float:
  """Shoelace area of a closed polygon of (x, y) points, as `cv2.contourArea` computes it."""
  x_N, y_N = np.array(points, np.float64).T
  return abs(float(np.dot(x_N, np.roll(y_N, -1)) - np.dot(y_N, np.roll(x_N, -1)))) / 2


def _iou(box_4: list[int], gt_4: list[int]) -> float:
  # boxes.iou's +1 formula is wsolevaluation's `calculate_multiple_iou` (inclusive
  # corners, area (x1 - x0 + 1) * (y1 - y0 + 1)), so it scores both sides' boxes.
  return float(boxes.iou(np.array([box_4]), np.array([gt_4]))[0, 0])


def _accuracy(thresholds: list[float], ious_NT: list[list[float]]) -> dict:
  acc = metrics.BoxAccuracy(thresholds)
  acc.update(np.array(ious_NT, np.float64))
  return acc.result()


# --- 1. strict `>` versus `>=`: a pixel exactly at τ -----------------------------------


def test_pixel_exactly_at_threshold():
  # An 8x8 map: a 4x4 object (x, y in 2..5) at 0.2 with a single hot pixel (3, 3) at 1.
  # Ground truth: the object, [2, 2, 5, 5] (16 px).
  map_HW = np.zeros((8, 8))
  map_HW[2:6, 2:6] = 0.2
  map_HW[3, 3] = 1.0
  gt_4 = [2, 2, 5, 5]
  # cam_jax at τ = 0.2: 0.2 >= 0.2 keeps all 16 px: box [2, 2, 5, 5], IoU 16/16 = 1.
  np.testing.assert_array_equal(
      boxes.largest_component_box(boxes.threshold_mask(map_HW, 0.2)), gt_4)
  cam_jax_T4 = box_sweep.sweep_largest_boxes(map_HW, [0.2, 0.5])
  # At τ = 0.5 only the hot pixel: [3, 3, 3, 3], IoU 1/16.
  np.testing.assert_array_equal(cam_jax_T4, [[2, 2, 5, 5], [3, 3, 3, 3]])
  assert [_iou(b, gt_4) for b in cam_jax_T4] == [1.0, 1 / 16]
  # wsolevaluation at τ = 0.2: u = 0.2 * 255 = 51.0 -> 51 and 1.0 -> 255; threshold
  # int(0.2 * 255) = 51; 51 > 51 is false, so only the hot pixel survives. Here uint8
  # loses nothing (0.2 * 255 is exactly 51): strictness alone drops the object. A one-pixel
  # contour (area 0) has boundingRect (3, 3, 1, 1): box [3, 3, 4, 4] (4 px), inside the
  # truth: IoU 4/16 = 1/4. At τ = 0.5 (int(127.5) = 127) the same pixel, the same box.
  assert _wsol_boxes(map_HW, 0.2)[0] == [3, 3, 4, 4]
  assert _wsol_boxes(map_HW, 0.5)[0] == [3, 3, 4, 4]
  assert _iou([3, 3, 4, 4], gt_4) == 1 / 4
  # box_sweep's strict=True keeps the same pixel as wsolevaluation: [3, 3, 3, 3] inclusive
  # is [3, 3, 4, 4] in wsolevaluation's x + w convention.
  np.testing.assert_array_equal(
      box_sweep.sweep_largest_boxes(map_HW, [0.2, 0.5], strict=True), [[3, 3, 3, 3]] * 2)
  # MaxBoxAcc over τ in {0.2, 0.5}: cam_jax IoUs [1, 1/16] -> hit at τ = 0.2, MaxBoxAcc 1
  # (V2 1: one component, a hit at every δ). wsolevaluation's IoUs [1/4, 1/4] miss every
  # δ (0.25 < 0.3): MaxBoxAcc 0, V2 0. cam_jax with strict=True would score like it.
  ours = _accuracy([0.2, 0.5], [[1.0, 1 / 16]])
  assert (ours['max_box_acc'], ours['max_box_acc_v2']) == (1.0, 1.0)
  assert ours['best_threshold_D'][1] == 0.2
  theirs = _accuracy([0.2, 0.5], [[1 / 4, 1 / 4]])
  assert (theirs['max_box_acc'], theirs['max_box_acc_v2']) == (0.0, 0.0)


# --- 2. uint8 quantisation -----------------------------------------------------------


def test_uint8_quantisation_drops_values_just_above_threshold():
  # An 8 (high) x 10 (wide) map: an object at x 2..7, y 3..4 (12 px) at 0.2039 whose right
  # 2x2 (x 6..7) is 1. Ground truth: the object, [2, 3, 7, 4].
  map_HW = np.zeros((8, 10))
  map_HW[3:5, 2:8] = 0.2039
  map_HW[3:5, 6:8] = 1.0
  gt_4 = [2, 3, 7, 4]
  # cam_jax at τ = 0.2: 0.2039 >= 0.2, and even 0.2039 > 0.2, so the non-strict and the
  # strict sweep both keep the 12 px: [2, 3, 7, 4], IoU 1.
  np.testing.assert_array_equal(box_sweep.sweep_largest_boxes(map_HW, [0.2]), [gt_4])
  np.testing.assert_array_equal(
      box_sweep.sweep_largest_boxes(map_HW, [0.2], strict=True), [gt_4])
  # wsolevaluation: 0.2039 * 255 = 51.9945 -> uint8 51 (truncated), threshold
  # int(0.2 * 255) = 51; 51 > 51 is false. The value clears τ in float, strictly, and is
  # dropped by the quantisation alone (it lies in [0.2, 52/255 = 0.20392)). Left: the
  # 2x2 (x 6..7, y 3..4), contour area 1, boundingRect (6, 3, 2, 2): box [6, 3, 8, 5]
  # (9 px). Intersection with the truth: x 6..7, y 3..4 = 4 px; union 9 + 12 - 4 = 17;
  # IoU 4/17 = 0.235 < 0.3.
  assert _wsol_boxes(map_HW, 0.2)[0] == [6, 3, 8, 5]
  assert _iou([6, 3, 8, 5], gt_4) == 4 / 17
  assert _iou(box_sweep.sweep_largest_boxes(map_HW, [0.2])[0], gt_4) == 1.0
  assert _accuracy([0.2], [[4 / 17]])['max_box_acc'] == 0.0


# --- 3. components by pixel count versus contours by polygon area --------------------


def test_largest_by_pixel_count_not_by_contour_area():
  # A 10 (high) x 12 (wide) map: a one-pixel-wide line at y = 1, x 1..10 (10 px) and a 3x3
  # blob at x 4..6, y 5..7 (9 px), all at 1. Ground truth: the blob, [4, 5, 6, 7].
  map_HW = np.zeros((10, 12))
  map_HW[1, 1:11] = 1.0
  map_HW[5:8, 4:7] = 1.0
  gt_4 = [4, 5, 6, 7]
  # cam_jax at τ = 0.5: two components, 10 px against 9: the line, [1, 1, 10, 1]; no row
  # in common with the truth, IoU 0. Every component's box (V2): the blob's is [4, 5, 6, 7],
  # IoU 1.
  sweep = box_sweep.sweep_boxes(map_HW, [0.5])
  np.testing.assert_array_equal(sweep.largest_T4, [[1, 1, 10, 1]])
  np.testing.assert_array_equal(boxes.largest_component_box(map_HW >= 0.5), [1, 1, 10, 1])
  np.testing.assert_array_equal(sweep.components[0], [[1, 1, 10, 1], [4, 5, 6, 7]])
  assert _iou(sweep.largest_T4[0], gt_4) == 0.0
  # wsolevaluation: the line's contour runs (1, 1) -> (10, 1) and back: area 0. The blob's
  # runs round the square of its outer pixel centres, side 2: area 4. The blob wins:
  # boundingRect (4, 5, 3, 3), box [4, 5, 7, 8] (16 px), IoU 9/16 = 0.5625: a hit at 0.5.
  assert _polygon_area([(1, 1), (10, 1)]) == 0.0
  assert _polygon_area([(4, 5), (6, 5), (6, 7), (4, 7)]) == 4.0
  largest, every = _wsol_boxes(map_HW, 0.5)
  assert largest == [4, 5, 7, 8]
  assert every == [[1, 1, 11, 2], [4, 5, 7, 8]]  # the line's x + w = 11 = W - 1: no clip
  assert _iou([4, 5, 7, 8], gt_4) == 9 / 16
  # MaxBoxAcc: cam_jax 0, wsolevaluation 1. (V2, every component or contour, hits in both.)
  assert _accuracy([0.5], [[0.0]])['max_box_acc'] == 0.0
  assert _accuracy([0.5], [[9 / 16]])['max_box_acc'] == 1.0


# --- 4. a ring: contours and components agree; the corner convention does not ---------


def test_ring_agrees_up_to_the_corner_convention():
  # A 9x9 map: the one-pixel-wide border of the square x, y in 2..6 (16 px) at 1, a 3x3
  # hole inside. Ground truth [2, 2, 6, 6] (25 px).
  map_HW = np.zeros((9, 9))
  map_HW[2:7, 2:7] = 1.0
  map_HW[3:6, 3:6] = 0.0
  gt_4 = [2, 2, 6, 6]
  # cam_jax: one 8-connected component, [2, 2, 6, 6], IoU 1.
  sweep = box_sweep.sweep_boxes(map_HW, [0.5])
  np.testing.assert_array_equal(sweep.components[0], [gt_4])
  # wsolevaluation (RETR_TREE): two contours. The outer one runs through the four corner
  # pixels, a square of side 4: area 16. The hole's runs through the ring pixels
  # 4-adjacent to the hole, which skips the corners: an octagon, the 4x4 square less four
  # half-pixel triangles, area 14. Both have bounding rectangle (2, 2, 5, 5), and the
  # largest is the outer one anyway: box [2, 2, 7, 7] (36 px). IoU 25/36 = 0.694.
  outer = [(2, 2), (6, 2), (6, 6), (2, 6)]
  hole = [(3, 2), (5, 2), (6, 3), (6, 5), (5, 6), (3, 6), (2, 5), (2, 3)]
  assert (_polygon_area(outer), _polygon_area(hole)) == (16.0, 14.0)
  assert _iou([2, 2, 7, 7], gt_4) == 25 / 36
  # Same blob, same pixels: the boxes differ only by the x + w, y + h corner. That costs
  # the hit at δ = 0.7: cam_jax V2 (1 + 1 + 1) / 3 = 1, wsolevaluation (1 + 1 + 0) / 3.
  ours = _accuracy([0.5], [[1.0]])
  theirs = _accuracy([0.5], [[25 / 36]])
  assert (ours['max_box_acc'], ours['max_box_acc_v2']) == (1.0, 1.0)
  assert (theirs['max_box_acc'], theirs['max_box_acc_v2']) == (1.0, 2 / 3)


def test_corner_convention_is_clipped_at_the_border():
  # A 3x3 block in the bottom-right corner of a 9x9 map, x, y in 6..8. cam_jax: [6, 6, 8, 8].
  # wsolevaluation: boundingRect (6, 6, 3, 3), x + w = 9 clipped to W - 1 = 8: [6, 6, 8, 8],
  # the same box. Only blobs away from the right/bottom border get the extra pixel.
  map_HW = np.zeros((9, 9))
  map_HW[6:9, 6:9] = 1.0
  np.testing.assert_array_equal(box_sweep.sweep_largest_boxes(map_HW, [0.5]), [[6, 6, 8, 8]])
  assert _wsol_boxes(map_HW, 0.5)[0] == [6, 6, 8, 8]


def test_hole_contour_adds_a_box_to_multi_contour_v2():
  # A 10x10 map: the square x, y in 1..7 (49 px) at 1 less a 3x3 hole at x, y in 3..5: a
  # ring two pixels thick (40 px). Ground truth [2, 2, 7, 6] (6 x 5 = 30 px).
  map_HW = np.zeros((10, 10))
  map_HW[1:8, 1:8] = 1.0
  map_HW[3:6, 3:6] = 0.0
  gt_4 = [2, 2, 7, 6]
  # cam_jax: one component, one box, [1, 1, 7, 7] (49 px) at every δ. Intersection with
  # the truth x 2..7, y 2..6 = 30 px, union 49: IoU 30/49 = 0.612 (hit at 0.3 and 0.5).
  sweep = box_sweep.sweep_boxes(map_HW, [0.5])
  np.testing.assert_array_equal(sweep.largest_T4, [[1, 1, 7, 7]])
  np.testing.assert_array_equal(sweep.components[0], [[1, 1, 7, 7]])
  assert _iou([1, 1, 7, 7], gt_4) == 30 / 49
  # wsolevaluation: the outer contour, a square of side 6, area 36, box [1, 1, 8, 8]
  # (64 px), IoU 30/64 = 0.469: MaxBoxAcc misses at 0.5. The hole's contour runs through
  # the ring pixels 4-adjacent to the hole (the border of the square x, y in 2..6, less
  # its corners): area 16 - 4 * 0.5 = 14, box [2, 2, 7, 7] (36 px), IoU 30/36 = 0.833.
  # Multi-contour V2 (every contour gives a box) takes it: a hit at every δ, where cam_jax
  # misses at 0.7.
  outer = [(1, 1), (7, 1), (7, 7), (1, 7)]
  hole = [(3, 2), (5, 2), (6, 3), (6, 5), (5, 6), (3, 6), (2, 5), (2, 3)]
  assert (_polygon_area(outer), _polygon_area(hole)) == (36.0, 14.0)
  assert (_iou([1, 1, 8, 8], gt_4), _iou([2, 2, 7, 7], gt_4)) == (30 / 64, 30 / 36)
  ours = _accuracy([0.5], [[30 / 49]])
  assert (ours['max_box_acc'], ours['max_box_acc_v2']) == (1.0, 2 / 3)
  assert _accuracy([0.5], [[30 / 64]])['max_box_acc'] == 0.0  # largest contour
  assert _accuracy([0.5], [[30 / 36]])['max_box_acc_v2'] == 1.0  # best of both contours


# --- 5. 8-connectivity is the same in both ---------------------------------------------


def test_diagonal_touch_is_one_blob_in_both():
  # A 9x9 map: 2x2 blocks A (x, y in 1..2) and B (x, y in 3..4) touching at a corner, and a
  # separate 2x2 block C (x, y in 6..7), all at 1. Ground truth [1, 1, 4, 4] (16 px).
  map_HW = np.zeros((9, 9))
  map_HW[1:3, 1:3] = 1.0
  map_HW[3:5, 3:5] = 1.0
  map_HW[6:8, 6:8] = 1.0
  gt_4 = [1, 1, 4, 4]
  # cam_jax: 8-connected, so A + B is one component (8 px) against C (4 px):
  # [1, 1, 4, 4], IoU 1.
  sweep = box_sweep.sweep_boxes(map_HW, [0.5])
  np.testing.assert_array_equal(sweep.components[0], [[1, 1, 4, 4], [6, 6, 7, 7]])
  np.testing.assert_array_equal(sweep.largest_T4, [gt_4])
  np.testing.assert_array_equal(boxes.largest_component_box(map_HW >= 0.5), gt_4)
  # wsolevaluation: outer borders follow 8-connectivity too, so A + B has one contour,
  # through the pinch at (2, 2)-(3, 3) and back: A's unit square plus B's, area 2, against
  # C's 1. Its boundingRect (1, 1, 4, 4) gives [1, 1, 5, 5] (25 px): IoU 16/25, the same
  # blob, only the corner convention differs (were contours 4-connected, the largest
  # would be a 2x2 block, a three-way tie at area 1).
  pinched = [(1, 1), (2, 1), (2, 2), (3, 3), (4, 3), (4, 4), (3, 4), (3, 3), (2, 2), (1, 2)]
  assert _polygon_area(pinched) == 2.0
  assert _polygon_area([(6, 6), (7, 6), (7, 7), (6, 7)]) == 1.0
  assert _iou([1, 1, 5, 5], gt_4) == 16 / 25


# --- 6. empty mask -----------------------------------------------------------------------


def test_empty_mask_whole_image_versus_zero_box():
  # An all-zero 8x8 map (a constant map once min-max normalised). Ground truth [1, 1, 6, 6]
  # (36 px).
  map_HW = np.zeros((8, 8))
  gt_4 = [1, 1, 6, 6]
  # cam_jax: at τ = 0 every pixel passes (0 >= 0), at τ = 0.5 none does; strict, none
  # passes at either. Every case gives the whole image [0, 0, 7, 7] (64 px), and so does
  # threshold_mask, which maps a constant map to all True. IoU 36/64 = 0.5625.
  whole = [0, 0, 7, 7]
  np.testing.assert_array_equal(box_sweep.sweep_largest_boxes(map_HW, [0.0, 0.5]), [whole] * 2)
  np.testing.assert_array_equal(
      box_sweep.sweep_largest_boxes(map_HW, [0.0, 0.5], strict=True), [whole] * 2)
  np.testing.assert_array_equal(boxes.largest_component_box(np.zeros((8, 8), bool)), whole)
  np.testing.assert_array_equal(
      boxes.largest_component_box(boxes.threshold_mask(map_HW, 0.5)), whole)
  assert _iou(whole, gt_4) == 36 / 64
  # wsolevaluation: u.max() = 0, threshold int(τ * 0) = 0, 0 > 0 keeps nothing: no contour,
  # box [0, 0, 0, 0] at every τ (its own degenerate golden case). Under the +1 convention
  # that is the real pixel (0, 0), outside the truth: IoU 0.
  assert _wsol_boxes(map_HW, 0.0)[0] == [0, 0, 0, 0]
  assert _wsol_boxes(map_HW, 0.5)[0] == [0, 0, 0, 0]
  assert _iou([0, 0, 0, 0], gt_4) == 0.0
  assert _accuracy([0.0, 0.5], [[36 / 64, 36 / 64]])['max_box_acc'] == 1.0
  assert _accuracy([0.0, 0.5], [[0.0, 0.0]])['max_box_acc'] == 0.0


# --- golden metrics, in the manner of evaluation_test.py -------------------------------

# Three 10x10 maps (the whole image, so no rescaling), τ grid np.arange(0, 1, 0.25) =
# {0, 0.25, 0.5, 0.75}, ground truth boxes and masks (the masks are the boxes filled).


def _golden_maps() -> list[np.ndarray]:
  # Image 1: a 5x5 object (x, y in 2..6) at 0.5 with a 3x3 core (3..5) at 1.
  map1 = np.zeros((10, 10))
  map1[2:7, 2:7] = 0.5
  map1[3:6, 3:6] = 1.0
  # Image 2: a line at y = 1 across the image (x 0..9, 10 px) and a 3x3 blob (x 4..6,
  # y 5..7, 9 px), both at 1.
  map2 = np.zeros((10, 10))
  map2[1, :] = 1.0
  map2[5:8, 4:7] = 1.0
  # Image 3: a 6x6 object (x, y in 2..7) at 0.25 with a 2x2 core (4..5) at 1.
  map3 = np.zeros((10, 10))
  map3[2:8, 2:8] = 0.25
  map3[4:6, 4:6] = 1.0
  return [map1, map2, map3]


_GOLDEN_GT = [[2, 2, 6, 6], [4, 5, 6, 7], [1, 1, 8, 7]]  # 25, 9 and 8 x 7 = 56 px
_GOLDEN_TAUS = [0.0, 0.25, 0.5, 0.75]


def _golden_masks() -> list[np.ndarray]:
  masks = []
  for x0, y0, x1, y1 in _GOLDEN_GT:
    mask_HW = np.zeros((10, 10), bool)
    mask_HW[y0:y1 + 1, x0:x1 + 1] = True
    masks.append(mask_HW)
  return masks


def test_golden_boxes_per_threshold():
  # cam_jax's boxes, τ = 0, 0.25, 0.5, 0.75. At τ = 0 every pixel passes (s >= 0): the
  # whole image [0, 0, 9, 9] (100 px) in all three.
  # Image 1: τ 0.25 and 0.5 (0.5 >= 0.5) keep the 5x5, τ 0.75 the core.
  #   IoU vs [2, 2, 6, 6]: 25/100, 25/25, 25/25, 9/25.
  # Image 2: τ >= 0.25: the line (10 px) beats the blob (9 px): [0, 1, 9, 1], IoU 0. The
  #   components (V2): line, then blob [4, 5, 6, 7] (raster order), best IoU 1.
  #   Largest IoU vs [4, 5, 6, 7]: 9/100, 0, 0, 0; best component: 9/100, 1, 1, 1.
  # Image 3: τ 0.25 keeps the 6x6 [2, 2, 7, 7] (0.25 >= 0.25), τ 0.5 and 0.75 the core
  #   [4, 4, 5, 5]. IoU vs [1, 1, 8, 7] (56 px): 56/100, 36/56, 4/56, 4/56.
  expected_largest = [
      [[0, 0, 9, 9], [2, 2, 6, 6], [2, 2, 6, 6], [3, 3, 5, 5]],
      [[0, 0, 9, 9], [0, 1, 9, 1], [0, 1, 9, 1], [0, 1, 9, 1]],
      [[0, 0, 9, 9], [2, 2, 7, 7], [4, 4, 5, 5], [4, 4, 5, 5]],
  ]
  expected_ious = [[25 / 100, 1, 1, 9 / 25], [9 / 100, 0, 0, 0],
                   [56 / 100, 36 / 56, 4 / 56, 4 / 56]]
  expected_best = [[25 / 100, 1, 1, 9 / 25], [9 / 100, 1, 1, 1],
                   [56 / 100, 36 / 56, 4 / 56, 4 / 56]]
  for n, (map_HW, gt_4) in enumerate(zip(_golden_maps(), _GOLDEN_GT)):
    sweep = box_sweep.sweep_boxes(boxes.normalize_map(map_HW), _GOLDEN_TAUS)
    np.testing.assert_array_equal(sweep.largest_T4, expected_largest[n], err_msg=f'image {n}')
    assert [_iou(b, gt_4) for b in sweep.largest_T4] == expected_ious[n]
    best_T = [boxes.iou(c, np.array([gt_4])).max() for c in sweep.components]
    assert best_T == expected_best[n]
  np.testing.assert_array_equal(
      box_sweep.sweep_component_boxes(boxes.normalize_map(_golden_maps()[1]), [0.5]),
      [[[0, 1, 9, 1], [4, 5, 6, 7]]])


def test_golden_metrics():
  # The per-τ IoUs of test_golden_boxes_per_threshold, hits counted down each τ column:
  # MaxBoxAcc (largest box, δ 0.5): image 1 [0 1 1 0], image 2 [0 0 0 0], image 3
  #   [1 1 0 0] -> [1 2 1 0]: 2/3, at τ = 0.25.
  # MaxBoxAccV2 (best component): δ 0.3: [0 1 1 1] + [0 1 1 1] + [1 1 0 0] = [1 3 2 2] -> 3;
  #   δ 0.5: [0 1 1 0] + [0 1 1 1] + [1 1 0 0] = [1 3 2 1] -> 3; δ 0.7: [0 1 1 0] +
  #   [0 1 1 1] + [0 0 0 0] = [0 2 2 1] -> 2 (36/56 = 0.643). V2 = (3 + 3 + 2) / 9 = 8/9.
  # PxAP, pixels pooled (positives P = 25 + 9 + 56 = 90, negatives 210), per score level:
  #   1.0:  image 1 core 9 +, image 2 blob 9 + and line 10 -, image 3 core 4 + -> 22 + 10 -
  #   0.5:  image 1's 16 other object pixels, all inside its truth      -> 16 +
  #   0.25: image 3's 32 other object pixels, inside [1, 1, 8, 7]         -> 32 +
  #   0:    image 1: 75 -; image 2: 81 -; image 3: 56 - 36 = 20 + and 44 - -> 20 + 200 -
  # Precision at each level as τ falls: 22/32, 38/48, 70/80, 90/300; recall gains 22/90,
  # 16/90, 32/90, 20/90. PxAP = (22 * 22/32 + 16 * 38/48 + 32 * 70/80 + 20 * 90/300) / 90
  # = (121/8 + 38/3 + 28 + 6) / 90 = (1483/24) / 90 = 1483/2160 = 0.6866. Every grid with
  # points in each gap between the levels gives the same: here step 0.001.
  # Through the evaluation's own accumulator (grid np.arange(0, 1, 0.25) = _GOLDEN_TAUS),
  # whole-image windows: boxes stay in the 10x10 grid.
  scores = box_stage.WsolScores(0.25, 0.001, with_masks=True)
  np.testing.assert_array_equal(scores.thresholds_T, _GOLDEN_TAUS)
  for map_HW, gt_4, mask_HW in zip(_golden_maps(), _GOLDEN_GT, _golden_masks()):
    scores.add(map_HW, np.array([gt_4]), windows.whole_window((10, 10)), (10, 10), mask_HW)
  got = scores.result(scores.state())
  np.testing.assert_array_equal(scores.box_acc.counts_DT, [[1, 2, 1, 0]])
  assert got['max_box_acc'] == 2 / 3 and got['max_box_acc_threshold'] == 0.25
  np.testing.assert_array_equal(scores.box_acc_v2.counts_DT,
                                [[1, 3, 2, 2], [1, 3, 2, 1], [0, 2, 2, 1]])
  assert got['max_box_acc_v2'] == 8 / 9
  pxap = scores.pxap.result()
  assert (pxap['num_positive_pixels'], pxap['num_negative_pixels']) == (90, 210)
  assert got['pxap'] == pytest.approx(1483 / 2160, rel=1e-12)


def test_golden_metrics_by_wsolevaluations_rule():
  # The same three maps by wsolevaluation's rule. uint8 levels: 1.0 -> 255, 0.5 -> 127
  # (127.5 truncated), 0.25 -> 63 (63.75); thresholds int(255 τ) = 0, 63, 127, 191 (kept:
  # u > threshold).
  # Image 1: τ 0 and 0.25 keep the 5x5 (127 > 63): [2, 2, 7, 7] (36 px), IoU 25/36 = 0.694;
  #   τ 0.5 drops it (127 > 127 is false), τ 0.75 too: the core [3, 3, 6, 6] (16 px), IoU
  #   16/25 = 0.64.
  # Image 2: at every τ the line (area 0) and the blob (area 4): the blob [4, 5, 7, 8]
  #   (16 px), IoU 9/16 = 0.5625. The line's box, multi-contour: x + w = 10 clipped to 9,
  #   [0, 1, 9, 2], IoU 0.
  # Image 3: τ 0 keeps the 6x6 but not the zeros (0 > 0 is false): [2, 2, 8, 8] (49 px);
  #   with [1, 1, 8, 7]: intersection 7 x 6 = 42, union 49 + 56 - 42 = 63, IoU 2/3. τ >= 0.25
  #   drops the 0.25s (63 > 63 is false): the core [4, 4, 6, 6] (9 px), IoU 9/56 = 0.16.
  expected = [
      [[2, 2, 7, 7], [2, 2, 7, 7], [3, 3, 6, 6], [3, 3, 6, 6]],
      [[4, 5, 7, 8]] * 4,
      [[2, 2, 8, 8], [4, 4, 6, 6], [4, 4, 6, 6], [4, 4, 6, 6]],
  ]
  ious_NT = [[25 / 36, 25 / 36, 16 / 25, 16 / 25], [9 / 16] * 4, [2 / 3, 9 / 56, 9 / 56, 9 / 56]]
  for n, map_HW in enumerate(_golden_maps()):
    got = [_wsol_boxes(map_HW, tau)[0] for tau in _GOLDEN_TAUS]
    assert got == expected[n], f'image {n}'
    assert [_iou(b, _GOLDEN_GT[n]) for b in got] == pytest.approx(ious_NT[n], rel=1e-15)
  assert _wsol_boxes(_golden_maps()[1], 0.5)[1] == [[0, 1, 9, 2], [4, 5, 7, 8]]
  # MaxBoxAcc: hits at 0.5 [1 1 1 1] + [1 1 1 1] + [1 0 0 0] = [3 2 2 2]: 3/3 = 1 at τ = 0,
  # where cam_jax gets 2/3: its τ = 0 box is the whole image (s >= 0 holds everywhere).
  # V2 (the multi-contour best is the same box in every image): δ 0.3 and 0.5 as above,
  # 3 each; δ 0.7: 0.694, 0.64, 0.5625, 2/3 all miss -> 0. V2 = (3 + 3 + 0) / 9 = 2/3,
  # where cam_jax gets 8/9. PxAP uses neither uint8 nor `>` in wsolevaluation (float map,
  # np.histogram bins closed on the left): the same 1483/2160 (before its 224 x 224 resize).
  theirs = _accuracy(_GOLDEN_TAUS, ious_NT)
  assert theirs['max_box_acc'] == 1.0 and theirs['best_threshold_D'][1] == 0.0
  np.testing.assert_array_equal(theirs['max_box_acc_D'], [1.0, 1.0, 0.0])
  assert theirs['max_box_acc_v2'] == 2 / 3

"""wsolevaluation's box steps, golden cases worked out from its definitions (evaluation.py,
inference.py) and OpenCV's (contours through pixel centres; a hole's contour traced on
the foreground pixels around it; `contourArea` the polygon's area)."""

import numpy as np
import pytest

from cam_jax.protocols import wsolevaluation as wsol


def test_ring_with_a_hole():
  # A 7×7 ring (rows 2..8, cols 3..9) around a 3×3 hole (rows 4..6, cols 5..7), in 12×30.
  # Outer contour: boundingRect (3, 2, 7, 7) → [3, 2, 3 + 7, 2 + 7] = [3, 2, 10, 9] (one past
  # the blob: their convention), area (7 - 1)² = 36. RETR_TREE also gives the hole's
  # contour, on the ring pixels around it (rows 3..7, cols 4..8): (4, 3, 5, 5) →
  # [4, 3, 9, 8], area 16. The largest is the outer one; V2 takes both.
  scoremap = np.zeros((12, 30))
  scoremap[2:9, 3:10] = 1.0
  scoremap[4:7, 5:8] = 0.0
  (single,) = wsol.scoremap_boxes(scoremap, [0.5])
  np.testing.assert_array_equal(single, [[3, 2, 10, 9]])
  (every,) = wsol.scoremap_boxes(scoremap, [0.5], multi_contour=True)
  np.testing.assert_array_equal(every, [[3, 2, 10, 9], [4, 3, 9, 8]])


def test_largest_contour_is_by_polygon_area_not_pixel_count():
  # A 20-pixel line (row 1, cols 2..21) has contour area 0; a 3×3 square (rows 6..8,
  # cols 25..27), 9 pixels, has (3 - 1)² = 4: the square wins. Its box [25, 6, 28, 9]; the
  # line's [2, 1, 22, 2]. With W = 30 nothing is clipped at W - 1 = 29.
  scoremap = np.zeros((12, 30))
  scoremap[1, 2:22] = 0.9
  scoremap[6:9, 25:28] = 0.6
  (single,) = wsol.scoremap_boxes(scoremap, [0.3])
  np.testing.assert_array_equal(single, [[25, 6, 28, 9]])
  (every,) = wsol.scoremap_boxes(scoremap, [0.3], multi_contour=True)
  np.testing.assert_array_equal(every, [[25, 6, 28, 9], [2, 1, 22, 2]])


def test_threshold_is_strict_on_truncated_uint8():
  # u = int(255 s): 0.2 → 51, 0.21 → 53 (53.55 truncated). At τ = 0.2 the threshold is
  # int(0.2 * 255) = 51 and `u > 51` drops the 0.2 pixels; only the 0.21 one stays.
  # A blob touching the right border is clipped: x + w = 30 → 29.
  scoremap = np.zeros((4, 30))
  scoremap[1, 0:3] = 0.2
  scoremap[2, 27:30] = 0.21
  scoremap[0, 0] = 1.0
  (boxes,) = wsol.scoremap_boxes(scoremap, [0.2])
  np.testing.assert_array_equal(boxes, [[27, 2, 29, 3]])


def test_empty_map_gives_their_zero_box():
  # max 0: threshold int(τ · 0) = 0 and `u > 0` keeps nothing: no contour → [0, 0, 0, 0].
  boxes = wsol.scoremap_boxes(np.zeros((5, 5)), wsol.thresholds(0.5))
  assert [b.tolist() for b in boxes] == [[[0, 0, 0, 0]], [[0, 0, 0, 0]]]


def test_normalize_resize_and_boxes_helpers():
  np.testing.assert_array_equal(wsol.normalize_scoremap(np.full((3, 3), 2.0)), np.zeros((3, 3)))
  nan = np.ones((2, 2))
  nan[0, 0] = np.nan
  np.testing.assert_array_equal(wsol.normalize_scoremap(nan), np.zeros((2, 2)))
  np.testing.assert_allclose(wsol.normalize_scoremap(np.array([[1.0, 3.0], [2.0, 5.0]])),
                             [[0, 0.5], [0.25, 1]])
  resized = wsol.resize_cam(np.full((7, 7), 0.25, np.float32))
  assert resized.shape == (224, 224) and resized.dtype == np.float64
  np.testing.assert_allclose(resized, 0.25)
  # (x0, y0, x1, y1) of a 500×375 image to 224: 100·224/500 = 44.8 → 44, etc.
  assert wsol.resize_box((100, 50, 400, 300), (500, 375)) == (44, 29, 179, 179)
  # IoU with +1 areas: [0, 0, 9, 9] (100) and [5, 5, 14, 14] (100) overlap 5 × 5 = 25:
  # 25 / 175. A degenerate pair (negative union) gives 0.
  ious = wsol.multiple_iou(np.array([[0, 0, 9, 9], [0, 0, -5, -5]]), np.array([[5, 5, 14, 14]]))
  np.testing.assert_allclose(ious, [[25 / 175], [0.0]])
  assert wsol.thresholds(0.25).tolist() == [0.0, 0.25, 0.5, 0.75]
  np.testing.assert_allclose(
      wsol.best_ious([np.array([[0, 0, 9, 9]]), np.array([[0, 0, 0, 0], [5, 5, 14, 14]])],
                     np.array([[5, 5, 14, 14]])), [25 / 175, 1.0])


def test_bad_maps_are_refused():
  with pytest.raises(ValueError, match=r'in \[0, 1\]'):
    wsol.scoremap_boxes(np.full((3, 3), 1.5), [0.5])
  with pytest.raises(ValueError, match='NaN'):
    wsol.scoremap_boxes(np.full((3, 3), np.nan), [0.5])
  with pytest.raises(TypeError, match='float'):
    wsol.scoremap_boxes(np.zeros((3, 3), np.uint8), [0.5])

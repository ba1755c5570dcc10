"""Golden cases for cam_jax.boxes, worked out by hand in the comments.

Boxes are (x0, y0, x1, y1), inclusive corners, x the column, y the row.
"""

import numpy as np
import pytest
from scipy import ndimage

from cam_jax import boxes


def _mask(rows):
  """A bool mask from strings, '#' set and '.' clear: easier to read than indices."""
  return np.array([[c == '#' for c in row] for row in rows])


# --- normalize_map / threshold_mask ----------------------------------------------------


def test_normalize_map_min_max_float32():
  cam_HW = np.array([[10.0, 15.0], [20.0, 12.0]])
  # (v - 10) / (20 - 10): 0, 0.5, 1, 0.2
  norm_HW = boxes.normalize_map(cam_HW)
  assert norm_HW.dtype == np.float32
  np.testing.assert_array_equal(norm_HW, np.float32([[0.0, 0.5], [1.0, 0.2]]))


def test_normalize_map_constant_is_zeros_not_nan():
  np.testing.assert_array_equal(boxes.normalize_map(np.full((3, 4), 7.0)), np.zeros((3, 4)))


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_normalize_map_rejects_non_finite(bad):
  with pytest.raises(ValueError, match='non-finite'):
    boxes.normalize_map(np.array([[0.0, bad], [1.0, 2.0]]))


def test_normalize_map_rejects_non_2d():
  with pytest.raises(ValueError, match='cam_HW'):
    boxes.normalize_map(np.zeros((2, 3, 4)))


def test_threshold_is_relative_to_min_max_and_non_strict():
  # Values 10..20: normalised (v - 10) / 10, so threshold 0.2 keeps v >= 12. The 12
  # is exactly at the threshold and passes (>=); 11.99 does not; a threshold of
  # 0.2 * max = 4 would have kept every pixel.
  cam_HW = np.array([[10.0, 11.99, 12.0, 20.0]])
  np.testing.assert_array_equal(boxes.threshold_mask(cam_HW, 0.2), [[False, False, True, True]])


def test_threshold_mask_equals_normalize_then_compare():
  # The contract a threshold sweep over normalize_map relies on.
  cam_HW = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(40, 50)), 3)
  norm_HW = boxes.normalize_map(cam_HW)
  for threshold in (0.0, 0.13, 0.2, 0.5, 0.99, 1.0):
    np.testing.assert_array_equal(boxes.threshold_mask(cam_HW, threshold), norm_HW >= threshold)


def test_threshold_mask_constant_map_is_whole_image():
  np.testing.assert_array_equal(boxes.threshold_mask(np.full((2, 3), 5.0), 0.2), np.ones((2, 3)))


# --- largest_component_box -------------------------------------------------------------


def test_larger_component_wins():
  mask_HW = _mask([
      '##......',
      '##......',
      '....###.',
      '....###.',
      '....###.',
  ])
  # 4 pixels at x 0..1, y 0..1 against 9 pixels at x 4..6, y 2..4.
  np.testing.assert_array_equal(boxes.largest_component_box(mask_HW), [4, 2, 6, 4])


def test_equal_size_tie_goes_to_first_in_raster_order():
  mask_HW = _mask([
      '.....##',
      '.....##',
      '#......',
      '##.....',
      '#......',
  ])
  # Both have 4 pixels. The right one's first pixel (row 0) comes first in a
  # row-major scan, though the left one reaches further left.
  np.testing.assert_array_equal(boxes.largest_component_box(mask_HW), [5, 0, 6, 1])


def test_tie_with_arms_that_merge_late():
  mask_HW = _mask([
      '.#.#..',
      '.#.#..',
      '.###..',
      '......',
      '######',
      '#.....',
  ])
  # U: 3 + 3 + 1 (row 2, x 2) = 7 pixels, x 1..3, y 0..2; its arms join only in row 2.
  # L: 6 + 1 = 7 pixels. Tie: the U starts first (row 0), so its box wins.
  np.testing.assert_array_equal(boxes.largest_component_box(mask_HW), [1, 0, 3, 2])


def _reference_box(mask_HW):
  """Flood fill in plain Python: components in raster order of their first pixel."""
  height, width = mask_HW.shape
  seen = np.zeros_like(mask_HW)
  best_size, best_box = 0, None
  for y in range(height):
    for x in range(width):
      if not mask_HW[y, x] or seen[y, x]:
        continue
      seen[y, x] = True
      stack, pixels = [(y, x)], []
      while stack:
        cy, cx = stack.pop()
        pixels.append((cy, cx))
        for dy in (-1, 0, 1):
          for dx in (-1, 0, 1):
            ny, nx = cy + dy, cx + dx
            if 0 <= ny < height and 0 <= nx < width and mask_HW[ny, nx] and not seen[ny, nx]:
              seen[ny, nx] = True
              stack.append((ny, nx))
      if len(pixels) > best_size:  # strict: an equal later component does not replace
        ys, xs = zip(*pixels)
        best_size, best_box = len(pixels), [min(xs), min(ys), max(xs), max(ys)]
  return best_box


def test_matches_plain_flood_fill_on_random_masks():
  rng = np.random.default_rng(0)
  for _ in range(200):
    shape = tuple(rng.integers(1, 9, size=2))
    mask_HW = rng.random(shape) < rng.uniform(0.2, 0.6)
    if not mask_HW.any():
      continue
    np.testing.assert_array_equal(boxes.largest_component_box(mask_HW), _reference_box(mask_HW),
                                  err_msg=str(mask_HW.astype(int)))


def test_diagonal_neighbours_are_one_component():
  mask_HW = _mask([
      '#.....',
      '.#....',
      '..#...',
      '....##',
  ])
  # The diagonal (0,0), (1,1), (2,2) is one 8-connected component of 3 pixels,
  # larger than the 2-pixel bar, so the box is x 0..2, y 0..2.
  np.testing.assert_array_equal(boxes.largest_component_box(mask_HW), [0, 0, 2, 2])
  # Under 4-connectivity the diagonal falls apart into three 1-pixel components and
  # the bar (x 4..5, y 3) would win.
  _, num4 = ndimage.label(mask_HW)
  assert num4 == 4


def test_component_touching_every_border():
  mask_HW = _mask([
      '..#..',
      '.###.',
      '#####',
      '.###.',
      '..#..',
  ])
  np.testing.assert_array_equal(boxes.largest_component_box(mask_HW), [0, 0, 4, 4])


def test_empty_mask_gives_whole_image():
  # W = 7, H = 3: (0, 0, 6, 2).
  np.testing.assert_array_equal(boxes.largest_component_box(np.zeros((3, 7), bool)),
                                [0, 0, 6, 2])


def test_largest_component_box_dtype_and_shape():
  box_4 = boxes.largest_component_box(_mask(['.#', '..']))
  assert box_4.dtype == np.int32 and box_4.shape == (4,)


# --- paper_box -------------------------------------------------------------------------


def test_paper_box_constant_map_is_whole_image():
  np.testing.assert_array_equal(boxes.paper_box(np.full((4, 6), 3.0)), [0, 0, 5, 3])


def test_paper_box_all_zero_map_is_whole_image():
  np.testing.assert_array_equal(boxes.paper_box(np.zeros((4, 6))), [0, 0, 5, 3])


def test_paper_box_single_hot_pixel():
  cam_HW = np.zeros((5, 8))
  cam_HW[3, 6] = 1.0  # row 3, column 6
  box_4 = boxes.paper_box(cam_HW)
  np.testing.assert_array_equal(box_4, [6, 3, 6, 3])
  # Area under the +1 convention: (6 - 6 + 1) * (3 - 3 + 1) = 1.
  assert (box_4[2] - box_4[0] + 1) * (box_4[3] - box_4[1] + 1) == 1


def test_paper_box_threshold_picks_blob():
  cam_HW = np.zeros((6, 6))
  cam_HW[1:3, 1:4] = 1.0   # strong blob, 6 pixels: x 1..3, y 1..2
  cam_HW[4, 4] = 0.5       # weak pixel: kept at 0.2, dropped at 0.6
  cam_HW[5, 0] = -1.0      # a negative minimum must not move the threshold
  # The threshold is a fraction of the max (1.0): 0.2 keeps the blob (6 px) and the weak
  # pixel (1 px), not the background at 0; the blob is the larger component.
  np.testing.assert_array_equal(boxes.paper_box(cam_HW, 0.2), [1, 1, 3, 2])
  # At 0.6 only the blob passes.
  np.testing.assert_array_equal(boxes.paper_box(cam_HW, 0.6), [1, 1, 3, 2])
  # At 0.5 the weak pixel passes too (non-strict: 0.5 >= 0.5 * 1.0), as its own component.
  np.testing.assert_array_equal(boxes.paper_mask(cam_HW, 0.5).sum(), 7)
  # Min-max normalisation (wsolevaluation's) would map the background to 0.5 and let
  # it through at 0.2: one component covering the whole image.
  np.testing.assert_array_equal(
      boxes.largest_component_box(boxes.threshold_mask(cam_HW, 0.2)), [0, 0, 5, 5])


def test_paper_mask_negative_max_passes_nowhere_and_box_is_whole_image():
  cam_HW = np.array([[-3.0, -1.0], [-2.0, -5.0]])
  # 0.2 * max = -0.2, and no pixel is >= -0.2.
  assert not boxes.paper_mask(cam_HW, 0.2).any()
  np.testing.assert_array_equal(boxes.paper_box(cam_HW), [0, 0, 1, 1])


def test_paper_mask_rejects_nan():
  with pytest.raises(ValueError, match='non-finite'):
    boxes.paper_mask(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_paper_boxes_stacks_and_accepts_ragged_list():
  a_HW = np.zeros((4, 4)); a_HW[0, 0] = 1
  b_HW = np.zeros((3, 5)); b_HW[2, 4] = 1
  np.testing.assert_array_equal(boxes.paper_boxes([a_HW, b_HW]), [[0, 0, 0, 0], [4, 2, 4, 2]])
  out = boxes.paper_boxes(np.zeros((0, 4, 4)))
  assert out.shape == (0, 4) and out.dtype == np.int32


# --- iou -------------------------------------------------------------------------------


def test_iou_identical_is_one():
  np.testing.assert_array_equal(boxes.iou([[3, 4, 10, 12]], [[3, 4, 10, 12]]), [[1.0]])


def test_iou_disjoint_is_zero():
  # x ranges 0..9 and 10..19 share no column.
  np.testing.assert_array_equal(boxes.iou([[0, 0, 9, 9]], [[10, 0, 19, 9]]), [[0.0]])


def test_iou_touching_edges_share_a_column():
  # Column 9 belongs to both: intersection 1 * 10 = 10; union 100 + 100 - 10 = 190.
  np.testing.assert_allclose(boxes.iou([[0, 0, 9, 9]], [[9, 0, 18, 9]]), [[10 / 190]])


def test_iou_nested():
  # Inner 5 x 5 = 25 pixels inside the outer 10 x 10 = 100: 25 / 100.
  np.testing.assert_allclose(boxes.iou([[0, 0, 9, 9]], [[2, 3, 6, 7]]), [[0.25]])


def test_iou_half_overlap():
  # (0, 0, 9, 9) and (5, 0, 14, 9): columns 5..9 shared, 5 * 10 = 50;
  # union 100 + 100 - 50 = 150: IoU 1/3 (not 1/2: half of each box overlaps).
  np.testing.assert_allclose(boxes.iou([[0, 0, 9, 9]], [[5, 0, 14, 9]]), [[1 / 3]])
  # Shifted half in both directions: (5, 5, 14, 14): 5 * 5 = 25, 175: 1/7.
  np.testing.assert_allclose(boxes.iou([[0, 0, 9, 9]], [[5, 5, 14, 14]]), [[1 / 7]])


def test_iou_pairwise_shape_and_values():
  a_N4 = [[0, 0, 9, 9], [5, 0, 14, 9]]
  b_M4 = [[0, 0, 9, 9], [5, 5, 14, 14], [100, 100, 101, 101]]
  # Row 0 as above: 1, 1/7, 0. Row 1: against (0,0,9,9) 1/3; against (5,5,14,14)
  # 10 * 5 = 50 of 100 + 100 - 50: 1/3; disjoint: 0.
  np.testing.assert_allclose(boxes.iou(a_N4, b_M4),
                             [[1, 1 / 7, 0], [1 / 3, 1 / 3, 0]])
  assert boxes.iou(np.zeros((0, 4)), b_M4).shape == (0, 3)


def test_iou_rejects_bad_shapes_naming_the_argument():
  with pytest.raises(ValueError, match=r'boxes_a_N4 .*\(4,\)'):
    boxes.iou(np.array([0, 0, 1, 1]), [[0, 0, 1, 1]])
  with pytest.raises(ValueError, match=r'boxes_b_M4 .*\(2, 3\)'):
    boxes.iou([[0, 0, 1, 1]], np.zeros((2, 3)))


def test_iou_rejects_reversed_corners_naming_the_row():
  with pytest.raises(ValueError, match=r'boxes_b_M4\[1\]'):
    boxes.iou([[0, 0, 1, 1]], [[0, 0, 1, 1], [5, 0, 4, 3]])   # x0 > x1
  with pytest.raises(ValueError, match=r'boxes_a_N4\[0\]'):
    boxes.iou([[0, 6, 1, 5]], [[0, 0, 1, 1]])                 # y0 > y1


def test_max_iou():
  gt_M4 = [[20, 20, 29, 29], [5, 0, 14, 9]]
  # Against (0, 0, 9, 9): 0 and 1/3.
  assert boxes.max_iou([0, 0, 9, 9], gt_M4) == pytest.approx(1 / 3)
  assert boxes.max_iou([0, 0, 9, 9], np.zeros((0, 4))) == 0.0
  with pytest.raises(ValueError, match='box_4'):
    boxes.max_iou([[0, 0, 9, 9]], gt_M4)


# --- center_box ------------------------------------------------------------------------


def test_center_box_even_in_even():
  # H = W = 10, box 4 x 6 (h x w): margins (10 - 4) / 2 = 3 rows, (10 - 6) / 2 = 2 columns.
  np.testing.assert_array_equal(boxes.center_box((10, 10), (4, 6)), [2, 3, 7, 6])


def test_center_box_odd_leftover_puts_extra_pixel_bottom_right():
  # H = 10, h = 3: leftover 7, top margin 3, bottom 4: rows 3..5.
  # W = 9, w = 4: leftover 5, left margin 2, right 3: columns 2..5.
  np.testing.assert_array_equal(boxes.center_box((10, 9), (3, 4)), [2, 3, 5, 5])


def test_center_box_odd_in_odd_is_exact():
  # H = W = 7, box 3 x 3: rows/columns 2..4, centre pixel 3.
  np.testing.assert_array_equal(boxes.center_box((7, 7), (3, 3)), [2, 2, 4, 4])


def test_center_box_rounds_half_up_and_clips():
  # 2.5 rounds to 3 (not to even 2): rows 2..4 of 7.
  np.testing.assert_array_equal(boxes.center_box((7, 7), (2.5, 2.5)), [2, 2, 4, 4])
  # A 12 x 20 box in a 10 x 8 image: (10 - 12) // 2 = -1 -> rows -1..10 -> 0..9;
  # (8 - 20) // 2 = -6 -> columns -6..13 -> 0..7.
  np.testing.assert_array_equal(boxes.center_box((10, 8), (12, 20)), [0, 0, 7, 9])

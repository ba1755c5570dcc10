"""The released box generator (zhoubolei/CAM bboxgenerator/dt_box.cpp, dt.c), step by step.

Every expected value is worked out by hand in the comments; the last test is the
release's own example, whose output the repository ships (fixtures/heatmap_6.txt).
"""

import os

import numpy as np
import pytest
from PIL import Image

from cam_jax.protocols import cam_official

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


def test_distance_transform_scaling():
  # A 3×5 block in a 5×7 image. Its outer pixels are 1 from the background, the three
  # middle pixels of its middle row 2 (two rows or two columns away). max 2, min 0:
  # scale 255 / 2 = 127.5; 1 → (int)(127.5 + 0.5) = 128, 2 → 255.
  mask = np.zeros((5, 7), bool)
  mask[1:4, 1:6] = True
  want = np.zeros((5, 7), np.uint8)
  want[1:4, 1:6] = 128
  want[2, 2:5] = 255
  np.testing.assert_array_equal(cam_official.dt_scaled(mask), want)
  # Every distance equal: dt.c returns before writing, the mask stays as it was.
  np.testing.assert_array_equal(cam_official.dt_scaled(np.ones((3, 4), bool)),
                                np.full((3, 4), 255, np.uint8))
  np.testing.assert_array_equal(cam_official.dt_scaled(np.zeros((3, 4), bool)),
                                np.zeros((3, 4), np.uint8))


def test_the_cut_above_10_drops_thin_parts():
  # A 53×53 square (rows 2..54, cols 3..55) and one lone pixel, in a 60×80 map. The
  # square's centre is 27 from the background: scale 255 / 27 = 9.44. Distance 1 (the
  # square's outer ring, the lone pixel) → (int)(9.44 + 0.5) = 9, not > 10: gone;
  # distance 2 → 19: kept. What is left is the 51×51 square at x = 4, y = 3.
  heat = np.zeros((60, 80), np.uint8)
  heat[2:55, 3:56] = 200
  heat[58, 70] = 200
  # The three thresholds (all below 200) give the same rectangle three times; the merge
  # erases the second, then its `++j` skips the third, which stays (test_merge_skip).
  np.testing.assert_array_equal(cam_official.dt_boxes(heat), [[4, 3, 51, 51]] * 2)


def test_hole_contours_and_the_five_pixel_clip():
  # A ring: the square rows/cols 3..15 minus the hole rows/cols 7..11, in 20×20.
  # Its thickest part is 2.83 from the background (a corner, against the hole's corner):
  # every ring pixel scales to at least (int)(1 * 90.2 + 0.5) = 90 > 10, so all stay.
  # RETR_CCOMP gives the outer contour, boundingRect (3, 3, 13, 13), and the hole's,
  # traced on the ring pixels around it: rows/cols 6..12, (6, 6, 7, 7).
  # The clip: width <= W - x - 5 = 20 - 3 - 5 = 12, so the outer one becomes
  # (3, 3, 12, 12); the hole's 7 <= 20 - 6 - 5 = 9 stays.
  heat = np.zeros((20, 20), np.uint8)
  heat[3:16, 3:16] = 200
  heat[7:12, 7:12] = 0
  # Ranked by area: outer 144 (three times), hole 49 (three times). Merging: the
  # overlap of outer and hole is 7 × 7 = 49, not above int(144 * 0.5) = 72, so both kinds
  # survive; within each kind the second copy is erased and the third skipped.
  np.testing.assert_array_equal(cam_official.dt_boxes(heat),
                                [[3, 3, 12, 12], [3, 3, 12, 12], [6, 6, 7, 7], [6, 6, 7, 7]])


def test_clip_rect_as_limit_writes_it():
  # x <= W - 5 = 15; width limited to [0, W - x - 5] with the unclipped x = 17: the upper
  # limit -2 is below the lower one, and LIMIT returns it: a negative width, as released.
  assert cam_official.clip_rect((17, 5, 3, 4), 20, 20) == (15, 5, -2, 4)
  assert cam_official.clip_rect((0, 0, 20, 20), 20, 20) == (0, 0, 15, 15)
  assert cam_official.clip_rect((2, 3, 4, 5), 20, 20) == (2, 3, 4, 5)


def test_merge_order_and_skip():
  a = (0, 0, 10, 10)  # area 100
  b = (1, 1, 9, 9)  # overlap with a 81 > int(100 * 0.5) = 50: erased by a
  c = (2, 2, 8, 8)  # overlap with a 64 > 50, but it moves into b's place after the erase
  #                   and `++j` skips it; then i = 1 is c itself, nothing after it.
  d = (30, 30, 5, 5)  # apart from all
  assert cam_official.merge_rects([a, b, c, d]) == [a, c, d]
  # The overlap must exceed half the *larger* area, truncated: 50 is not > 50.
  assert not cam_official.big_overlap((0, 0, 10, 10), (0, 5, 10, 5))
  assert cam_official.big_overlap((0, 0, 10, 10), (0, 4, 10, 6))


def test_std_sort_order_of_equal_areas():
  # libstdc++'s std::sort: up to 16 elements, an insertion sort (stable); beyond, an
  # introsort that reorders equal elements (the released ranking is not stable). The
  # emulation agreed with g++ 12's std::sort on 403 random inputs of 1 to 1000 elements
  # (and its heap-sort fallback with std::partial_sort on 300), checked by hand in the
  # session that wrote it; here one 17-element golden case.
  items = [(i % 2 == 0, i) for i in range(17)]
  cam_official.libstdcxx_sort(items, lambda a, b: a[0] > b[0])
  assert [i for _, i in items] == GOLDEN_17


# std::sort of 17 (area, id) pairs with area 1 for even ids, 0 for odd, comp `a > b` on
# area, as a 10-line C++ program built with g++ 12.2 (libstdc++) printed the ids.
GOLDEN_17 = [8, 16, 14, 12, 10, 0, 6, 4, 2, 7, 5, 9, 11, 3, 13, 15, 1]


def test_release_example_heatmap_6():
  heat = np.asarray(Image.open(os.path.join(FIXTURES, 'heatmap_6.jpg')).convert('L'))
  with open(os.path.join(FIXTURES, 'heatmap_6.txt'), encoding='utf-8') as f:
    released = [int(v) for v in f.read().split()]
  assert cam_official.dt_boxes(heat).reshape(-1).tolist() == released


def test_bad_thresholds_are_refused():
  with pytest.raises(ValueError, match='0 < t0 < t1 < t2 < 255'):
    cam_official.dt_boxes(np.zeros((8, 8), np.uint8), (100, 20, 110))
  with pytest.raises(ValueError, match='uint8'):
    cam_official.dt_boxes(np.zeros((8, 8), np.float32))


# ---------------------------------------------------------------------------
# The heat map: MATLAB's imresize, the ten crops, the merge
# ---------------------------------------------------------------------------

def test_imresize_weights_worked_by_hand():
  # Enlarging 2 → 4 (scale 2, no antialiasing): output 1 sits at u = 1/2 + (1 - 1/2)/2
  # = 0.75 (1-based input coordinates). Keys' cubic (a = -0.5) at u - j for j = -1..2:
  # k(1.75) = -0.0234375, k(0.75) = 0.2265625, k(-0.25) = 0.8671875, k(-1.25) = -0.0703125.
  # Clamping sends j = -1 and j = 0 to input 1: input 1 gets -0.0234375 + 0.2265625 +
  # 0.8671875 = 1.0703125, input 2 gets -0.0703125.
  np.testing.assert_allclose(cam_official.imresize_matrix(2, 4)[0], [1.0703125, -0.0703125])
  # Both axes: 1.0703125² · 1 - 1.0703125 · 0.0703125 · (2 + 3) + 0.0703125² · 4.
  corner = 1.0703125 ** 2 - 1.0703125 * 0.0703125 * 5 + 0.0703125 ** 2 * 4
  assert cam_official.imresize(np.array([[1.0, 2.0], [3.0, 4.0]]), (4, 4))[0, 0] == corner
  # Shrinking 4 → 2 (scale 1/2, antialiased): the kernel is k(x / 2) / 2, 8 wide; output 1
  # at u = 2 - 0.5 = 1.5 takes j = -2..5 with weights -0.01171875, -0.03515625, 0.11328125,
  # 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875; clamped to 1..4, they
  # add up per input to:
  np.testing.assert_allclose(cam_official.imresize_matrix(4, 2)[0],
                             [0.5, 0.43359375, 0.11328125, -0.046875])


def test_imresize_reproduces_what_matlab_prints():
  # MATLAB's own output, as printed (4 decimals), for imresize(M, [1 10]) (bicubic, the
  # default) and 'bilinear' of M = [0 0 1 1 0] (stackoverflow.com/questions/17380407),
  # and imresize([100 50 0], [1 5], 'bilinear') (dsp.stackexchange.com/questions/14560).
  # The last bicubic value, -0.0703, is the end-point replication's: mirroring the
  # indices instead ([1:n, n:-1:1]) gives -0.0938.
  m = np.array([[0.0, 0, 1, 1, 0]])
  np.testing.assert_array_equal(np.round(cam_official.imresize(m, (1, 10)), 4)[0], [
      0, -0.0234, -0.0703, 0.2031, 0.7969, 1.0938, 1.0938, 0.7969, 0.2031, -0.0703])
  np.testing.assert_array_equal(np.round(cam_official.imresize(m, (1, 10), 'bilinear'), 4)[0],
                                [0, 0, 0, 0.25, 0.75, 1, 1, 0.75, 0.25, 0])
  np.testing.assert_allclose(
      cam_official.imresize(np.array([[100.0, 50, 0]]), (1, 5), 'bilinear')[0],
      [100, 80, 50, 20, 0], atol=1e-12)


def test_uint8_conversion_as_matlab():
  # MATLAB's uint8 conversion rounds half away from zero and saturates.
  np.testing.assert_array_equal(cam_official.im2uint8(np.array([0.5 / 255, 2.5 / 255, -0.2,
                                                                1.3])), [1, 3, 0, 255])


def test_ten_crops_and_their_merge():
  # matcaffe's order: x in (0, 32), y in (0, 32) for 224 in 256; the centre at
  # floor((32 + 1) / 2) = 16; then the same five mirrored.
  assert cam_official.ten_crop_offsets(224)[:5] == [
      (0, 0, False), (0, 32, False), (32, 0, False), (32, 32, False), (16, 16, False)]
  assert cam_official.ten_crop_offsets(227)[4] == (15, 15, False)
  # 2×2 crops of a 4×4 square: corners at 0 and 2, the centre at (3 // 2) = 1.
  square = np.arange(16.0).reshape(4, 4)
  crops = cam_official.ten_crops(square[..., None], 2)[..., 0]
  np.testing.assert_array_equal(crops[1], [[8, 9], [12, 13]])  # x = 0, y = 2
  np.testing.assert_array_equal(crops[6], [[9, 8], [13, 12]])  # the same, mirrored
  # Merging maps that are 1 everywhere counts how many crops cover each pixel: twice
  # (a corner crop and its mirror) everywhere, four times in the centre 2×2.
  np.testing.assert_array_equal(cam_official.merge_ten_crops(np.ones((10, 2, 2)), 4),
                                [[2, 2, 2, 2], [2, 4, 4, 2], [2, 4, 4, 2], [2, 2, 2, 2]])
  # A mirrored crop's map is mirrored back: its left column lands on the right.
  maps = np.zeros((10, 2, 2))
  maps[5] = [[0, -3], [0, 0]]  # crop 6 (mirrored top-left): abs, then back at (0, 0)
  merged = cam_official.merge_ten_crops(maps, 4)
  assert merged[0, 0] == 3 and merged.sum() == 3


def test_heat_map_is_8_bit_at_the_original_size():
  cams = np.ones((10, 7, 7))
  heat = cam_official.heat_map(cams, (300, 200), 224)
  assert heat.shape == (300, 200) and heat.dtype == np.uint8
  # The centre is covered by all ten crops, the border by two: about 255 · 2 / 10 = 51
  # there. The maximum (255) is the bicubic overshoot at a coverage step, a little above
  # the centre's plateau.
  assert heat.max() == 255 and heat[150, 100] >= 240 and 40 <= heat[0, 0] <= 60
  jpeg = cam_official.heat_map(cams, (300, 200), 224, jpeg_quality=75)
  assert 0 < np.abs(jpeg.astype(int) - heat).mean() < 1  # lossy, a little at the steps


def test_heat_map_in_single_precision():
  rng = np.random.default_rng(0)
  cams = rng.random((10, 7, 7)).astype(np.float32)
  # The arithmetic is float32 throughout: the merged frame and both resizes.
  assert cam_official.imresize(cams[0], (14, 14), dtype=np.float32).dtype == np.float32
  assert cam_official.merge_ten_crops(cams[:, :2, :2].astype(np.float32), 4).dtype == np.float32
  single = cam_official.heat_map(cams, (90, 120), 224, dtype=np.float32)
  double = cam_official.heat_map(cams, (90, 120), 224)
  assert single.dtype == np.uint8 and np.abs(single.astype(int) - double).max() <= 1


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------

def test_boxes_become_their_corners():
  # (x, y, w, h) → (x, y, x + w, y + h); the negative width of the clip swaps the corners.
  np.testing.assert_array_equal(cam_official.corner_boxes([[41, 145, 362, 202],
                                                           [15, 5, -2, 4]]),
                                [[41, 145, 403, 347], [13, 5, 15, 9]])
  first, second = cam_official.first_two(np.array([[1, 2, 3, 4]]), (10, 20))
  np.testing.assert_array_equal(first, [1, 2, 4, 6])
  np.testing.assert_array_equal(second, first)  # theirs would stop with an error
  first, _ = cam_official.first_two(np.zeros((0, 4)), (10, 20))
  np.testing.assert_array_equal(first, [0, 0, 19, 9])  # no box: the whole image


def test_top_k_and_the_combined_heuristic():
  gt = np.array([[10, 10, 29, 29]])  # 20×20
  good = np.array([10, 10, 29, 29])
  half = np.array([10, 10, 29, 19])  # 20×10 inside: IoU 200 / 400 = 0.5, counted correct
  bad = np.array([10, 10, 29, 18])  # 20×9: 180 / 400 = 0.45
  assert cam_official.guess_correct(3, 3, half, gt)
  assert not cam_official.guess_correct(3, 3, bad, gt)
  assert not cam_official.guess_correct(3, 4, good, gt)  # another class
  # Table 2: the first box of each of the top 5 classes; the label (3) is second.
  guesses = [(7, good), (3, good), (1, bad), (2, bad), (5, bad)]
  np.testing.assert_array_equal(cam_official.localization_errors(guesses, 3, gt),
                                [1, 0, 0, 0, 0])
  # Table 3: top-1 first, top-1 second, top-2 first, top-2 second, top-3 first.
  combined = cam_official.combined_guesses([3, 7, 1, 2, 5], [bad, good, good, good, good],
                                           [half, good, good, good, good])
  assert [c for c, _ in combined] == [3, 3, 7, 7, 1]
  np.testing.assert_array_equal(cam_official.localization_errors(combined, 3, gt),
                                [1, 0, 0, 0, 0])

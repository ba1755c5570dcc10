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

"""Windows of the original image, and boxes and maps through them, by hand and against jax."""

import jax
import numpy as np
import pytest

from cam_jax import windows


def test_center_crop_window_by_hand():
  # 300 wide, 200 high; shorter side 200 -> 256: scale 1.28; a 224 crop covers
  # 224 / 1.28 = 175 original pixels, centred at (150, 100).
  np.testing.assert_allclose(windows.center_crop_window((200, 300), 224, 256),
                             [62.5, 12.5, 237.5, 187.5])
  with pytest.raises(ValueError, match='at least 224'):
    windows.center_crop_window((200, 300), 224, 200)


def test_random_resized_crop_windows_fit_and_follow_the_ranges():
  rng = np.random.default_rng(0)
  for _ in range(200):
    x0, y0, x1, y1 = windows.random_resized_crop_window((60, 90), rng, 32)
    assert 0 <= x0 < x1 <= 90 and 0 <= y0 < y1 <= 60
    area = (x1 - x0) * (y1 - y0) / (60 * 90)
    assert 0.06 <= area <= 1.0  # 0.08..1 up to rounding the sides
  # No 3/4..4/3 crop of >= 8 % fits a 2-pixel-high strip: the centre-crop fallback,
  # side = 32 / (32 + 32) * 2 = 1.
  np.testing.assert_array_equal(
      windows.random_resized_crop_window((2, 400), rng, 32, area_range=(0.5, 1.0)),
      [200, 1, 201, 2])


def test_boxes_through_a_window_by_hand():
  # A 48-wide, 36-high image resized whole to 12×12: 4 original columns and 3 rows per
  # input pixel. Box columns 8..19 (edges 8, 20) -> input edges 2, 5 -> columns 2..4;
  # rows 6..14 (edges 6, 15) -> 2, 5 -> rows 2..4.
  window = windows.whole_window((36, 48))
  np.testing.assert_array_equal(windows.boxes_to_input([[8, 6, 19, 14]], window, 12),
                                [[2, 2, 4, 4]])
  # And back: input columns 2..4 -> edges 8, 20 -> 8..19; rows edges 6, 15 -> 6..14.
  np.testing.assert_array_equal(
      windows.boxes_to_original([[2, 2, 4, 4]], window, 12, (36, 48)), [[8, 6, 19, 14]])
  # A box past the window is clipped to the input.
  np.testing.assert_array_equal(
      windows.boxes_to_input([[0, 0, 47, 35]], np.array([12, 9, 36, 27]), 12),
      [[0, 0, 11, 11]])


# --- maps through a window ------------------------------------------------------------

@pytest.mark.parametrize('map_hw,orig_hw', [((14, 14), (375, 500)), ((7, 5), (20, 33)),
                                            ((32, 32), (13, 9)), ((6, 6), (6, 6))])
def test_map_on_the_whole_image_equals_jax_image_resize(map_hw, orig_hw):
  # Up- and down-sampling: bilinear, half-pixel centres, no antialiasing, as
  # cam.class_activation_maps resizes on the device.
  rng = np.random.default_rng(0)
  cam = rng.normal(size=map_hw).astype(np.float32)
  got, offset = windows.map_to_original(cam, windows.whole_window(orig_hw), orig_hw)
  want = jax.image.resize(cam, orig_hw, 'bilinear', antialias=False)
  assert offset == (0, 0) and got.shape == orig_hw and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_map_through_a_centre_crop_by_hand():
  # A 2×2 map that covered the window x 3..7, y 1..5 (4×4 original pixels: 2 per cell)
  # of a 6-high, 10-wide image. Pixel centres inside the window: x 3..6, y 1..4 (x = 7's
  # centre 7.5 is past 7). Column x sits at map coordinate (x + 0.5 - 3) / 2 - 0.5:
  # x 3 -> -0.25 (clamped to 0), 4 -> 0.25, 5 -> 0.75, 6 -> 1.25 (clamped to 1). So with
  # map columns [0, 4], the row reads 0, 1, 3, 4; rows likewise, with map rows [0, 8]
  # added: 0, 2, 6, 8.
  cam = np.array([[0, 4], [8, 12]], np.float32)
  got, offset = windows.map_to_original(cam, np.array([3, 1, 7, 5]), (6, 10))
  assert offset == (3, 1)
  np.testing.assert_allclose(got, np.array([0, 2, 6, 8])[:, None] + [0, 1, 3, 4])


def test_map_through_a_window_past_the_image_is_clipped():
  # The window x -2..6 of a 4-wide image: 8 pixels on a 4-cell map, 2 per cell; only
  # pixels 0..3 exist: coordinates (x + 2.5) / 2 - 0.5 = 0.75, 1.25, 1.75, 2.25.
  cam = np.array([[0, 10, 20, 30]], np.float32)
  got, offset = windows.map_to_original(cam, np.array([-2, 0, 6, 1]), (1, 4))
  assert offset == (0, 0)
  np.testing.assert_allclose(got, [[7.5, 12.5, 17.5, 22.5]])


def test_map_through_a_bad_window_raises():
  with pytest.raises(ValueError, match='x1 > x0'):
    windows.map_to_original(np.ones((2, 2)), np.array([4, 0, 4, 2]), (2, 8))
  with pytest.raises(ValueError, match='holds no pixel centre'):
    windows.map_to_original(np.ones((2, 2)), np.array([10, 0, 12, 2]), (2, 8))
  with pytest.raises(ValueError, match='non-empty 2-D'):
    windows.map_to_original(np.ones(3), np.array([0, 0, 1, 1]), (1, 1))


def test_map_on_image_places_the_window_and_marks_it_valid():
  # A 2×2 map over the window x in [2, 6), y in [0, 4) of a 4×8 image: each map cell covers
  # 2×2 original pixels, whose bilinear samples at the pixel centres are 1/4 and 3/4 of the
  # way between cell centres (clamped at the edges).
  map_hw = np.array([[0.0, 4.0], [8.0, 12.0]])
  map_HW, valid_HW = windows.map_on_image(map_hw, np.array([2.0, 0.0, 6.0, 4.0]), (4, 8))
  assert map_HW.shape == (4, 8) and valid_HW.shape == (4, 8)
  expected_valid = np.zeros((4, 8), bool)
  expected_valid[:, 2:6] = True
  np.testing.assert_array_equal(valid_HW, expected_valid)
  assert not map_HW[~valid_HW].any()
  # Row 0: x samples 0, 0.25, 0.75, 1 of a cell -> 0, 1, 3, 4.
  np.testing.assert_allclose(map_HW[0, 2:6], [0, 1, 3, 4])
  np.testing.assert_allclose(map_HW[:, 2], [0, 2, 6, 8])

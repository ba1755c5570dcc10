"""Tests for cam_jax.viz. Boxes are (x0, y0, x1, y1), inclusive corners, x the column."""

import os

import numpy as np
import pytest
from PIL import Image

from cam_jax import viz


def test_jet_endpoints_and_middle():
  rgb_N3 = viz.jet(np.array([0.0, 0.5, 1.0])).astype(int)
  # v = 0: r = g = 0, b = 1.5 - |0 - 1| = 0.5 -> 128 (dark blue).
  # v = 0.5: r = 1.5 - |2 - 3| = 0.5, g = 1, b = 0.5 -> (128, 255, 128).
  # v = 1: r = 1.5 - |4 - 3| = 0.5 -> 128, g = b = 0 (dark red).
  np.testing.assert_array_equal(rgb_N3, [[0, 0, 128], [128, 255, 128], [128, 0, 0]])
  blue, green, red = rgb_N3
  assert blue[2] > blue[:2].max()
  assert green[1] > green[[0, 2]].max()
  assert red[0] > red[1:].max()


def test_jet_quarter_points_and_clipping():
  # v = 0.25: b = 1.5 - |1 - 1| -> 1 (clipped), g = 1.5 - |1 - 2| = 0.5, r = 0.
  np.testing.assert_array_equal(viz.jet(np.array([0.25])), [[0, 128, 255]])
  # Outside [0, 1] is clipped to the endpoints.
  np.testing.assert_array_equal(viz.jet(np.array([-3.0, 7.0])), viz.jet(np.array([0.0, 1.0])))
  assert viz.jet(np.zeros((2, 5))).shape == (2, 5, 3)


def test_overlay_hot_is_red_cold_is_blue():
  image_HW3 = np.full((4, 4, 3), 128, np.uint8)
  cam_HW = np.zeros((4, 4))
  cam_HW[0, 0] = 5.0
  out_HW3 = viz.overlay(image_HW3, cam_HW).astype(int)
  # Hot: 0.3 * (128, 0, 0) + 0.5 * 128 = (102.4, 64, 64) -> (102, 64, 64).
  np.testing.assert_array_equal(out_HW3[0, 0], [102, 64, 64])
  # Cold: 0.3 * (0, 0, 128) + 64 = (64, 64, 102).
  np.testing.assert_array_equal(out_HW3[3, 3], [64, 64, 102])


def test_overlay_rejects_mismatched_cam():
  with pytest.raises(ValueError, match=r'\(2, 2\).*\(4, 4, 3\)'):
    viz.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)))


def test_draw_boxes_outline_only():
  image_HW3 = np.zeros((8, 10, 3), np.uint8)
  out_HW3 = viz.draw_boxes(image_HW3, [[2, 1, 6, 5]], (255, 0, 0))
  red_HW = np.all(out_HW3 == [255, 0, 0], axis=-1)
  expected_HW = np.zeros((8, 10), bool)
  expected_HW[1, 2:7] = expected_HW[5, 2:7] = True   # rows y0 = 1 and y1 = 5, x 2..6
  expected_HW[1:6, 2] = expected_HW[1:6, 6] = True   # columns x0 = 2 and x1 = 6
  np.testing.assert_array_equal(red_HW, expected_HW)
  assert red_HW[1, 2] and red_HW[5, 6] and red_HW[3, 6]  # both corners are inclusive
  assert not out_HW3[2:5, 3:6].any()  # interior untouched
  assert not image_HW3.any()  # the input was not drawn on


def test_draw_boxes_width_grows_inwards():
  out_HW3 = viz.draw_boxes(np.zeros((8, 10, 3), np.uint8), [[2, 1, 7, 6]], (0, 255, 0), width=2)
  green_HW = out_HW3[..., 1] == 255
  assert green_HW.sum() == 6 * 6 - 2 * 2  # a 6 x 6 box less its 2 x 2 hole
  assert not green_HW[0].any() and not green_HW[:, 8].any()


def test_upscale_and_upscale_boxes():
  image_HW3 = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  big_HW3 = viz.upscale(image_HW3, 4)
  assert big_HW3.shape == (8, 12, 3)
  np.testing.assert_array_equal(big_HW3[4:8, 8:12], np.broadcast_to(image_HW3[1, 2], (4, 4, 3)))
  # Pixel 1 spans 4..7 at factor 4: (1, 0, 2, 1) -> (4, 0, 3 * 4 - 1, 2 * 4 - 1).
  np.testing.assert_array_equal(viz.upscale_boxes([[1, 0, 2, 1]], 4), [[4, 0, 11, 7]])


def test_cam_figure_shape_and_colours():
  image_HW3 = np.full((16, 12, 3), 128, np.uint8)
  cam_HW = np.zeros((16, 12))
  figure_HW3 = viz.cam_figure(image_HW3, cam_HW, [[1, 1, 5, 5]], [2, 3, 8, 9], factor=4)
  assert figure_HW3.shape == (64, 96, 3) and figure_HW3.dtype == np.uint8
  # GT top-left corner (1, 1) -> (4, 4) on the left panel, (48 + 4, 4) on the right.
  np.testing.assert_array_equal(figure_HW3[4, 4], [0, 255, 0])
  np.testing.assert_array_equal(figure_HW3[4, 52], [0, 255, 0])
  # Prediction bottom-right (8, 9) -> ((8 + 1) * 4 - 1, (9 + 1) * 4 - 1) = (35, 39).
  np.testing.assert_array_equal(figure_HW3[39, 35], [255, 0, 0])
  np.testing.assert_array_equal(figure_HW3[39, 48 + 35], [255, 0, 0])
  titled_HW3 = viz.cam_figure(image_HW3, cam_HW, np.zeros((0, 4)), None, factor=2, title='dog')
  assert titled_HW3.shape == (14 + 32, 48, 3)
  strip_HW3 = titled_HW3[:14]
  assert (strip_HW3 < 128).any() and (strip_HW3 == 255).mean() > 0.5  # black text on white


def test_save_png_round_trip_leaves_no_temp(tmp_path):
  image_HW3 = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  path = tmp_path / 'sub' / 'dir' / 'fig.png'
  viz.save_png(path, image_HW3)
  viz.save_png(path, image_HW3[::-1].copy())  # overwrite
  np.testing.assert_array_equal(np.asarray(Image.open(path)), image_HW3[::-1])
  assert os.listdir(path.parent) == ['fig.png']

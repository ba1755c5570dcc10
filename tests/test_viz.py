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


def test_colormaps_by_hand():
  np.testing.assert_array_equal(viz.get_colormap('jet')(np.array([0.0, 0.5, 1.0])),
                                [[0, 0, 128], [128, 255, 128], [128, 0, 0]])
  # gray: round(255 * v), clipped.
  np.testing.assert_array_equal(viz.get_colormap('gray')(np.array([-1.0, 0.5, 1.0])),
                                [[0, 0, 0], [128, 128, 128], [255, 255, 255]])
  # viridis: the anchors at 0 and 1, and halfway between the first two anchors (0, 1/8):
  # ((68 + 71) / 2, (1 + 45) / 2, (84 + 123) / 2) = (69.5, 23, 103.5) -> (70, 23, 104).
  np.testing.assert_array_equal(viz.get_colormap('viridis')(np.array([0.0, 1 / 16, 1.0])),
                                [[68, 1, 84], [70, 23, 104], [253, 231, 37]])
  for name in viz.COLORMAPS:
    out_HW3 = viz.get_colormap(name)(np.zeros((2, 3)))
    assert out_HW3.shape == (2, 3, 3) and out_HW3.dtype == np.uint8


def test_get_colormap_lists_known_names():
  with pytest.raises(ValueError, match='known colormaps: gray, jet, viridis'):
    viz.get_colormap('rainbow')
  with pytest.raises(ValueError, match='known colormaps'):
    viz.overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)), colormap='rainbow')


def test_overlay_one_hot_is_red_at_the_hot_pixel_blue_elsewhere():
  image_HW3 = np.zeros((3, 5, 3), np.uint8)
  cam_HW = np.zeros((3, 5))
  cam_HW[1, 2] = 0.7
  out_HW3 = viz.overlay(image_HW3, cam_HW, heat_weight=1.0, image_weight=0.0).astype(int)
  assert out_HW3[1, 2, 0] > 100 and out_HW3[1, 2, 2] == 0  # jet(1) = (128, 0, 0)
  cold_HW = np.ones((3, 5), bool)
  cold_HW[1, 2] = False
  assert (out_HW3[cold_HW] == [0, 0, 128]).all()  # jet(0)


def test_overlay_gray_weights():
  image_HW3 = np.full((1, 2, 3), 100, np.uint8)
  out_HW3 = viz.overlay(image_HW3, np.array([[0.0, 2.0]]), heat_weight=0.5, image_weight=0.5,
                        colormap='gray')
  # 0.5 * 0 + 0.5 * 100 = 50; 0.5 * 255 + 50 = 177.5 -> 178 (half to even).
  np.testing.assert_array_equal(out_HW3[0, :, 0], [50, 178])


def test_overlay_valid_mask_normalises_inside_and_leaves_outside_plain():
  image_HW3 = np.full((2, 3, 3), 200, np.uint8)
  # Outside the window the map is huge: it must not set the scale inside.
  cam_HW = np.array([[9.0, 1.0, 2.0], [9.0, 1.0, 2.0]])
  valid_HW = np.array([[False, True, True], [False, True, True]])
  out_HW3 = viz.overlay(image_HW3, cam_HW, colormap='gray', valid_HW=valid_HW).astype(int)
  np.testing.assert_array_equal(out_HW3[:, 0], [[200] * 3] * 2)  # the plain image
  np.testing.assert_array_equal(out_HW3[0, 1], [100] * 3)  # min inside: 0.5 * 200
  # Max inside: 0.3 * 255 + 100 = 176.5 -> 176 (numpy rounds half to even).
  np.testing.assert_array_equal(out_HW3[0, 2], [176] * 3)
  # Nothing valid: the plain image.
  np.testing.assert_array_equal(
      viz.overlay(image_HW3, cam_HW, valid_HW=np.zeros((2, 3), bool)), image_HW3)
  with pytest.raises(ValueError, match='valid_HW'):
    viz.overlay(image_HW3, cam_HW, valid_HW=np.ones((3, 2), bool))


def test_shrink_never_upscales_and_reports_scale():
  image_HW3 = np.zeros((100, 40, 3), np.uint8)
  same_HW3, scale = viz.shrink(image_HW3, 100)
  assert same_HW3.shape == (100, 40, 3) and scale == 1.0
  small_HW3, scale = viz.shrink(image_HW3, 50)
  assert small_HW3.shape == (50, 20, 3) and scale == 0.5
  # Antialiased: a fine checkerboard averages to grey rather than aliasing.
  checker_HW3 = np.zeros((64, 64, 3), np.uint8)
  checker_HW3[::2, ::2] = checker_HW3[1::2, 1::2] = 255
  small_HW3, _ = viz.shrink(checker_HW3, 16)
  assert np.abs(small_HW3.astype(int) - 128).max() <= 2


def test_scale_boxes_by_hand():
  # Edges [10, 30) x [4, 8) at 0.5 -> [5, 15) x [2, 4): inclusive (5, 2, 14, 3).
  np.testing.assert_array_equal(viz.scale_boxes([[10, 4, 29, 7]], 0.5, (50, 50)), [[5, 2, 14, 3]])
  # Edges [3, 4) at 0.25 -> [0.75, 1.0) -> [1, 1): kept one pixel wide, (1, 1, 1, 1).
  np.testing.assert_array_equal(viz.scale_boxes([[3, 3, 3, 3]], 0.25, (10, 10)), [[1, 1, 1, 1]])
  # Clipped to the image: (0, 0, 19, 9) at 2 -> (0, 0, 39, 19) in a 15 x 30 image.
  np.testing.assert_array_equal(viz.scale_boxes([[0, 0, 19, 9]], 2, (15, 30)), [[0, 0, 29, 14]])
  assert viz.scale_boxes(np.zeros((0, 4)), 0.5, (5, 5)).shape == (0, 4)


def test_titled_adds_a_strip():
  out_HW3 = viz.titled(np.zeros((10, 60, 3), np.uint8), 'cat 0.9')
  assert out_HW3.shape == (24, 60, 3)
  assert (out_HW3[:14] < 128).any() and (out_HW3[:14] == 255).mean() > 0.5
  assert not out_HW3[14:].any()


def test_grid_sizes_and_placement():
  tiles = [np.full((4, 6, 3), i, np.uint8) for i in range(4)] + [np.full((7, 2, 3), 9, np.uint8)]
  out_HW3 = viz.grid(tiles, columns=3, pad=1, background=255)
  # Cells 7 x 6; 2 rows, 3 columns: (2 * 7 + 1, 3 * 6 + 2).
  assert out_HW3.shape == (15, 20, 3)
  np.testing.assert_array_equal(out_HW3[0:4, 7:13], 1)  # tile 1: row 0, column 1
  np.testing.assert_array_equal(out_HW3[8:12, 0:6], 3)  # tile 3: row 1, column 0
  np.testing.assert_array_equal(out_HW3[8:15, 7:9], 9)  # tile 4: row 1, column 1, taller
  assert (out_HW3[4:7, 0:6] == 255).all()  # below the short tile 0: background
  assert (out_HW3[8:15, 14:20] == 255).all()  # the empty third cell of row 1
  with pytest.raises(ValueError, match='at least one tile'):
    viz.grid([], columns=2)


def test_top_k_figure_is_one_row_of_titled_tiles():
  image_HW3 = np.full((20, 30, 3), 128, np.uint8)
  maps_kHW = [np.random.default_rng(j).random((20, 30)) for j in range(3)]
  boxes = [np.array([1, 2, 10, 12]), None, np.array([0, 0, 29, 19])]
  out_HW3 = viz.top_k_figure(image_HW3, maps_kHW, ['a 0.5', 'b 0.3', 'c 0.1'], boxes)
  assert out_HW3.shape == (14 + 20, 4 * 30 + 3 * 2, 3)
  np.testing.assert_array_equal(out_HW3[14:, :30], image_HW3)  # the image, untouched
  tile_x = 32  # the first class's tile, after the image and a 2 px gap
  np.testing.assert_array_equal(out_HW3[14 + 2, tile_x + 1], viz.PRED_COLOR)  # its box corner
  second_HW3 = out_HW3[14:, 64:94]
  assert not np.all(second_HW3 == viz.PRED_COLOR, axis=-1).any()  # no box for 'b'
  with pytest.raises(ValueError, match='one of each per class'):
    viz.top_k_figure(image_HW3, maps_kHW, ['a'], boxes)


def test_fit_shrinks_large_images_and_upscales_small_ones_by_an_integer_factor():
  image = np.zeros((30, 50, 3), np.uint8)
  image[10, 20] = 255
  # 50 < 160: factor 160 // 50 = 3 (nearest below), pixel (20, 10) -> block 60..62, 30..32.
  big, scale = viz.fit(image, 512, 160)
  assert big.shape == (90, 150, 3) and scale == 3.0
  assert big[30:33, 60:63].min() == 255 and big.sum() == 9 * 3 * 255
  np.testing.assert_array_equal(viz.scale_boxes(np.array([[20, 10, 20, 10]]), scale,
                                                big.shape[:2]), [[60, 30, 62, 32]])
  # Long side 50 > 40: shrink to 40 (scale 0.8); already between the two: untouched.
  assert viz.fit(image, 40, 10)[0].shape == (24, 40, 3)
  assert viz.fit(image, 64, 32)[1] == 1.0

"""cam_jax.box_sweep against labelling at each threshold, and golden cases by hand.

Boxes are (x0, y0, x1, y1), inclusive corners, x the column and y the row. The
reference for every τ is scipy: `boxes.largest_component_box` on the mask for the
largest component, `ndimage.label` + `find_objects` for every component.
"""

import concurrent.futures

import numpy as np
import pytest
from scipy import ndimage

from cam_jax import box_sweep, boxes


def _mask(map_HW, tau, strict):
  """The mask the sweep promises: float32 maps compared in float32, others in float64."""
  map_HW = np.asarray(map_HW)
  values_HW = map_HW.astype(np.float32 if map_HW.dtype == np.float32 else np.float64)
  # A Python float takes the array's float dtype (NEP 50), as in boxes.threshold_mask.
  return values_HW > float(tau) if strict else values_HW >= float(tau)


def _all_component_boxes(mask_HW):
  labels_HW, num = ndimage.label(mask_HW, structure=np.ones((3, 3), bool))
  if num == 0:
    height, width = mask_HW.shape
    return np.array([[0, 0, width - 1, height - 1]])
  return np.array([[cols.start, rows.start, cols.stop - 1, rows.stop - 1]
                   for rows, cols in ndimage.find_objects(labels_HW)])


def _check_against_labelling(map_HW, thresholds_T, strict):
  result = box_sweep.sweep_boxes(map_HW, thresholds_T, strict=strict)
  assert result.largest_T4.shape == (len(thresholds_T), 4)
  assert result.largest_T4.dtype == np.int32
  assert len(result.components) == len(thresholds_T)
  for t, tau in enumerate(thresholds_T):
    mask_HW = _mask(map_HW, tau, strict)
    np.testing.assert_array_equal(result.largest_T4[t], boxes.largest_component_box(mask_HW),
                                  err_msg=f'largest, τ={tau!r}, strict={strict}')
    np.testing.assert_array_equal(result.components[t], _all_component_boxes(mask_HW),
                                  err_msg=f'components, τ={tau!r}, strict={strict}')
  np.testing.assert_array_equal(
      box_sweep.sweep_largest_boxes(map_HW, thresholds_T, strict=strict), result.largest_T4)


def _thresholds(rng, map_HW):
  """Every pixel value, midpoints, below the min, above the max, repeats; shuffled."""
  values = np.unique(np.asarray(map_HW, np.float64))
  taus = np.concatenate([values, (values[:-1] + values[1:]) / 2,
                         [values[0] - 1, values[-1] + 1, values[0], values[-1]]])
  rng.shuffle(taus)
  return taus


# --- exhaustive comparisons on random maps ---------------------------------------------


@pytest.mark.parametrize('shape', [(7, 9), (16, 16), (31, 17), (1, 13), (13, 1), (1, 1)])
@pytest.mark.parametrize('num_values', [2, 3, 6])
@pytest.mark.parametrize('strict', [False, True])
def test_quantised_maps_match_labelling_at_every_threshold(shape, num_values, strict):
  # A few distinct values: plateaus, equal-size components and ties everywhere.
  rng = np.random.default_rng(hash((shape, num_values, strict)) % 2**32)
  for dtype in (np.float32, np.float64, np.int16, np.uint8):
    for _ in range(6):
      map_HW = rng.integers(0, num_values, shape).astype(dtype)
      _check_against_labelling(map_HW, _thresholds(rng, map_HW), strict)


@pytest.mark.parametrize('strict', [False, True])
def test_smooth_maps_match_labelling_on_a_uniform_grid(strict):
  # CAM-like: a coarse random map upsampled (plateau-free) then min-max normalised,
  # on the MaxBoxAcc grid; the grid's values are float64, compared in float32.
  rng = np.random.default_rng(1)
  grid_T = np.arange(0, 1, 0.02)
  for _ in range(4):
    map_HW = boxes.normalize_map(ndimage.zoom(rng.normal(size=(6, 5)), 8, order=1))
    _check_against_labelling(map_HW, grid_T, strict)


def test_matches_threshold_mask_of_the_box_stage():
  # What MaxBoxAcc does with the box stage: threshold_mask(cam, τ) for every τ.
  rng = np.random.default_rng(2)
  cam_HW = ndimage.zoom(rng.normal(size=(5, 7)), 6, order=1) * 3 - 1
  grid_T = np.arange(0, 1, 0.01)
  swept_T4 = box_sweep.sweep_largest_boxes(boxes.normalize_map(cam_HW), grid_T)
  for t, tau in enumerate(grid_T):
    np.testing.assert_array_equal(
        swept_T4[t], boxes.largest_component_box(boxes.threshold_mask(cam_HW, tau)))


def test_noise_maps_with_many_local_maxima():
  # Continuous noise: a peak every few pixels, so many basins that the basin pairs are
  # deduplicated by sorting rather than in a table.
  rng = np.random.default_rng(3)
  for shape in ((40, 40), (23, 57)):
    map_HW = rng.random(shape)
    _check_against_labelling(map_HW, np.quantile(map_HW, np.linspace(0, 1, 23)), False)
    _check_against_labelling(map_HW, np.quantile(map_HW, np.linspace(0, 1, 23)), True)


def test_level_tables_in_blocks_match(monkeypatch):
  # Many basins x many thresholds are processed in blocks of levels; force tiny blocks.
  rng = np.random.default_rng(4)
  for cells in (1, 7, 50):
    monkeypatch.setattr(box_sweep, '_MAX_TABLE_CELLS', cells)
    for _ in range(3):
      map_HW = rng.integers(0, 5, (11, 13)).astype(np.float32)
      _check_against_labelling(map_HW, _thresholds(rng, map_HW), False)
      _check_against_labelling(map_HW, _thresholds(rng, map_HW), True)


@pytest.mark.parametrize('thresholds', [
    [0.5, 2.5],  # fewer than 8: searchsorted
    np.linspace(-1, 5, 41),  # uniform: the guessed levels
    np.geomspace(0.01, 4, 30),  # non-uniform: guesses corrected by searchsorted
])
def test_threshold_grids(thresholds):
  rng = np.random.default_rng(5)
  map_HW = rng.integers(0, 5, (12, 10)).astype(np.float32) + rng.random((12, 10)) * 0.5
  _check_against_labelling(map_HW, np.asarray(thresholds), False)
  _check_against_labelling(map_HW, np.asarray(thresholds), True)


# --- levels and keys: the near-uniform grid path and the searchsorted path -----------


def _levels_keys(map_HW, thresholds_T, strict):
  """box_sweep's levels (unpadded) and keys (padded) for this map, and whether the
  near-uniform grid path gave them."""
  values_HW, plan, value_range = box_sweep._check_inputs(map_HW, thresholds_T)
  grid = box_sweep._grid(*values_HW.shape)
  index_bits = max(1, (grid.raster_P.size - 1).bit_length())
  uniform = box_sweep._position_levels_and_keys(values_HW, plan, strict, value_range, grid,
                                                index_bits) is not None
  level_P, keys_P, _ = box_sweep._levels_and_keys(values_HW, plan, strict, value_range, grid)
  height, width = values_HW.shape
  level_HW = level_P.reshape(grid.rows, grid.cols)[:height, :width].copy()
  return level_HW, keys_P.reshape(grid.rows, grid.cols)[:height, :width].copy(), uniform


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('strict', [False, True])
@pytest.mark.parametrize('grid_T', [
    np.arange(0, 1, 0.01),  # MaxBoxAcc's grid
    np.arange(0, 1, 0.001),
    np.linspace(-3, 7, 37),
    np.array([0.25, 0.75]),
])
def test_levels_on_uniform_grids_equal_searchsorted(dtype, strict, grid_T):
  # Values on every threshold, one ulp either side, and random ones, inside and
  # outside the grid's range: the fixed-point positions must count exactly.
  rng = np.random.default_rng(7)
  taus = grid_T.astype(dtype)
  values = np.concatenate([taus, np.nextafter(taus, np.inf), np.nextafter(taus, -np.inf),
                           rng.uniform(grid_T[0] - 1, grid_T[-1] + 1, 2000)]).astype(dtype)
  map_HW = rng.permutation(np.resize(values, 61 * 53)).reshape(61, 53)
  level_HW, keys_HW, uniform = _levels_keys(map_HW, grid_T, strict)
  assert uniform
  expected = len(taus) - np.searchsorted(np.sort(taus), map_HW, 'left' if strict else 'right')
  np.testing.assert_array_equal(level_HW, expected)
  # Keys refine the levels: a higher key never has a higher level.
  order = np.argsort(keys_HW.ravel())
  assert (np.diff(level_HW.ravel()[order]) <= 0).all()
  assert np.unique(keys_HW).size == keys_HW.size


@pytest.mark.parametrize('grid_T', [np.geomspace(0.01, 2, 30), [0.3], [0.5, 0.5, 0.5],
                                    [-np.inf, 0.0, 0.5, np.inf]])
def test_levels_on_other_grids_equal_searchsorted(grid_T):
  rng = np.random.default_rng(8)
  map_HW = rng.integers(0, 5, (23, 19)).astype(np.float32) * 0.5 + rng.random((23, 19))
  level_HW, keys_HW, uniform = _levels_keys(map_HW, grid_T, False)
  assert not uniform
  taus = np.sort(np.asarray(grid_T, np.float32))
  np.testing.assert_array_equal(level_HW, len(taus) - np.searchsorted(taus, map_HW, 'right'))
  order = np.argsort(keys_HW.ravel())
  assert (np.diff(level_HW.ravel()[order]) <= 0).all()
  _check_against_labelling(map_HW, np.asarray(grid_T), False)


@pytest.mark.parametrize('shape', [(37, 23), (24, 1), (1, 30), (45, 46)])
def test_smooth_maps_of_odd_shapes_on_the_maxboxacc_grid(shape):
  # Odd sides leave a padding row or column inside the last 2 x 2 blocks.
  rng = np.random.default_rng(9)
  for dtype in (np.float32, np.float64):
    map_HW = boxes.normalize_map(ndimage.zoom(rng.normal(size=(5, 5)), 10, order=1))
    map_HW = map_HW[:shape[0], :shape[1]].astype(dtype)
    _check_against_labelling(map_HW, np.arange(0, 1, 0.02), False)
    _check_against_labelling(map_HW, np.arange(0, 1, 0.02), True)


def test_a_big_map_takes_64_bit_keys():
  # 1024 x 1024 pixels leave too few bits of a 32-bit key for the level's fraction.
  rng = np.random.default_rng(10)
  map_HW = ndimage.zoom(rng.normal(size=(12, 12)), 1024 / 12, order=1)
  grid_T = np.linspace(map_HW.min(), map_HW.max(), 40)
  values_HW, plan, value_range = box_sweep._check_inputs(map_HW, grid_T)
  grid = box_sweep._grid(*map_HW.shape)
  index_bits = (grid.raster_P.size - 1).bit_length()
  assert box_sweep._position_levels_and_keys(values_HW, plan, False, value_range, grid,
                                             index_bits)[1].dtype == np.uint64
  swept_T4 = box_sweep.sweep_largest_boxes(map_HW, grid_T)
  for t, tau in enumerate(grid_T):
    np.testing.assert_array_equal(swept_T4[t], boxes.largest_component_box(map_HW >= tau))


def test_kept_scratch_arrays_never_leak_between_calls():
  # Temporaries are kept per thread between calls: alternate shapes, dtypes and grid
  # kinds, and check every result against a first computation kept aside.
  rng = np.random.default_rng(11)
  cases = []
  for shape, dtype, grid_T in [((40, 40), np.float32, np.arange(0, 1, 0.01)),
                               ((17, 33), np.float64, np.arange(0, 1, 0.05)),
                               ((40, 40), np.float64, np.geomspace(0.01, 1, 20)),
                               ((64, 48), np.float32, np.arange(0, 1, 0.1))]:
    map_HW = boxes.normalize_map(ndimage.zoom(rng.normal(size=(4, 4)), 16, order=1))
    map_HW = map_HW[:shape[0], :shape[1]].astype(dtype)
    cases.append((map_HW, grid_T, box_sweep.sweep_boxes(map_HW, grid_T)))
  for map_HW, grid_T, first in cases + cases[::-1]:
    again = box_sweep.sweep_boxes(map_HW, grid_T)
    np.testing.assert_array_equal(again.largest_T4, first.largest_T4)
    for got, want in zip(again.components, first.components):
      np.testing.assert_array_equal(got, want)
  for map_HW, grid_T, first in cases:
    _check_against_labelling(map_HW, grid_T, False)


def test_threads_sweep_at_once():
  rng = np.random.default_rng(12)
  maps = [boxes.normalize_map(ndimage.zoom(rng.normal(size=(6, 6)), 9, order=1))
          for _ in range(8)]
  grid_T = np.arange(0, 1, 0.01)
  expected = [box_sweep.sweep_largest_boxes(map_HW, grid_T) for map_HW in maps]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    for _ in range(5):
      got = list(pool.map(lambda m: box_sweep.sweep_largest_boxes(m, grid_T), maps))
      for want, swept in zip(expected, got):
        np.testing.assert_array_equal(swept, want)


# --- golden cases, worked by hand ------------------------------------------------------


def test_hand_worked_sweep():
  # x:  0  1  2  3  4
  map_HW = np.array([
      [3, 3, 0, 1, 0],  # y = 0
      [0, 2, 0, 2, 0],  # y = 1
      [1, 0, 0, 0, 3],  # y = 2
  ], np.float32)
  thresholds_T = [4, 3, 2.5, 2, 1, 0.5, 0]
  result = box_sweep.sweep_boxes(map_HW, thresholds_T)
  expected_largest = [
      [0, 0, 4, 2],  # τ=4: nothing passes -> the whole image
      [0, 0, 1, 0],  # τ=3: {(0,0),(1,0)} (2 px) beats {(4,2)} (1 px)
      [0, 0, 1, 0],  # τ=2.5: the same
      [0, 0, 1, 1],  # τ=2: (1,1) joins the top-left pair (3 px); (3,1) touches (4,2)
      # diagonally: {(3,1),(4,2)} has 2 px
      [0, 0, 1, 2],  # τ=1: (3,0) joins (3,1), 3 px; (0,2) touches (1,1) diagonally, so
      # the top-left component has 4 px and stays the largest
      [0, 0, 1, 2],  # τ=0.5: the same masks as τ=1
      [0, 0, 4, 2],  # τ=0: every pixel, one component
  ]
  np.testing.assert_array_equal(result.largest_T4, expected_largest)
  expected_components = [
      [[0, 0, 4, 2]],  # empty mask: the whole image alone
      [[0, 0, 1, 0], [4, 2, 4, 2]],
      [[0, 0, 1, 0], [4, 2, 4, 2]],
      [[0, 0, 1, 1], [3, 1, 4, 2]],  # label order: first pixels (0,0) then (3,1)
      [[0, 0, 1, 2], [3, 0, 4, 2]],
      [[0, 0, 1, 2], [3, 0, 4, 2]],
      [[0, 0, 4, 2]],
  ]
  for t, expected in enumerate(expected_components):
    np.testing.assert_array_equal(result.components[t], expected, err_msg=f't={t}')
  # Strict masks: τ=3 keeps nothing, τ=2 keeps only the 3s, τ=0 every nonzero pixel.
  strict_T4 = box_sweep.sweep_largest_boxes(map_HW, [3, 2, 0], strict=True)
  np.testing.assert_array_equal(strict_T4, [[0, 0, 4, 2], [0, 0, 1, 0], [0, 0, 1, 2]])


def test_equal_sizes_go_to_the_first_pixel_in_raster_order():
  # Two 2-pixel components: A's first pixel is (4, 0), B's is (0, 1). A comes first in
  # raster order (row 0) although B lies further left: A wins, as scipy's label 1.
  map_HW = np.array([
      [0, 0, 0, 0, 5, 5],
      [5, 0, 0, 0, 0, 0],
      [5, 0, 0, 0, 0, 0],
  ], np.float64)
  np.testing.assert_array_equal(box_sweep.sweep_largest_boxes(map_HW, [1]), [[4, 0, 5, 0]])
  # Raise B by a pixel's worth: at τ=5 both have 2 px (A wins), at τ=1 B has 3 px.
  map_HW[0, 0] = 1
  np.testing.assert_array_equal(box_sweep.sweep_largest_boxes(map_HW, [5, 1]),
                                [[4, 0, 5, 0], [0, 0, 0, 2]])


def test_tie_between_components_that_merge_later():
  # At τ=2 the two arms (3 px each) tie: the upper-left one wins. At τ=1 the bridge
  # (value 1) joins them into one component of 7 px.
  map_HW = np.array([
      [2, 2, 2, 1, 0, 0, 0],
      [0, 0, 0, 0, 2, 2, 2],
  ], np.float32)
  result = box_sweep.sweep_boxes(map_HW, [2, 1])
  np.testing.assert_array_equal(result.largest_T4, [[0, 0, 2, 0], [0, 0, 6, 1]])
  np.testing.assert_array_equal(result.components[0], [[0, 0, 2, 0], [4, 1, 6, 1]])
  np.testing.assert_array_equal(result.components[1], [[0, 0, 6, 1]])


def test_constant_map():
  map_HW = np.full((3, 4), 0.5)
  result = box_sweep.sweep_boxes(map_HW, [0.5, 0.6, 0.0])
  np.testing.assert_array_equal(result.largest_T4, [[0, 0, 3, 2]] * 3)
  np.testing.assert_array_equal(
      box_sweep.sweep_largest_boxes(map_HW, [0.5], strict=True), [[0, 0, 3, 2]])  # empty


def test_thresholds_in_any_order_with_repeats():
  rng = np.random.default_rng(6)
  map_HW = rng.integers(0, 4, (9, 8)).astype(np.float32)
  thresholds_T = np.array([2, 0, 3, 2, 1, 3, 0.5])
  ascending = np.sort(thresholds_T)
  swept_T4 = box_sweep.sweep_largest_boxes(map_HW, thresholds_T)
  np.testing.assert_array_equal(
      swept_T4[np.argsort(thresholds_T, kind='stable')],
      box_sweep.sweep_largest_boxes(map_HW, ascending))


def test_float32_compares_against_thresholds_rounded_to_float32():
  # float32(0.7) = 0.69999999 < 0.7: it passes τ = 0.7 in float32 (threshold_mask's
  # convention), though not in float64.
  map_HW = np.array([[0.7, 0.0, 0.7]], np.float32)
  np.testing.assert_array_equal(box_sweep.sweep_component_boxes(map_HW, [0.7])[0],
                                [[0, 0, 0, 0], [2, 0, 2, 0]])
  np.testing.assert_array_equal(
      box_sweep.sweep_largest_boxes(map_HW.astype(np.float64), [0.7]), [[0, 0, 2, 0]])


def test_float64_values_that_round_to_one_float32():
  # a < τ <= b, yet float32(a) == float32(b): the ascent must not let a's pixels drain
  # through b's as if they were one plateau.
  a = 0.1
  b = np.nextafter(a, 1)
  assert np.float32(a) == np.float32(b)
  map_HW = np.array([[b, a, b, a, b], [a, a, a, a, a], [b, a, a, a, b]])
  _check_against_labelling(map_HW, [b, a, 0.0], False)
  _check_against_labelling(map_HW, [a, b], True)


def test_values_beyond_float32_range_and_signed_zeros():
  map_HW = np.array([[1e300, -1e300, 1e299], [-0.0, 0.0, 1e300]])
  _check_against_labelling(map_HW, [1e300, 5e299, 1e299, 0.0, -1e300, np.inf, -np.inf], False)
  _check_against_labelling(map_HW, [5e299, 0.0, -0.0, -1e300], True)


def test_no_thresholds():
  result = box_sweep.sweep_boxes(np.zeros((2, 3)), [])
  assert result.largest_T4.shape == (0, 4)
  assert result.components == []


@pytest.mark.parametrize('map_HW, thresholds, error', [
    (np.zeros((2, 2, 2)), [0.5], ValueError),
    (np.zeros((0, 3)), [0.5], ValueError),
    (np.array([[0.0, np.nan]]), [0.5], ValueError),
    (np.array([[0.0, np.inf]]), [0.5], ValueError),
    (np.zeros((2, 2), np.complex64), [0.5], TypeError),
    (np.zeros((2, 2)), [[0.5]], ValueError),
    (np.zeros((2, 2)), [0.5, np.nan], ValueError),
])
def test_rejects_bad_inputs(map_HW, thresholds, error):
  with pytest.raises(error):
    box_sweep.sweep_largest_boxes(map_HW, thresholds)

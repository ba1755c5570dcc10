"""Boxes at every threshold of a grid in one pass over a map: the MaxBoxAcc sweep.

For a map and thresholds τ_1..τ_T, `sweep_largest_boxes` gives, for every τ, exactly
what `boxes.largest_component_box(map_HW >= τ)` gives, and `sweep_component_boxes`
every 8-connected component's box in `scipy.ndimage.label` order, without labelling
the map T times. Boxes are `(x0, y0, x1, y1)`, inclusive integer corners.

Masks. The mask at τ is `map_HW >= τ` (cam_jax's convention) or, with `strict=True`,
`map_HW > τ` (wsolevaluation's). A float32 map is compared in float32 against τ
rounded once to float32, as `boxes.threshold_mask` compares (`norm >= float(τ)`) and as
`metrics` counts pixels; every other dtype is compared in float64. Thresholds may come
in any order, repeated, or outside the map's range: row t of every result is the mask
at `thresholds_T[t]`.

Rules, those of `boxes.largest_component_box`: the largest component by pixel count;
among equal counts the one whose first pixel in raster order comes first (the lowest
scipy label); an empty mask gives the whole image `(0, 0, W - 1, H - 1)`. For every
component, the same empty-mask rule: the list at an empty τ holds the whole-image box
alone, so that the largest component's box is always one of the listed boxes and a
"best box among the components" (MaxBoxAccV2) is the same box that MaxBoxAcc scores
where there is no component. (wsolevaluation gives `[0, 0, 0, 0]` there instead.)

How (one pass over the map, no labelling at any τ):

1. Levels. Each pixel gets the index, in descending τ, of the first threshold whose
   mask holds it (T: none), so that the mask at the j-th highest τ is "level <= j". On
   a near-uniform grid (MaxBoxAcc's `np.arange(0, 1, step)`) a value's position on the
   grid, (v - lo) * scale, in fixed point, gives its level without searching: exactly
   wherever it is farther from a threshold than a bound on the grid's drift and the
   rounding error, and `searchsorted` decides the few pixels nearer. Other grids:
   `searchsorted`.
2. Ascent forest of 2 x 2 blocks. One integer key per pixel orders the pixels totally:
   by level, then by value as finely as the key holds it, then by index (on a
   near-uniform grid, the fixed-point position, then the index). Any two pixels of a
   2 x 2 block are 8-adjacent. Each block's top pixel is its highest; the block points
   to the block that holds the highest pixel of its top pixel's 3 x 3 window, and the
   blocks that point to themselves hold the local maxima (peaks). Pointer jumping over
   the blocks gives every block the peak its chain ends at: its basin. Keys never fall
   along a chain, and each step goes between 8-adjacent pixels (a pixel, its block's
   top, the highest pixel around that, and so on), so a pixel in a mask reaches its
   peak without leaving the mask: at every τ, the part of a basin in the mask is
   connected (or empty). The map lies in a padded layout (two or more rows and columns
   in no mask, keyed below every pixel) in which the neighbours' maxima are shifts of
   a flat array.
3. Basin graph. A component at τ is therefore a union of basins, joined wherever two
   8-adjacent pixels of different basins are both in the mask. Basins are unions of
   blocks and touch where blocks do: side by side through four pixel pairs, diagonally
   through one. Two basins join at the first level (highest τ) whose mask holds both
   pixels of a touching pair. Kruskal's algorithm over this small graph (a node per
   local maximum: tens for a CAM) gives the merges, and an order of the basins in which
   every component at every level is a run of consecutive basins.
4. Statistics. Per basin and level: pixel count, first and last row, first and last
   column, accumulated over levels. A block's two pixels in a column share its basin:
   the column enters the basin's box at the lower of their levels, and the two pixels
   count from their lower and their higher level. So counts and columns come from one
   bincount and two `ufunc.at` over (level, basin, column) events, one per block and
   column, half as many as pixels; rows from two `ufunc.at` over (level, basin, row)
   events. A component's statistics at a level are reductions over its run of basins
   (`reduceat`, all levels at once). Its first pixel in raster order, the tie-break
   between equal counts and the label order, is looked for in its first row, and only
   for components that tie on count (largest) or share a first row (label order).

Costs for N pixels: about thirty whole-map numpy passes, many of them over half or a
quarter of the map, log2(longest ascent chain) pointer jumps over the N/4 blocks, then
O(T x basins) work on small tables; Python loops run over basin pairs only, never over
pixels or thresholds. Map-sized temporaries are kept per thread from one call to the
next (`_scratch`). A map with very many local maxima (noise) has as many basins; the
level tables are then built in blocks of levels so that memory stays bounded, and the
sweep, still exact, takes about half the time of labelling at each τ (224 x 224
uniform noise, 100 thresholds).
"""

from __future__ import annotations

import functools
import math
import threading
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

# The most (levels x basins) cells a level table holds at once; past it, blocks of levels.
_MAX_TABLE_CELLS = 1 << 20
# Map-sized temporaries are kept per thread between calls, up to this many bytes each
# (a 224 x 224 map needs 1.7 MB in all): fresh ones cost page faults (glibc hands the
# heap's top back after each call), about 0.3 ms per 224 x 224 map, more than a
# labelling.
_MAX_SCRATCH_BYTES = 1 << 22
_scratch_store = threading.local()
# (x0, y0, x1, y1) from (first row, -(last row), first column, -(last column)), reordered.
_BOX_SIGNS = np.array([[1], [1], [-1], [-1]])


class SweepBoxes(NamedTuple):
  """`sweep_boxes`'s result; boxes `(x0, y0, x1, y1)`, inclusive corners, int32.

  largest_T4: row t, the largest component's box at `thresholds_T[t]`.
  components: entry t, an (n_t, 4) array, every component's box at `thresholds_T[t]`
    in scipy label order (raster order of each component's first pixel).
  """
  largest_T4: np.ndarray
  components: list[np.ndarray]


def sweep_largest_boxes(map_HW: ArrayLike, thresholds_T: ArrayLike, *,
                        strict: bool = False) -> np.ndarray:
  """The largest 8-connected component's box at each threshold, in one pass.

  Row t equals `boxes.largest_component_box(map_HW >= thresholds_T[t])` (`>` when
  `strict`), the comparison made in the dtype the module docstring names: ties go to
  the component first in raster order, an empty mask gives the whole image.

  Args:
    map_HW: 2-D map of finite values (a CAM, normalised or not; any real dtype).
    thresholds_T: 1-D thresholds in any order, no nan (±inf allowed).
    strict: masks `map_HW > τ` instead of `map_HW >= τ`.

  Returns:
    int32 (T, 4) boxes `(x0, y0, x1, y1)`, inclusive corners.
  """
  return _sweep(map_HW, thresholds_T, strict, want_components=False).largest_T4


def sweep_component_boxes(map_HW: ArrayLike, thresholds_T: ArrayLike, *,
                          strict: bool = False) -> list[np.ndarray]:
  """Every 8-connected component's box at each threshold, in one pass.

  Entry t is an int32 (n_t, 4) array of boxes `(x0, y0, x1, y1)` (inclusive corners)
  of the components of `map_HW >= thresholds_T[t]` (`>` when `strict`), in the order
  of their `scipy.ndimage.label` labels (raster order of their first pixels). An empty
  mask gives the whole-image box alone (1, 4), as `boxes.largest_component_box` does.
  """
  return _sweep(map_HW, thresholds_T, strict, want_components=True).components


def sweep_boxes(map_HW: ArrayLike, thresholds_T: ArrayLike, *,
                strict: bool = False) -> SweepBoxes:
  """`sweep_largest_boxes` and `sweep_component_boxes` from one pass (MaxBoxAcc and V2)."""
  return _sweep(map_HW, thresholds_T, strict, want_components=True)


def _check_inputs(map_HW: ArrayLike,
                  thresholds_T: ArrayLike) -> tuple[np.ndarray, _Plan, tuple[float, float]]:
  """The map in the comparison dtype (module docstring), its grid's plan, and its range."""
  map_HW = np.asarray(map_HW)
  if map_HW.ndim != 2 or map_HW.size == 0:
    raise ValueError(f'map_HW must be a non-empty 2-D map, got shape {map_HW.shape}')
  if map_HW.dtype.kind not in 'biuf':
    raise TypeError(f'map_HW must hold real numbers, got dtype {map_HW.dtype}')
  dtype = np.float32 if map_HW.dtype == np.float32 else np.float64
  values_HW = map_HW.astype(dtype, copy=False)
  lo, hi = values_HW.min(), values_HW.max()
  if not (np.isfinite(lo) and np.isfinite(hi)):  # nan propagates into min/max
    raise ValueError(f'map_HW holds non-finite values (min {lo}, max {hi})')
  thresholds_T = np.asarray(thresholds_T, dtype=np.float64)
  if thresholds_T.ndim != 1:
    raise ValueError(f'thresholds_T must be 1-D, got shape {thresholds_T.shape}')
  return values_HW, _plan(thresholds_T.tobytes(), np.dtype(dtype).str), (float(lo), float(hi))


class _Plan(NamedTuple):
  """What a threshold grid fixes, worked out once per grid and comparison dtype."""
  ascending_T: np.ndarray  # the thresholds, rounded to the comparison dtype, ascending
  level_T: np.ndarray  # the level of thresholds_T[t]: its rank from the top
  # Threshold k (from 0) sits at (ascending_T[k] - lo) * scale + 1 = k + 1 up to drift
  # (`_position_levels_and_keys`); drift is inf where the grid is not near-uniform.
  scale: float
  drift: float


@functools.lru_cache(maxsize=16)
def _plan(thresholds: bytes, dtype: str) -> _Plan:
  thresholds_T = np.frombuffer(thresholds, np.float64)
  if np.isnan(thresholds_T).any():
    raise ValueError('thresholds_T holds nan')
  # float64 -> float32 rounds to nearest, as NumPy converts a Python float compared
  # with a float32 array; past float32's range, to ±inf, which compares the same.
  with np.errstate(over='ignore'):
    thresholds_T = thresholds_T.astype(dtype)
  ascending = np.argsort(thresholds_T, kind='stable')
  level_T = np.empty(len(thresholds_T), np.intp)
  level_T[ascending] = np.arange(len(thresholds_T) - 1, -1, -1)
  ascending_T = thresholds_T[ascending]
  scale, drift = 0.0, np.inf
  if len(ascending_T):
    lo, hi = float(ascending_T[0]), float(ascending_T[-1])
    if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
      scale = (len(ascending_T) - 1) / (hi - lo)
      drift = float(np.abs((ascending_T.astype(np.float64) - lo) * scale
                           - np.arange(len(ascending_T))).max())
  for array in ascending_T, level_T:
    array.setflags(write=False)
  return _Plan(ascending_T, level_T, scale, drift)


def _scratch(buffer: str, shape: tuple[int, ...], dtype) -> np.ndarray:
  """An uninitialised array in a named buffer kept by this thread for its next calls.

  Arrays from one buffer share memory: a caller asks for a buffer's next array only
  once it is done with the last. Past _MAX_SCRATCH_BYTES, a fresh array.
  """
  store = _scratch_store.__dict__
  key = (buffer, shape, dtype)
  kept = store.get(key)
  if kept is not None:
    return kept
  size = math.prod(shape) * np.dtype(dtype).itemsize
  if size > _MAX_SCRATCH_BYTES:
    return np.empty(shape, dtype)
  memory = store.get(buffer)
  if memory is None or memory.size < size:
    for stale in [k for k in store if isinstance(k, tuple) and k[0] == buffer]:
      del store[stale]
    memory = store[buffer] = np.empty(size, np.uint8)
  kept = store[key] = memory[:size].view(dtype).reshape(shape)
  return kept


class _Grid(NamedTuple):
  """The padded layout of an H x W map (module docstring, step 2), and its constants.

  Pixel (y, x) sits at y * cols + x of a rows x cols grid; rows >= H and columns >= W
  are padding, at least two of each, so that rows and cols are even (whole 2 x 2 blocks)
  and the last block row and block column are padding alone. Arrays are read-only.
  """
  height: int
  width: int
  rows: int
  cols: int
  raster_P: np.ndarray  # each padded pixel's index, 0..P-1
  raster32_P: np.ndarray  # the same in uint32, or None past 2**32 pixels
  column_P: np.ndarray  # its column
  row_RK: np.ndarray  # the row of each (row, block column) pair, row-major
  block_P: np.ndarray  # its block, numbered in raster order of the blocks
  top_left_K: np.ndarray  # each block's top-left pixel
  blocks_K: np.ndarray  # 0..K-1


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> _Grid:
  rows, cols = 2 * ((height + 1) // 2 + 1), 2 * ((width + 1) // 2 + 1)
  raster_P = np.arange(rows * cols)
  raster32_P = raster_P.astype(np.uint32) if raster_P.size <= 1 << 32 else None
  column_P = np.tile(np.arange(cols), rows)
  block_P = (raster_P // cols // 2) * (cols // 2) + column_P // 2
  row_RK = np.repeat(np.arange(rows), cols // 2)
  blocks_K = np.arange(rows * cols // 4)
  top_left_K = 2 * (blocks_K // (cols // 2)) * cols + 2 * (blocks_K % (cols // 2))
  grid = _Grid(height, width, rows, cols, raster_P, raster32_P, column_P, row_RK, block_P,
               top_left_K, blocks_K)
  for array in grid[4:]:
    if array is not None:
      array.setflags(write=False)
  return grid


def _levels_and_keys(values_HW: np.ndarray, plan: _Plan, strict: bool,
                     value_range: tuple[float, float],
                     grid: _Grid) -> tuple[np.ndarray, np.ndarray, int]:
  """Every padded pixel's level (int32, T in the padding) and key, and the index bits.

  Keys order the pixels totally, in an order that refines the levels' (a key never
  rises where the level does not fall), and below them all the padding's. The index
  in the low bits makes keys distinct (a chain never cycles, even on a plateau) and
  names the pixel.
  """
  index_bits = max(1, (grid.raster_P.size - 1).bit_length())
  found = _position_levels_and_keys(values_HW, plan, strict, value_range, grid, index_bits)
  if found is not None:
    return found + (index_bits,)
  ascending_T = plan.ascending_T
  # Any grid: searchsorted, and keys from the values, in the order of their float32
  # copies viewed as integers with the sign bits folded (-0.0 below +0.0: any order
  # among equal values will do). Rounding to float32 may tie values on both sides of a
  # threshold; the level in the high bits keeps them in order.
  height, width = values_HW.shape
  num_levels = len(ascending_T)
  level_P = _scratch('level', (grid.raster_P.size,), np.int32)
  level_RC = level_P.reshape(grid.rows, grid.cols)
  level_RC[:height, width:] = level_RC[height:] = num_levels
  level_HW = level_RC[:height, :width]
  np.subtract(num_levels, ascending_T.searchsorted(values_HW, 'left' if strict else 'right'),
              out=level_HW)
  value_bits = min(32, 63 - index_bits - num_levels.bit_length())
  if value_bits < 1:
    raise ValueError(f'{values_HW.size} pixels and {num_levels} thresholds overflow the keys')
  with np.errstate(over='ignore'):  # beyond float32's range: inf, still in order
    bits_HW = values_HW.astype(np.float32, copy=False).view(np.int32)
  folded_HW = bits_HW >> 31
  folded_HW &= 0x7FFFFFFF
  folded_HW ^= bits_HW  # signed, in the values' order
  folded_HW >>= 32 - value_bits
  keys_P = _scratch('keys', (level_P.size,), np.int64)
  keys_RC = keys_P.reshape(grid.rows, grid.cols)
  keys_RC[:height, width:] = keys_RC[height:] = np.iinfo(np.int64).min
  keys_HW = keys_RC[:height, :width]
  np.multiply(folded_HW, np.int64(1) << index_bits, out=keys_HW)
  keys_HW += (num_levels - level_HW.astype(np.int64)) << (value_bits + index_bits)
  keys_P |= grid.raster_P
  return level_P, keys_P, index_bits


def _position_levels_and_keys(values_HW: np.ndarray, plan: _Plan, strict: bool,
                              value_range: tuple[float, float], grid: _Grid,
                              index_bits: int) -> tuple[np.ndarray, np.ndarray] | None:
  """`_levels_and_keys` on a near-uniform grid, without searching: None elsewhere.

  A value v sits at position (v - lo) * scale + 1 on the grid (lo, hi: the lowest and
  highest thresholds, scale = (T - 1) / (hi - lo)), where threshold k (from 0) sits at
  k + 1 up to the grid's drift. Computed in the values' dtype, the position is off by a
  bounded rounding error. Where it is farther than drift + error (the margin) from
  every integer, its integer part is the count of thresholds passed; the pixels nearer
  (on or next to a threshold) go to searchsorted. The position in fixed point, count
  in the high bits and a fraction of a level below, orders the pixels by count, then
  by value within a level: the key's high part.
  """
  ascending_T, scale = plan.ascending_T, plan.scale
  num_levels = len(ascending_T)
  level_bits = num_levels.bit_length()  # counts 0..T
  for dtype in (np.uint32, np.uint64):
    fraction_bits = min(16, 8 * np.dtype(dtype).itemsize - index_bits - level_bits)
    if fraction_bits >= 6 and (dtype == np.uint64 or grid.raster32_P is not None):
      break
  else:
    return None
  lo = float(ascending_T[0]) if num_levels else 0.0
  offset = 1 - lo * scale
  # Rounding: scale and offset to the values' dtype, a product and a sum; 4 ulps of
  # every term, and 1e-9 for the float64 arithmetic of drift.
  first, last = value_range
  magnitude = max(-first, last)
  margin = (plan.drift + 1e-9 + 4 * float(np.finfo(values_HW.dtype).eps)
            * (magnitude * scale + abs(offset) + num_levels + 1))
  unit = 1 << fraction_bits
  if not margin < 0.25:  # also inf: not near-uniform
    return None
  slack = math.ceil(margin * unit) + 1  # in units of a level's fraction
  if 4 * slack >= unit:
    return None
  value_type = values_HW.dtype.type
  position_HW = np.multiply(values_HW, value_type(scale * unit),
                            out=_scratch('row', values_HW.shape, values_HW.dtype))
  position_HW += value_type(offset * unit)
  # Outside [0.5, T + 0.5] the count is 0 or T, which the clipped position gives.
  if (first - lo) * scale + 1 < 0.75:
    np.maximum(position_HW, value_type(unit // 2), out=position_HW)
  if (last - lo) * scale + 1 > num_levels + 0.25:
    np.minimum(position_HW, value_type((num_levels + 0.5) * unit), out=position_HW)
  height, width = values_HW.shape
  keys_P = _scratch('keys', (grid.raster_P.size,), dtype)
  keys_RC = keys_P.reshape(grid.rows, grid.cols)
  keys_RC[:height, :width] = position_HW  # positions >= 0.5: truncation is floor
  keys_RC[:height, width:] = keys_RC[height:] = unit // 2  # the padding: count 0, level T
  # Pixels whose fraction lies within slack of a whole level.
  level_P = _scratch('level', keys_P.shape, dtype)  # the fraction first
  fraction_P = np.bitwise_and(keys_P, unit - 1, out=level_P)
  fraction_P -= slack  # wraps round below 0
  near = (fraction_P > unit - 1 - 2 * slack).nonzero()[0]
  if near.size:
    y, x = np.divmod(near, grid.cols)
    count = ascending_T.searchsorted(values_HW[y, x], 'left' if strict else 'right')
    keys_P[near] = count.astype(dtype) * unit + unit // 2
  np.right_shift(keys_P, fraction_bits, out=level_P)  # the count
  np.subtract(num_levels, level_P, out=level_P)
  keys_P <<= index_bits
  keys_P |= grid.raster32_P if dtype == np.uint32 else grid.raster_P.view(np.uint64)
  # Counts <= T: int32 holds them.
  return level_P.view(np.int32) if dtype == np.uint32 else level_P.astype(np.int32), keys_P


def _basins(keys_P: np.ndarray, index_bits: int, level_P: np.ndarray, num_levels: int,
            grid: _Grid) -> tuple[np.ndarray, int]:
  """Each 2 x 2 block's basin, 1..num_basins (0: in no mask), and num_basins.

  The ascent forest of the module docstring (step 2). Blocks in no mask may join a
  basin or none: their pixels, at level T, count nowhere.
  """
  index_mask = (1 << index_bits) - 1
  # row_P[i]: the highest key of i - 1, i, i + 1 (the padding columns keep rows apart).
  row_P = _scratch('row', keys_P.shape, keys_P.dtype)
  np.maximum(keys_P[:-1], keys_P[1:], out=row_P[:-1])
  row_P[-1] = keys_P[-1]
  np.maximum(row_P[1:], keys_P[:-1], out=row_P[1:])
  # Each block's top pixel.
  half = _scratch('events', (grid.rows // 2, 2, grid.cols // 2), keys_P.dtype)
  np.maximum(keys_P[0::2], keys_P[1::2], out=half.reshape(-1))
  top_K = np.maximum(half[:, 0], half[:, 1]).ravel()
  top_K &= index_mask
  top_K = top_K.astype(np.intp)
  # The highest key of the top pixel's 3 x 3 window: its rows above (the first row's
  # wraps round to the padding rows), at and below.
  pointer_K = row_P.take(top_K - grid.cols, mode='wrap')
  np.maximum(pointer_K, row_P.take(top_K), out=pointer_K)
  np.maximum(pointer_K, row_P.take(top_K + grid.cols, mode='wrap'), out=pointer_K)
  pointer_K &= index_mask
  pointer_K = grid.block_P.take(pointer_K.astype(np.intp))  # that pixel's block
  peaks = (pointer_K == grid.blocks_K).nonzero()[0]
  peaks = peaks[level_P.take(top_K[peaks]) < num_levels]
  basin_of_peak_K = np.zeros(pointer_K.size, np.int32)
  basin_of_peak_K[peaks] = np.arange(1, peaks.size + 1)
  return basin_of_peak_K.take(_roots(pointer_K)), peaks.size


def _roots(pointer_N: np.ndarray) -> np.ndarray:
  """Follows pointers (a root points to itself) to the root: pointer jumping."""
  jumped_N = np.empty_like(pointer_N)
  for jumps in range(pointer_N.size.bit_length() + 1):
    pointer_N.take(pointer_N, out=jumped_N, mode='clip')  # 'raise' would buffer out
    # Chains shorter than 8 are rare: the first checks would mostly be wasted.
    if jumps >= 2 and (jumped_N == pointer_N).all():
      break
    pointer_N, jumped_N = jumped_N, pointer_N
  return pointer_N


def _basin_joins(basin_K: np.ndarray, level_P: np.ndarray, grid: _Grid, num_levels: int,
                 num_basins: int) -> tuple[list[int], list[int], list[int]]:
  """(level, basin a, basin b) for each touching pair of basins, at their joining level.

  Sorted by level. Basins are 1..num_basins; 0 (blocks in no mask) never joins.
  Basins are unions of blocks, so they touch where blocks do. Two blocks side by side
  touch through four pixel pairs (each pixel of one's facing side with each of the
  other's), all in the mask from level max(the lower level of one side, the lower of
  the other); diagonal blocks touch through their facing corners.
  """
  cols, block_cols = grid.cols, grid.cols // 2
  # Right, lower, lower-right and lower-left neighbours. Every block but those of the
  # last block row has all four in the grid; a block of the first block column has
  # its lower-left one wrap round to the padding column.
  steps = np.array([1, block_cols, block_cols + 1, block_cols - 1])
  # Facing pixels from the block's top-left: its own two (or one, twice), then the
  # neighbour's.
  facing = np.array([[1, cols + 1, 2, cols + 2],
                     [cols, cols + 1, 2 * cols, 2 * cols + 1],
                     [cols + 1, cols + 1, 2 * cols + 2, 2 * cols + 2],
                     [cols, cols, 2 * cols - 1, 2 * cols - 1]])
  num = basin_K.size - block_cols - 1
  differ = np.empty((len(steps), num), bool)
  for direction, step in enumerate(steps.tolist()):
    np.not_equal(basin_K[:num], basin_K[step:num + step], out=differ[direction])
  found = differ.reshape(-1).nonzero()[0]  # direction by direction
  bounds = found.searchsorted(np.arange(len(steps) + 1) * num)
  per_direction = bounds[1:] - bounds[:-1]
  blocks = found - (np.arange(len(steps)) * num).repeat(per_direction)
  pixels = facing.repeat(per_direction, axis=0)
  pixels += grid.top_left_K.take(blocks)[:, None]
  level = level_P.take(pixels)
  join = np.maximum(np.minimum(level[:, 0], level[:, 1]), np.minimum(level[:, 2], level[:, 3]))
  a = basin_K.take(blocks)
  b = basin_K.take(blocks + steps.repeat(per_direction))
  pair = np.minimum(a, b).astype(np.intp)
  pair *= num_basins + 1
  pair += np.maximum(a, b)
  # The earliest join of each pair of basins; level T (pixels in no mask) is no join.
  if (num_basins + 1)**2 <= basin_K.size:
    earliest = np.full((num_basins + 1)**2, num_levels, join.dtype)
    np.minimum.at(earliest, pair, join)
    pair = (earliest < num_levels).nonzero()[0]
    join = earliest[pair]
  else:  # many basins: sort by (pair, level) and keep each pair's first
    pair, join = np.divmod(np.sort(pair * (num_levels + 1) + join), num_levels + 1)
    first = np.ones(pair.size, bool)
    first[1:] = pair[1:] != pair[:-1]
    first &= join < num_levels
    pair, join = pair[first], join[first]
  lo, hi = np.divmod(pair, num_basins + 1)
  order = join.argsort(kind='stable')
  return join[order].tolist(), lo[order].tolist(), hi[order].tolist()


def _leaf_order(joins: tuple[list[int], list[int], list[int]], num_basins: int,
                num_levels: int) -> tuple[np.ndarray, np.ndarray]:
  """Kruskal over the basin graph: a basin order and the level joining each to the next.

  Returns (order, join): basins 1..num_basins in an order in which the basins of every
  component at every level are consecutive, and join[i], the level from which
  order[i] and order[i + 1] are in one component (num_levels: never).
  """
  parent = list(range(num_basins + 1))
  head = list(range(num_basins + 1))
  tail = list(range(num_basins + 1))
  successor = [0] * (num_basins + 1)
  join_next = [num_levels] * (num_basins + 1)

  def find(node):
    while parent[node] != node:
      parent[node] = parent[parent[node]]
      node = parent[node]
    return node

  for level, a, b in zip(*joins):
    root_a, root_b = find(a), find(b)
    if root_a == root_b:
      continue
    # Append b's list of basins to a's; the two ends meet at this level.
    successor[tail[root_a]] = head[root_b]
    join_next[tail[root_a]] = level
    tail[root_a] = tail[root_b]
    parent[root_b] = root_a
  order = []
  for basin in range(1, num_basins + 1):
    if parent[basin] == basin:
      node = head[basin]
      while True:
        order.append(node)
        if node == tail[basin]:
          break
        node = successor[node]
  order = np.array(order, np.intp)
  return order, np.array(join_next, np.int64)[order]


def _sweep(map_HW: ArrayLike, thresholds_T: ArrayLike, strict: bool,
           want_components: bool) -> SweepBoxes:
  values_HW, plan, value_range = _check_inputs(map_HW, thresholds_T)
  height, width = values_HW.shape
  num_levels = len(plan.level_T)
  whole_4 = np.array([0, 0, width - 1, height - 1], np.int32)
  if num_levels == 0:
    return SweepBoxes(np.zeros((0, 4), np.int32), [])
  grid = _grid(height, width)

  # 1. Levels: level j holds the pixels passing the (j+1)-th highest threshold, so the
  # mask at that threshold is "level <= j"; T means no mask holds the pixel.
  level_P, keys_P, index_bits = _levels_and_keys(values_HW, plan, strict, value_range, grid)

  # 2. Ascent forest of blocks, and basins.
  basin_K, num_basins = _basins(keys_P, index_bits, level_P, num_levels, grid)
  if num_basins == 0:  # no pixel passes any threshold
    return SweepBoxes(np.tile(whole_4, (num_levels, 1)),
                      [whole_4[None].copy() for _ in range(num_levels)] if want_components
                      else [])

  # 3. Merge order of the basins; blocks' basins renumbered 0..B-1 in that order.
  order_B, join_B = _leaf_order(
      _basin_joins(basin_K, level_P, grid, num_levels, num_basins), num_basins, num_levels)
  leaf = np.zeros(num_basins + 1, np.int32)
  leaf[order_B] = np.arange(num_basins)
  leaf_K = leaf.take(basin_K)

  # 4. Statistics per level and basin, then per component.
  largest, component_rows, component_levels = [], [], []
  for start, tables in _level_tables(level_P, leaf_K, grid, num_basins, num_levels):
    block_largest, block_rows, block_levels = _components(
        tables, join_B, start, level_P, leaf_K, grid, want_components)
    largest.append(block_largest)
    component_rows.append(block_rows)
    component_levels.append(block_levels)
  largest_L4 = largest[0] if len(largest) == 1 else np.concatenate(largest)

  level_T = plan.level_T
  largest_T4 = largest_L4[level_T]
  if not want_components:
    return SweepBoxes(largest_T4, [])
  rows_M4 = np.concatenate(component_rows)
  per_level = np.split(rows_M4, np.cumsum(np.bincount(np.concatenate(component_levels),
                                                      minlength=num_levels))[:-1])
  components = [per_level[j] if len(per_level[j]) else whole_4[None].copy() for j in level_T]
  return SweepBoxes(largest_T4, components)


def _level_tables(level_P: np.ndarray, leaf_K: np.ndarray, grid: _Grid, num_basins: int,
                  num_levels: int):
  """Each basin's pixel count and box over its pixels at levels <= j, for every level j.

  Yields (start, tables) per block of levels [start, start + L): tables (5, L + 2, B)
  int64 holding pixel count, first row, -(last row), first column, -(last column)
  (maxima negated, so that all four extents combine by minimum), basins in leaf order.
  Row 0 is the previous block's last, rows 1..L the block's levels, row L + 1 neutral
  (no pixel: 0, rows, 1, cols, 1). One block unless the tables would pass
  _MAX_TABLE_CELLS cells per statistic. The module docstring (step 4) gives the events.
  The tables live in a scratch buffer: each block is to be used before the next.
  """
  rows, cols = grid.rows, grid.cols
  half = level_P.size // 2
  # Events (level + 1) * B + basin: row 0 of every table carries the previous block's
  # last, and level T (in no mask) lands past the last block's tables. Made in int32
  # where it fits, then widened once: mixed-type arithmetic is slower.
  cell_type = np.int32 if (num_levels + 2) * num_basins < 1 << 31 else np.int64
  cell_3H = _scratch('cell', (3, half), cell_type)
  # A block's two pixels in a column: lower level, higher level; in a row: lower level.
  level_B2C = level_P.reshape(rows // 2, 2, cols)
  np.minimum(level_B2C[:, 0], level_B2C[:, 1], out=cell_3H[0].reshape(rows // 2, cols))
  np.maximum(level_B2C[:, 0], level_B2C[:, 1], out=cell_3H[1].reshape(rows // 2, cols))
  level_RK2 = level_P.reshape(rows, cols // 2, 2)
  np.minimum(level_RK2[..., 0], level_RK2[..., 1], out=cell_3H[2].reshape(rows, cols // 2))
  cell_3H *= num_basins
  leaf_BK = leaf_K.reshape(rows // 2, cols // 2) + num_basins
  cell_3H[:2] += leaf_BK.repeat(2, axis=1).reshape(-1)
  cell_3H[2] += leaf_BK.repeat(2, axis=0).reshape(-1)
  event_cell = _scratch('events', (3 * half,), np.intp)
  np.copyto(event_cell, cell_3H.reshape(-1))
  # Counts: a column's two pixels are in from its lower level and from its higher.
  events = [(event_cell[:2 * half], None), (event_cell[2 * half:], grid.row_RK),
            (event_cell[:half], grid.column_P[:half])]
  block = max(1, _MAX_TABLE_CELLS // num_basins)
  carry = np.array([[0], [rows], [1], [cols], [1]]) + np.zeros(num_basins, np.int64)
  for start in range(0, num_levels, block):
    num_rows = min(block, num_levels - start)
    cells = (num_rows + 2) * num_basins
    if num_rows < num_levels:  # the events at levels [start, start + num_rows)
      selected = []
      for cell, value in events:
        inside = ((cell >= (start + 1) * num_basins)
                  & (cell < (start + 1 + num_rows) * num_basins)).nonzero()[0]
        selected.append((cell.take(inside) - start * num_basins,
                         None if value is None else value.take(inside)))
    else:
      selected = events
    (count_cell, _), (row_cell, row), (column_cell, column) = selected
    # Tables (5, rows + 2, B): count, then the extents, each statistic's row 0 the carry.
    tables = _scratch('tables', (5, num_rows + 2, num_basins), np.int64)
    tables[0] = np.bincount(count_cell, minlength=cells).reshape(num_rows + 2, num_basins)
    tables[1:] = np.array([[[rows]], [[-1]], [[cols]], [[-1]]])
    flat = tables.reshape(-1)
    np.minimum.at(flat[cells:], row_cell, row)
    np.maximum.at(flat[2 * cells:], row_cell, row)
    np.minimum.at(flat[3 * cells:], column_cell, column)
    np.maximum.at(flat[4 * cells:], column_cell, column)
    tables[2::2] *= -1
    tables[:, 0] = carry
    np.cumsum(tables[0], axis=0, out=tables[0])
    for statistic in tables[1:]:
      np.minimum.accumulate(statistic, axis=0, out=statistic)
    carry = tables[:, num_rows].copy()
    # Row num_rows + 1 neutral (no pixel), so that reductions may run past the last row.
    tables[:, -1] = np.array([[0], [rows], [1], [cols], [1]])
    yield start, tables


def _components(tables: np.ndarray, join_B: np.ndarray, start: int, level_P: np.ndarray,
                leaf_K: np.ndarray, grid: _Grid,
                want_components: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Components at the block's levels from the basins' tables (`_level_tables`).

  Returns (largest, rows, levels): largest (L, 4) boxes per level, the whole image's
  where the mask is empty; rows (M, 4), the boxes of every component, by level then first pixel in
  raster order; levels (M,), each row's level. rows and levels are empty unless
  want_components.
  """
  num_rows, num_basins = tables.shape[1] - 2, tables.shape[2]
  # Basins in leaf order: at level j a component starts wherever basins i - 1 and i
  # are not yet joined.
  starts_LB = np.ones((num_rows, num_basins), bool)
  starts_LB[:, 1:] = join_B[None, :-1] > np.arange(start, start + num_rows)[:, None]
  starts = starts_LB.reshape(-1).nonzero()[0]
  # The tables from row 1 on; the last component runs into the neutral last row.
  flat = tables.reshape(5, -1)[:, num_basins:]
  count = np.add.reduceat(flat[0], starts)
  extent = np.minimum.reduceat(flat[1:], starts, axis=1)
  first_row = extent[0]
  level = starts // num_basins

  def boxes(groups):
    """(x0, y0, x1, y1) of these groups, int32."""
    return (extent[:, groups][[2, 0, 3, 1]] * _BOX_SIGNS).T.astype(np.int32)

  def first_pixels(groups):
    """Index (in the padded layout) of these groups' first pixels in raster order.

    Scans each group's first row between its first and last columns for the first
    pixel at its level or below in one of its basins.
    """
    first = first_row[groups] * grid.cols + extent[2, groups]
    width = 1 - extent[3, groups] - extent[2, groups]
    ends = width.cumsum()
    pixels = (first - ends + width).repeat(width) + np.arange(ends[-1])
    level_N = level_P.take(pixels)
    leaf_N = leaf_K.take(grid.block_P.take(pixels))
    leaf_N += (level[groups] * num_basins).repeat(width)  # comparable with starts
    group_end = np.concatenate([starts[1:], [starts_LB.size]])[groups]
    np.minimum(group_end, (level[groups] + 1) * num_basins, out=group_end)
    outside = ((level_N > (start + level[groups]).repeat(width))
               | (leaf_N < starts[groups].repeat(width)) | (leaf_N >= group_end.repeat(width)))
    pixels[outside] = level_P.size
    return np.minimum.reduceat(pixels, ends - width)

  # Largest: most pixels, then the first pixel in raster order (scipy's label order),
  # looked for only where counts tie.
  level_start = starts.searchsorted(np.arange(num_rows) * num_basins)
  best = np.maximum.reduceat(count, level_start)
  chosen = ((count == best[level]) & (count > 0)).nonzero()[0]
  tied = np.zeros(chosen.size, bool)
  tied[1:] = level[chosen[1:]] == level[chosen[:-1]]
  if tied.any():
    tied[:-1] |= tied[1:]
    first = np.zeros(chosen.size, np.int64)
    first[tied] = first_pixels(chosen[tied])
    chosen = chosen[np.lexsort((first, level[chosen]))]
    keep = np.ones(chosen.size, bool)
    keep[1:] = level[chosen[1:]] != level[chosen[:-1]]
    chosen = chosen[keep]
  # An empty mask gives the whole image.
  largest_L4 = np.tile(np.array([0, 0, grid.width - 1, grid.height - 1], np.int32),
                       (num_rows, 1))
  largest_L4[level[chosen]] = boxes(chosen)
  if not want_components:
    return largest_L4, np.zeros((0, 4), np.int32), np.zeros(0, np.intp)
  # Every component, by level then first pixel: by first row, and where two share a
  # first row, by first pixel.
  live = (count > 0).nonzero()[0]
  live = live[np.lexsort((first_row[live], level[live]))]
  shared = np.zeros(live.size, bool)
  shared[1:] = ((level[live[1:]] == level[live[:-1]])
                & (first_row[live[1:]] == first_row[live[:-1]]))
  if shared.any():
    shared[:-1] |= shared[1:]
    first = first_row[live] * grid.cols
    first[shared] = first_pixels(live[shared])
    live = live[np.lexsort((first, level[live]))]
  return largest_L4, boxes(live), level[live] + start

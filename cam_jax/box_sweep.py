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
   mask holds it (T: none), so that the mask at the j-th highest τ is "level <= j".
2. Ascent forest. Pixels are ordered by value, ties by raster index (a total order).
   Each pixel points to the highest pixel of its 3 x 3 window; the pixels that point to
   themselves are the peaks. Pointer jumping gives every pixel the peak its chain ends
   at: its basin. Values never fall along a chain, so a pixel in a mask reaches its
   peak without leaving the mask: at every τ, the part of a basin in the mask is
   connected (or empty).
3. Basin graph. A component at τ is therefore a union of basins, joined wherever two
   8-adjacent pixels of different basins are both in the mask. Two basins join at the
   first level (highest τ) whose mask holds both pixels of a touching pair. Kruskal's
   algorithm over this small graph (a node per local maximum: tens for a CAM) gives
   the merges, and an order of the basins in which every component at every level is a
   run of consecutive basins.
4. Statistics. Per basin and level: pixel count, first and last raster index, first
   and last column (one bincount and four `ufunc.at` over the pixels), accumulated over
   levels; a component's statistics at a level are reductions over its run of basins
   (`reduceat`, all levels at once). Its box's rows are those of its first and last
   raster index; the first raster index is also the tie-break and the label order.

Costs for N pixels: about thirty whole-map numpy passes, log2(longest ascent chain)
pointer jumps, then O(T x basins) work on small tables; Python loops run over basin
pairs only, never over pixels or thresholds. A map with very many local maxima (noise)
has as many basins; the level tables are then built in blocks of levels so that memory
stays bounded, and the sweep, still exact, is about as slow as labelling at each τ
(1.5x slower on 224 x 224 uniform noise with 100 thresholds).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

# The most (levels x basins) cells a level table holds at once; past it, blocks of levels.
_MAX_TABLE_CELLS = 1 << 20


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


def _check_inputs(map_HW: ArrayLike, thresholds_T: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """The map and the thresholds in the comparison dtype (module docstring)."""
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
  if np.isnan(thresholds_T).any():
    raise ValueError('thresholds_T holds nan')
  # float64 -> float32 rounds to nearest, as NumPy converts a Python float compared
  # with a float32 array; past float32's range, to ±inf, which compares the same.
  with np.errstate(over='ignore'):
    return values_HW, thresholds_T.astype(dtype)


def _count_passed(values_N: np.ndarray, ascending_T: np.ndarray, strict: bool) -> np.ndarray:
  """For each value, how many thresholds it passes (`>=`, or `>` when strict), intp.

  Equals `np.searchsorted(ascending_T, values_N, 'left' if strict else 'right')`. A
  guess from a uniform grid, checked against the two thresholds around it, is ~5x
  faster; the values it misses (a non-uniform grid) go to searchsorted.
  """
  side = 'left' if strict else 'right'
  num = len(ascending_T)
  lo, hi = float(ascending_T[0]), float(ascending_T[-1])
  scale = (num - 1) / (hi - lo) if hi > lo else np.inf
  if num < 8 or not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(scale)):
    return np.searchsorted(ascending_T, values_N, side)
  dtype = ascending_T.dtype.type
  with np.errstate(over='ignore', invalid='ignore'):
    guess = values_N * dtype(scale)
    guess += dtype(1 - lo * scale)  # (value - lo) * scale + 1, >= 0 from value >= lo
    np.clip(guess, 0, num, out=guess)
    count = guess.astype(np.intp)
  # Row c: the last threshold passed and the first one not passed if the count is c.
  inf = np.array([np.inf], ascending_T.dtype)
  padded = np.concatenate([-inf, ascending_T, inf])
  around = np.take(np.stack([padded[:-1], padded[1:]], axis=1), count, axis=0)
  if strict:
    right = (around[:, 0] < values_N) & (values_N <= around[:, 1])
  else:
    right = (around[:, 0] <= values_N) & (values_N < around[:, 1])
  if not right.all():
    wrong = np.flatnonzero(~right)
    count[wrong] = np.searchsorted(ascending_T, values_N[wrong], side)
  return count


def _ascent_pointers(values_HW: np.ndarray, level_N: np.ndarray, num_levels: int,
                     pixels_N: np.ndarray) -> np.ndarray:
  """Each pixel's highest pixel in its 3 x 3 window (itself at a peak), as a flat index.

  Pixels are ordered by an int64 key: (value, raster index), the index in the low bits,
  so that keys are distinct (a chain never cycles, even on a plateau) and the window's
  maximum key (rows, then columns) names its pixel. The value part is a float32 copy of
  the values viewed as integers with the sign bits folded, which keeps their order (it
  puts -0.0 below +0.0: any order among equal values will do). For a map not in
  float32, rounding to float32 may tie values on both sides of a threshold; the level
  in the high bits then keeps them in order, so that a key never rises where the level
  does not fall.
  """
  height, width = values_HW.shape
  index_bits = max(1, (values_HW.size - 1).bit_length())
  with np.errstate(over='ignore'):  # beyond float32's range: inf, still in order
    bits_HW = values_HW.astype(np.float32, copy=False).view(np.int32)
  folded_HW = bits_HW >> 31
  folded_HW &= 0x7FFFFFFF
  folded_HW ^= bits_HW
  padded = np.full((height + 2, width + 2), -1, np.int64)  # below every key
  keys_HW = padded[1:-1, 1:-1]
  keys_HW[...] = folded_HW
  keys_HW += 1 << 31  # the value's rank as an integer in [0, 2**32)
  room = 63 - index_bits
  if values_HW.dtype == np.float32 and room >= 32:
    keys_HW <<= index_bits
  else:
    value_bits = min(32, room - num_levels.bit_length())
    if value_bits < 1:
      raise ValueError(f'{values_HW.size} pixels and {num_levels} thresholds overflow the keys')
    keys_HW >>= 32 - value_bits
    keys_HW <<= index_bits
    keys_HW |= (num_levels - level_N.reshape(height, width)) << (value_bits + index_bits)
  keys_HW |= pixels_N.reshape(height, width)
  rows = np.maximum(padded[:, :-2], padded[:, 1:-1])
  np.maximum(rows, padded[:, 2:], out=rows)
  best_HW = np.maximum(rows[:-2], rows[1:-1])
  np.maximum(best_HW, rows[2:], out=best_HW)
  best_HW &= (1 << index_bits) - 1
  return best_HW.ravel()


def _roots(pointer_N: np.ndarray) -> np.ndarray:
  """Follows pointers (a root points to itself) to the root: pointer jumping."""
  jumped_N = np.empty_like(pointer_N)
  while True:
    np.take(pointer_N, pointer_N, out=jumped_N, mode='clip')  # 'raise' would buffer out
    if np.array_equal(jumped_N, pointer_N):
      return pointer_N
    pointer_N, jumped_N = jumped_N, pointer_N


def _basin_joins(basin_N: np.ndarray, level_N: np.ndarray, height: int, width: int,
                 num_levels: int, num_basins: int) -> tuple[list[int], list[int], list[int]]:
  """(level, basin a, basin b) for each touching pair of basins, at their joining level.

  Sorted by level. Basins are 1..num_basins; 0 (pixels in no mask) never joins.
  """
  basin_HW = basin_N.reshape(height, width)
  # Each unordered 8-neighbour pair is seen once, from its upper or left pixel p: right,
  # down-left, down, down-right. Two comparisons find every p that starts a differing
  # pair: a diagonal pair differs only if some step of a two-step path between its
  # pixels does, p -> right -> below it (down-right), p -> left -> below it (down-left).
  right_HW = np.zeros((height, width), bool)
  right_HW[:, :-1] = basin_HW[:, :-1] != basin_HW[:, 1:]
  down_HW = np.zeros((height, width), bool)
  down_HW[:-1] = basin_HW[:-1] != basin_HW[1:]
  border_HW = right_HW | down_HW
  border_HW[:, :-1] |= down_HW[:, 1:]
  border_HW[:, 1:] |= right_HW[:, :-1] | down_HW[:, :-1]
  here = np.flatnonzero(border_HW)
  # A neighbour off the image is the pixel itself, which never differs from itself.
  row, col = np.divmod(here, width)
  there = np.stack([here + 1, here + width - 1, here + width, here + width + 1], axis=1)
  there[col == width - 1, 0::3] = here[col == width - 1, None]
  there[col == 0, 1] = here[col == 0]
  there[row == height - 1, 1:] = here[row == height - 1, None]
  there = there.ravel()
  pair = np.flatnonzero(np.take(basin_N, there) != np.repeat(np.take(basin_N, here), 4))
  here, there = here[pair >> 2], there[pair]
  a, b = np.take(basin_N, here), np.take(basin_N, there)
  join = np.maximum(np.take(level_N, here), np.take(level_N, there))
  keep = join < num_levels  # both pixels in some mask
  lo, hi, join = np.minimum(a, b)[keep], np.maximum(a, b)[keep], join[keep]
  # The earliest join of each pair of basins.
  if (num_basins + 1)**2 <= 4 * basin_N.size:
    earliest = np.full((num_basins + 1)**2, num_levels, np.int64)
    np.minimum.at(earliest, lo * (num_basins + 1) + hi, join)
    pair = np.flatnonzero(earliest < num_levels)
    join = earliest[pair]
  else:  # many basins: sort by (pair, level) and keep each pair's first
    pair = lo.astype(np.int64) * (num_basins + 1) + hi
    pair, join = np.divmod(np.sort(pair * (num_levels + 1) + join), num_levels + 1)
    first = np.ones(pair.size, bool)
    first[1:] = pair[1:] != pair[:-1]
    pair, join = pair[first], join[first]
  lo, hi = np.divmod(pair, num_basins + 1)
  order = np.argsort(join, kind='stable')
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
  values_HW, thresholds_T = _check_inputs(map_HW, thresholds_T)
  height, width = values_HW.shape
  num_pixels = height * width
  num_levels = len(thresholds_T)
  whole_4 = np.array([0, 0, width - 1, height - 1], np.int32)
  if num_levels == 0:
    return SweepBoxes(np.zeros((0, 4), np.int32), [])

  # 1. Levels: level j holds the pixels passing the (j+1)-th highest threshold, so the
  # mask at that threshold is "level <= j"; T means no mask holds the pixel.
  ascending = np.argsort(thresholds_T, kind='stable')
  level_N = _count_passed(values_HW.ravel(), thresholds_T[ascending], strict)
  np.subtract(num_levels, level_N, out=level_N)
  in_some_mask_N = level_N < num_levels

  # 2. Ascent forest and basins.
  pixels_N = np.arange(num_pixels)
  pointer_N = _ascent_pointers(values_HW, level_N, num_levels, pixels_N)
  peaks = np.flatnonzero(pointer_N == pixels_N)
  if not in_some_mask_N.all():
    peaks = peaks[in_some_mask_N[peaks]]
    # Pixels in no mask become roots of their own, outside every basin.
    pointer_N = np.where(in_some_mask_N, pointer_N, pixels_N)
  num_basins = peaks.size
  if num_basins == 0:  # no pixel passes any threshold
    return SweepBoxes(np.tile(whole_4, (num_levels, 1)),
                      [whole_4[None].copy() for _ in range(num_levels)] if want_components
                      else [])
  basin_of_peak_N = np.zeros(num_pixels, np.int32)
  basin_of_peak_N[peaks] = np.arange(1, num_basins + 1)
  basin_N = np.take(basin_of_peak_N, _roots(pointer_N))  # 0 outside every mask

  # 3. Merge order of the basins.
  order_B, join_B = _leaf_order(
      _basin_joins(basin_N, level_N, height, width, num_levels, num_basins),
      num_basins, num_levels)

  # 4. Statistics per level and component, in blocks of levels.
  block = max(1, _MAX_TABLE_CELLS // num_basins)
  if block >= num_levels:
    blocks = [(0, num_levels, None)]
  else:
    # Block i holds levels [i * block, (i + 1) * block) and, in the last block, the pixels
    # in no mask (level T, basin 0, which no table keeps).
    by_level = np.argsort(level_N, kind='stable')
    starts = list(range(0, num_levels, block))
    bounds = np.searchsorted(level_N[by_level], starts + [num_levels + 1])
    blocks = [(start, min(start + block, num_levels), by_level[bounds[i]:bounds[i + 1]])
              for i, start in enumerate(starts)]
  carry = None
  largest, component_rows, component_levels = [], [], []
  for start, stop, pixels in blocks:
    tables, carry = _level_tables(level_N, basin_N, pixels_N if pixels is None else pixels,
                                  pixels is None, width, num_basins, start, stop, carry)
    block_largest, block_rows, block_levels = _components(
        tables, order_B, join_B, start, num_pixels, width, want_components)
    largest.append(block_largest)
    component_rows.append(block_rows)
    component_levels.append(block_levels)
  largest_L4 = np.concatenate(largest)
  largest_L4[(largest_L4 < 0).any(axis=1)] = whole_4

  # Row t is the level of thresholds_T[t]: its rank from the top.
  level_T = np.empty(num_levels, np.intp)
  level_T[ascending] = np.arange(num_levels - 1, -1, -1)
  largest_T4 = largest_L4[level_T]
  if not want_components:
    return SweepBoxes(largest_T4, [])
  rows_M4 = np.concatenate(component_rows)
  per_level = np.split(rows_M4, np.cumsum(np.bincount(np.concatenate(component_levels),
                                                      minlength=num_levels))[:-1])
  components = [per_level[j] if len(per_level[j]) else whole_4[None].copy() for j in level_T]
  return SweepBoxes(largest_T4, components)


def _level_tables(level_N: np.ndarray, basin_N: np.ndarray, pixels: np.ndarray,
                  all_pixels: bool, width: int, num_basins: int, start: int, stop: int,
                  carry: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
  """Each basin's statistics over its pixels at levels <= j, for j in [start, stop).

  Args:
    level_N, basin_N: every pixel's level and basin (0: in no mask).
    pixels: the raster indices of the pixels at levels [start, stop) (and maybe of
      pixels in no mask).
    all_pixels: whether `pixels` is every pixel in raster order (a single block).
    carry: the previous block's last row, or None for the first block.

  Returns (tables, carry): tables (5, stop - start, num_basins) int64 holding pixel
  count, first raster index, -(last raster index), first column, -(last column) (maxima
  negated, so that every statistic but the count combines by minimum); carry, the
  (5, num_basins) row at stop - 1 for the next block.
  """
  num_rows, num_cols = stop - start, num_basins + 1
  if all_pixels:  # a single block: no gathers
    level, basin = level_N, basin_N
    column = np.broadcast_to(np.arange(width), (level_N.size // width, width)).ravel()
  else:
    level, basin = level_N[pixels], basin_N[pixels]
    column = pixels % width
  # Row num_rows catches the pixels in no mask (level T, basin 0: column 0, dropped).
  cell = level - start
  cell *= num_cols
  cell += basin
  tables = np.empty((5, num_rows + 1, num_cols), np.int64)
  flat = tables.reshape(5, -1)
  flat[0] = np.bincount(cell, minlength=flat.shape[1])
  flat[1:].fill(-1)
  flat[1].fill(np.iinfo(np.int64).max)
  flat[3].fill(width)
  np.minimum.at(flat[1], cell, pixels)
  np.maximum.at(flat[2], cell, pixels)
  np.minimum.at(flat[3], cell, column)
  np.maximum.at(flat[4], cell, column)
  flat[2::2] *= -1
  tables = tables[:, :num_rows, 1:]
  if carry is not None:
    tables = np.concatenate([carry[:, None], tables], axis=1)
  np.cumsum(tables[0], axis=0, out=tables[0])
  np.minimum.accumulate(tables[1:], axis=1, out=tables[1:])
  if carry is not None:
    tables = tables[:, 1:]
  return tables, tables[:, -1].copy()


def _components(tables: np.ndarray, order_B: np.ndarray, join_B: np.ndarray, start: int,
                num_pixels: int, width: int,
                want_components: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Components at the block's levels from the basins' tables.

  Returns (largest, rows, levels): largest (L, 4) boxes per level, -1 where the mask is
  empty; rows (M, 4), the boxes of every component, by level then first raster index;
  levels (M,), each row's level. rows and levels are empty unless want_components.
  """
  num_rows = tables.shape[1]
  num_basins = order_B.size
  levels = np.arange(start, start + num_rows)
  # Basins in leaf order: at level j a component starts wherever order[i - 1] and
  # order[i] are not yet joined.
  tables = np.take(tables, order_B - 1, axis=2)  # a new C-ordered array: reshapes are views
  starts_LB = np.ones((num_rows, num_basins), bool)
  starts_LB[:, 1:] = join_B[None, :-1] > levels[:, None]
  starts = np.flatnonzero(starts_LB)
  flat = tables.reshape(5, -1)
  count = np.add.reduceat(flat[0], starts)
  stats = np.minimum.reduceat(flat[1:], starts, axis=1)
  level = starts // num_basins
  boxes_G4 = np.stack([stats[2], stats[0] // width, -stats[3], -stats[1] // width], axis=1)
  # Largest: most pixels, then the earliest first pixel; first raster indices differ.
  score = count * (num_pixels + 1) + (num_pixels - np.minimum(stats[0], num_pixels))
  # Every level's first basin starts a component: where each level's run of groups begins.
  level_start = np.searchsorted(starts, np.arange(num_rows) * num_basins)
  best = np.maximum.reduceat(score, level_start)
  largest_L4 = np.full((num_rows, 4), -1, np.int64)
  chosen = (score == best[level]) & (count > 0)
  largest_L4[level[chosen]] = boxes_G4[chosen]
  if not want_components:
    return largest_L4.astype(np.int32), np.zeros((0, 4), np.int32), np.zeros(0, np.intp)
  live = np.flatnonzero(count > 0)
  live = live[np.lexsort((stats[0][live], level[live]))]
  return (largest_L4.astype(np.int32), boxes_G4[live].astype(np.int32),
          level[live] + start)

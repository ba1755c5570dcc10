"""The released box generator of zhoubolei/CAM (`bboxgenerator/dt_box.cpp`, `dt.c`),
reproduced step by step.

  boxes_N4 = cam_official.dt_boxes(heat_HW_uint8, thresholds=(20, 100, 110))

gives the `(x, y, w, h)` rows the released `dt_box` program prints for a heat map (the
8-bit map `generate_bbox.m` writes and reads back), in its order. Its steps:

1. For each threshold t: the mask `heat > t` (`cvThreshold`, THRESH_BINARY).
2. `dt_binary`: the Euclidean distance of each mask pixel to the nearest background pixel
   (Felzenszwalb and Huttenlocher's exact transform; scipy's exact EDT gives the same
   doubles), multiplied by `255 / (max - min)` and rounded half up to 8 bits; an image
   whose distances are all equal (no background, or no foreground) is left as the mask.
   `dt_scaled` is this step.
3. The scaled distances `> 10` (a second `cvThreshold`): the thin parts of the mask go.
4. `cv::findContours(RETR_CCOMP, CHAIN_APPROX_SIMPLE)`: outer contours and hole contours;
   each one's `boundingRect`, clipped by their `LIMIT` rule with a 5-pixel margin
   (`clip_rect`). Thresholds in order, contours in OpenCV's order.
5. All rectangles ranked by area, largest first, with `std::sort` (libstdc++'s introsort:
   `libstdcxx_sort`; it is not stable, and the order of equal areas decides which box
   comes first).
6. `mergeBBox`: for each rectangle in order, every later one that overlaps it by more
   than half the larger area is erased, and, because the loop index still advances after
   an erase, the rectangle just after an erased one is skipped (`merge_rects`).

Where this differs from the released binary: OpenCV's contour order is that of the
installed OpenCV (the release was built against OpenCV 2.4; the order of contours only
matters for rectangles of equal area), and the sort is GCC >= 4.8's libstdc++.
"""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np
from scipy import ndimage

DEFAULT_THRESHOLDS = (20, 100, 110)  # generate_bbox.m's bbox_threshold
_SORT_THRESHOLD = 16  # libstdc++'s _S_threshold
Rect = tuple[int, int, int, int]  # (x, y, w, h), OpenCV's CvRect


def dt_scaled(mask_HW: np.ndarray) -> np.ndarray:
  """`dt_binary` of dt.c: the distance to the background scaled to 0-255, uint8.

  `m * 255 / (max - min)` rounded as `(int)(t + 0.5)`, clipped to 0-255; min is 0 when
  there is background. When every distance is equal (an all-background or
  all-foreground mask) dt.c returns early and the image stays the binary mask (0/255).
  """
  mask_HW = np.asarray(mask_HW, bool)
  if not mask_HW.any() or mask_HW.all():
    return np.where(mask_HW, 255, 0).astype(np.uint8)
  distance = ndimage.distance_transform_edt(mask_HW)  # float64, exact: sqrt of integers
  low, high = distance.min(), distance.max()
  scale = 255.0 / (high - low)
  return np.clip(np.floor(distance * scale + 0.5), 0, 255).astype(np.uint8)


def clip_rect(rect: Rect, width: int, height: int) -> Rect:
  """dt_box.cpp's clipping of a bounding rectangle: x and y to [0, W-5] and [0, H-5],
  width and height to [0, W - x - 5] and [0, H - y - 5] with the *unclipped* x, y."""
  x, y, w, h = (int(v) for v in rect)
  limit = lambda v, lo, hi: lo if v < lo else (hi if v > hi else v)  # pylint: disable=unnecessary-lambda-assignment
  return (limit(x, 0, width - 5), limit(y, 0, height - 5), limit(w, 0, width - x - 5),
          limit(h, 0, height - y - 5))


def contour_rects(binary_HW: np.ndarray) -> list[Rect]:
  """Bounding rectangles of every contour, hole contours included (RETR_CCOMP), in
  OpenCV's order."""
  contours, _ = cv2.findContours(np.ascontiguousarray(binary_HW, np.uint8), cv2.RETR_CCOMP,
                                 cv2.CHAIN_APPROX_SIMPLE)
  return [tuple(int(v) for v in cv2.boundingRect(c)) for c in contours]


def big_overlap(a: Rect, b: Rect) -> bool:
  """dt_box.cpp's rule: the overlap exceeds half the larger area (`int` of it)."""
  t = int(max(a[2] * a[3], b[2] * b[3]) * 0.5)
  x_overlap = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
  y_overlap = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
  return x_overlap * y_overlap > t


def merge_rects(rects: Sequence[Rect]) -> list[Rect]:
  """`mergeBBox`: erase each later rectangle that overlaps an earlier one too much; the
  loop's `++j` after an erase skips the rectangle that moved into the erased place."""
  rects = list(rects)
  i = 0
  while i < len(rects):
    j = i + 1
    while j < len(rects):
      if big_overlap(rects[i], rects[j]):
        del rects[j]
      j += 1
    i += 1
  return rects


def dt_boxes(heat_HW_uint8: np.ndarray,
             thresholds: Sequence[int] = DEFAULT_THRESHOLDS) -> np.ndarray:
  """The released box generator: `(N, 4)` int `(x, y, w, h)` rows in its output order.

  `thresholds`: three increasing values in (0, 255); `dt_box` ignores others and keeps
  its defaults (30, 90, 150), which is refused here instead.
  """
  heat = np.asarray(heat_HW_uint8)
  if heat.ndim != 2 or heat.dtype != np.uint8:
    raise ValueError(f'dt_boxes takes an H×W uint8 heat map, got {heat.dtype} {heat.shape}')
  t0, t1, t2 = (int(t) for t in thresholds)
  if not 0 < t0 < t1 < t2 < 255:
    raise ValueError(f'thresholds must satisfy 0 < t0 < t1 < t2 < 255 (dt_box silently '
                     f'falls back to 30, 90, 150 otherwise), got {tuple(thresholds)}')
  height, width = heat.shape
  rects = []
  for t in (t0, t1, t2):
    kept = dt_scaled(heat > t) > 10
    rects += [clip_rect(r, width, height) for r in contour_rects(kept.astype(np.uint8) * 255)]
  libstdcxx_sort(rects, lambda a, b: a[2] * a[3] > b[2] * b[3])
  return np.asarray(merge_rects(rects), np.int64).reshape(-1, 4)


# ---------------------------------------------------------------------------
# libstdc++'s std::sort (bits/stl_algo.h, GCC >= 4.8): introsort, then insertion sort
# ---------------------------------------------------------------------------

def libstdcxx_sort(items: list, less: Callable[[object, object], bool]) -> None:
  """Sorts `items` in place exactly as libstdc++'s `std::sort(first, last, comp)` does,
  element moves included, so that the order of equivalent elements is the same."""
  n = len(items)
  if n > 1:
    _introsort_loop(items, 0, n, 2 * (n.bit_length() - 1), less)
    _final_insertion_sort(items, 0, n, less)


def _introsort_loop(a: list, first: int, last: int, depth: int, less) -> None:
  while last - first > _SORT_THRESHOLD:
    if depth == 0:
      _heap_sort(a, first, last, less)
      return
    depth -= 1
    cut = _unguarded_partition_pivot(a, first, last, less)
    _introsort_loop(a, cut, last, depth, less)
    last = cut


def _unguarded_partition_pivot(a: list, first: int, last: int, less) -> int:
  mid = first + (last - first) // 2
  _move_median_to_first(a, first, first + 1, mid, last - 1, less)
  return _unguarded_partition(a, first + 1, last, first, less)


def _move_median_to_first(a: list, result: int, x: int, y: int, z: int, less) -> None:
  if less(a[x], a[y]):
    if less(a[y], a[z]):
      pick = y
    elif less(a[x], a[z]):
      pick = z
    else:
      pick = x
  elif less(a[x], a[z]):
    pick = x
  elif less(a[y], a[z]):
    pick = z
  else:
    pick = y
  a[result], a[pick] = a[pick], a[result]


def _unguarded_partition(a: list, first: int, last: int, pivot: int, less) -> int:
  while True:
    while less(a[first], a[pivot]):
      first += 1
    last -= 1
    while less(a[pivot], a[last]):
      last -= 1
    if not first < last:
      return first
    a[first], a[last] = a[last], a[first]
    first += 1


def _final_insertion_sort(a: list, first: int, last: int, less) -> None:
  if last - first > _SORT_THRESHOLD:
    _insertion_sort(a, first, first + _SORT_THRESHOLD, less)
    for i in range(first + _SORT_THRESHOLD, last):
      _unguarded_linear_insert(a, i, less)
  else:
    _insertion_sort(a, first, last, less)


def _insertion_sort(a: list, first: int, last: int, less) -> None:
  for i in range(first + 1, last):
    if less(a[i], a[first]):
      value = a[i]
      a[first + 1:i + 1] = a[first:i]
      a[first] = value
    else:
      _unguarded_linear_insert(a, i, less)


def _unguarded_linear_insert(a: list, last: int, less) -> None:
  value = a[last]
  while less(value, a[last - 1]):
    a[last] = a[last - 1]
    last -= 1
  a[last] = value


def _heap_sort(a: list, first: int, last: int, less) -> None:
  """`std::__partial_sort(first, last, last)`: make_heap, then sort_heap."""
  n = last - first
  for parent in range((n - 2) // 2, -1, -1):
    _adjust_heap(a, first, parent, n, a[first + parent], less)
  while n > 1:
    n -= 1
    value = a[first + n]
    a[first + n] = a[first]
    _adjust_heap(a, first, 0, n, value, less)


def _adjust_heap(a: list, first: int, hole: int, length: int, value, less) -> None:
  top = hole
  child = hole
  while child < (length - 1) // 2:
    child = 2 * (child + 1)
    if less(a[first + child], a[first + child - 1]):
      child -= 1
    a[first + hole] = a[first + child]
    hole = child
  if (length & 1) == 0 and child == (length - 2) // 2:
    child = 2 * (child + 1)
    a[first + hole] = a[first + child - 1]
    hole = child - 1
  # __push_heap
  parent = (hole - 1) // 2
  while hole > top and less(a[first + parent], value):
    a[first + hole] = a[first + parent]
    hole = parent
    parent = (hole - 1) // 2
  a[first + hole] = value

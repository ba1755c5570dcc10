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

from typing import Any, Callable, Sequence

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


# ---------------------------------------------------------------------------
# MATLAB's imresize (the released heat maps are made with it)
# ---------------------------------------------------------------------------

def _cubic(x: np.ndarray) -> np.ndarray:
  """MATLAB's bicubic kernel (Keys, a = -0.5)."""
  ax = np.abs(x)
  ax2, ax3 = ax ** 2, ax ** 3
  return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) +
          (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((1 < ax) & (ax <= 2)))


def _triangle(x: np.ndarray) -> np.ndarray:
  """MATLAB's bilinear kernel."""
  return (x + 1) * ((-1 <= x) & (x < 0)) + (1 - x) * ((0 <= x) & (x <= 1))


_KERNELS = {'bicubic': (_cubic, 4.0), 'bilinear': (_triangle, 2.0)}


def imresize_matrix(in_length: int, out_length: int, method: str = 'bicubic',
                    antialias: bool = True) -> np.ndarray:
  """The `out × in` matrix of MATLAB's `imresize` along one axis (`contributions` of
  imresize.m): output pixel i (1-based) sits at `u = i / scale + (1 - 1 / scale) / 2` in
  the input; its weights are the kernel at `u - j` over `ceil(width) + 2` input pixels from
  `floor(u - width / 2)`, normalised to sum 1, the kernel widened by `1 / scale` when
  shrinking with `antialias`; indices outside the input are clamped to its ends
  (imresize.m: "Clamp out-of-range indices; has the effect of replicating end-points"),
  which reproduces the output MATLAB prints for `imresize([0 0 1 1 0], [1 10])`."""
  kernel, width = _KERNELS[method]
  scale = out_length / in_length
  if scale < 1 and antialias:
    base = kernel
    kernel = lambda x: scale * base(scale * x)  # pylint: disable=unnecessary-lambda-assignment
    width = width / scale
  x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]
  u = x / scale + 0.5 * (1 - 1 / scale)
  left = np.floor(u - width / 2)
  indices = left + np.arange(int(np.ceil(width)) + 2)[None, :]
  weights = kernel(u - indices)
  weights = weights / weights.sum(axis=1, keepdims=True)
  indices = np.clip(indices.astype(np.int64), 1, in_length) - 1
  matrix = np.zeros((out_length, in_length))
  np.add.at(matrix, (np.repeat(np.arange(out_length), indices.shape[1]), indices.reshape(-1)),
            weights.reshape(-1))
  return matrix


def imresize(image: np.ndarray, out_hw: tuple[int, int], method: str = 'bicubic',
             antialias: bool = True, dtype: Any = np.float64) -> np.ndarray:
  """MATLAB's `imresize(image, [H W], method)` of a 2-D (or H×W×C) array, computed in
  `dtype` (float64 by default; float32 comes nearer MATLAB's single inputs, see
  benchmarks/matlab_precision.py). Returns floats; callers round as MATLAB's conversions
  do.

  The axis with the smaller scale factor is resized first, as imresize.m orders them.
  """
  x = np.asarray(image, dtype)
  scales = [out_hw[0] / x.shape[0], out_hw[1] / x.shape[1]]
  for axis in np.argsort(scales, kind='stable'):
    if x.shape[axis] == out_hw[axis]:
      continue
    matrix = imresize_matrix(x.shape[axis], out_hw[axis], method, antialias).astype(dtype)
    x = np.moveaxis(np.tensordot(matrix, np.moveaxis(x, axis, 0), axes=(1, 0)), 0, axis)
  return x


def im2uint8(image: np.ndarray) -> np.ndarray:
  """MATLAB's conversion of a [0, 1] floating image to uint8 (`im2uint8`, what `imwrite`
  does to single/double data): `x * 255` rounded half away from zero, saturated; in the
  image's own floating type."""
  x = np.asarray(image)
  x = x if x.dtype.kind == 'f' else x.astype(np.float64)
  return np.clip(np.floor(x * x.dtype.type(255) + x.dtype.type(0.5)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Ten crops and the heat map (ILSVRC_generate_heatmap.m, mergeTenCrop.m)
# ---------------------------------------------------------------------------

SQUARE = 256  # IMAGE_DIM: the image is resized to 256×256 before cropping


def ten_crop_offsets(crop: int, square: int = SQUARE) -> list[tuple[int, int, bool]]:
  """`(x0, y0, mirrored)` of matcaffe's ten crops in the 256×256 frame, in their order:
  for x in (0, 256 - crop), for y in (0, 256 - crop): the corner crop; the centre
  (`floor((256 - crop + 1) / 2)`, 0-based) fifth; crops 6-10 are 1-5 mirrored
  left-right."""
  far = square - crop
  corners = [(x, y) for x in (0, far) for y in (0, far)]
  centre = (far + 1) // 2
  plain = corners + [(centre, centre)]
  return [(x, y, False) for x, y in plain] + [(x, y, True) for x, y in plain]


def ten_crops(image_SS3: np.ndarray, crop: int) -> np.ndarray:
  """The ten `crop`×`crop` crops of a square image (`ten_crop_offsets`), `10×crop×crop×C`."""
  out = []
  for x, y, mirrored in ten_crop_offsets(crop, image_SS3.shape[0]):
    patch = image_SS3[y:y + crop, x:x + crop]
    out.append(patch[:, ::-1] if mirrored else patch)
  return np.stack(out)


def merge_ten_crops(crop_maps_TSS: np.ndarray, square: int = SQUARE) -> np.ndarray:
  """mergeTenCrop.m: each crop's map placed back where its crop came from (a mirrored crop
  mirrored back), `abs`, and *summed* over the crops (theirs sums three identical
  channels too: a constant factor, gone after the division by the maximum). Pixels
  covered by more crops add more: the centre counts ten times, a corner twice."""
  maps = np.abs(np.asarray(crop_maps_TSS))
  if maps.dtype.kind != 'f':
    maps = maps.astype(np.float64)
  crop = maps.shape[1]
  merged = np.zeros((square, square), maps.dtype)
  for (x, y, mirrored), map_SS in zip(ten_crop_offsets(crop, square), maps):
    merged[y:y + crop, x:x + crop] += map_SS[:, ::-1] if mirrored else map_SS
  return merged


def heat_map(crop_cams_Thw: np.ndarray, orig_hw: tuple[int, int], crop: int,
             jpeg_quality: int | None = None, square: int = SQUARE,
             dtype: Any = np.float64) -> np.ndarray:
  """The 8-bit heat map ILSVRC_generate_heatmap.m writes for one class: each crop's CAM
  resized to the crop (`imresize`, bicubic), merged into the 256 frame
  (`merge_ten_crops`), resized to the original image (bicubic, antialiased when
  shrinking), divided by its maximum and converted to uint8 (`im2uint8`: negatives 0).

  `jpeg_quality`: also round-trip it through JPEG (theirs writes `.jpg`, MATLAB's default
  quality 75, which `dt_box` reads back); None (default) skips it. `square`: the frame
  the crops came from (256 in the release). `dtype`: the arithmetic's (MATLAB's is
  single for Caffe's single maps; float64 by default).
  """
  crops = [imresize(m, (crop, crop), dtype=dtype) for m in np.asarray(crop_cams_Thw, dtype)]
  merged = merge_ten_crops(np.stack(crops), square)
  full = imresize(merged, tuple(orig_hw), dtype=dtype)
  peak = full.max()
  heat = im2uint8(full / peak if peak > 0 else full)  # the division in `dtype`
  if jpeg_quality is not None:
    import io  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    buffer = io.BytesIO()
    Image.fromarray(heat).save(buffer, format='JPEG', quality=jpeg_quality)
    heat = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert('L'))
  return heat


# ---------------------------------------------------------------------------
# Scoring (ILSVRC_evaluate_bbox.m, evaluation/simpleEvaluation.m)
# ---------------------------------------------------------------------------

def corner_boxes(boxes_N4: np.ndarray) -> np.ndarray:
  """`(x, y, w, h)` rows to their `(min(x, x + w), min(y, y + h), max(...), max(...))`
  corners, as ILSVRC_evaluate_bbox.m turns dt_box's output into boxes (a negative width
  from the clip swaps the corners)."""
  b = np.asarray(boxes_N4, np.int64).reshape(-1, 4)
  x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
  return np.stack([np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1),
                   np.maximum(y0, y1)], axis=1)


def first_two(boxes_N4: np.ndarray, orig_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """The first and second box as corners. Their script indexes rows 1 and 2 of dt_box's
  output and stops with an error when there are fewer: here a missing second box repeats
  the first, and no box at all is the whole image (documented differences)."""
  corners = corner_boxes(boxes_N4)
  if len(corners) == 0:
    h, w = orig_hw
    corners = np.asarray([[0, 0, w - 1, h - 1]], np.int64)
  return corners[0], corners[1] if len(corners) > 1 else corners[0]


def overlap(box_4: np.ndarray, gt_M4: np.ndarray) -> np.ndarray:
  """compute_overlap.m: IoU with +1 areas, -1 where the boxes do not intersect."""
  gt = np.asarray(gt_M4, np.float64).reshape(-1, 4)
  b = np.asarray(box_4, np.float64)
  iw = np.minimum(b[2], gt[:, 2]) - np.maximum(b[0], gt[:, 0]) + 1
  ih = np.minimum(b[3], gt[:, 3]) - np.maximum(b[1], gt[:, 1]) + 1
  union = ((b[2] - b[0] + 1) * (b[3] - b[1] + 1) + (gt[:, 2] - gt[:, 0] + 1) *
           (gt[:, 3] - gt[:, 1] + 1) - iw * ih)
  return np.where((iw > 0) & (ih > 0), iw * ih / np.where(union == 0, 1, union), -1.0)


def guess_correct(label: int, guess_class: int, guess_box_4: np.ndarray,
                  gt_M4: np.ndarray) -> bool:
  """simpleEvaluation.m for one guess: the class is the label and some ground-truth box
  overlaps it by at least 0.5 (theirs counts an error where `ov < 0.50`)."""
  return guess_class == label and len(gt_M4) > 0 and bool(
      (overlap(guess_box_4, gt_M4) >= 0.5).any())


def localization_errors(guesses: list[tuple[int, np.ndarray]], label: int,
                        gt_M4: np.ndarray, max_guesses: int = 5) -> np.ndarray:
  """`[error with the first k guesses for k = 1..max_guesses]` of one image (0 or 1),
  guesses `(class, box corners)` in order: wrong unless one of the first k is correct."""
  correct = [guess_correct(label, c, b, gt_M4) for c, b in guesses[:max_guesses]]
  return np.asarray([0 if any(correct[:k]) else 1 for k in range(1, max_guesses + 1)])


def combined_guesses(classes_5: Sequence[int], first_5: Sequence[np.ndarray],
                     second_5: Sequence[np.ndarray]) -> list[tuple[int, np.ndarray]]:
  """Table 3's heuristic as their `predictionResult_bboxCombine`: for each class in order
  its first box then its second, the first five guesses (top-1 first, top-1 second,
  top-2 first, top-2 second, top-3 first)."""
  guesses = []
  for c, first, second in zip(classes_5, first_5, second_5):
    guesses += [(int(c), first), (int(c), second)]
  return guesses[:5]

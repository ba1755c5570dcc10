"""Windows: which part of the original image the network's S×S input shows, and the maps
between the two pixel grids (numpy only, so that box-stage worker processes import it
without jax).

Every transform of `cam_jax.data.pipeline` is "crop a window of the original image,
resize it to S×S": the window `(x0, y0, x1, y1)` is in the original's continuous pixel
coordinates (pixel i covers [i, i + 1)). Whole-image resize, shorter-side resize + centre
crop and the random resized crop of training are windows, so one pair of functions,
`boxes_to_input` and `boxes_to_original`, maps boxes either way for all of them, and
`map_to_original` resamples a map (a CAM) from the input onto the original pixels (and
`map_on_image` places it on the whole image, for pictures): the eval transform's inverse,
through which predictions are scored on the original image whatever the network saw.

Boxes are `(x0, y0, x1, y1)`, inclusive integer pixel corners.
"""

from __future__ import annotations

import math

import numpy as np



def whole_window(hw: tuple[int, int]) -> np.ndarray:
  """The whole image: plain resize to S×S (the paper's test-time input)."""
  return np.array([0, 0, hw[1], hw[0]], np.float64)


def center_crop_window(hw: tuple[int, int], size: int, resize_shorter: int) -> np.ndarray:
  """Shorter side resized to `resize_shorter`, then the central size×size crop."""
  if size > resize_shorter:
    raise ValueError(f'a {size}×{size} centre crop needs the shorter side resized to at '
                     f'least {size}, got {resize_shorter}')
  height, width = hw
  side = size * min(height, width) / resize_shorter  # the crop's side in original pixels
  cx, cy = width / 2, height / 2
  return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def random_resized_crop_window(hw: tuple[int, int], rng: np.random.Generator, size: int, *,
                               area_range: tuple[float, float] = (0.08, 1.0),
                               aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
                               attempts: int = 10) -> np.ndarray:
  """The Inception crop of the flax ImageNet example: an area fraction and a log-uniform
  aspect ratio, 10 attempts to fit them, else a centre crop of the shorter side × S/(S+32).
  Integer pixel windows, as `tf.image.sample_distorted_bounding_box` gives."""
  height, width = hw
  area = height * width
  log_ratio = np.log(aspect_range)
  for _ in range(attempts):
    target = area * rng.uniform(*area_range)
    ratio = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      x0 = int(rng.integers(0, width - w + 1))
      y0 = int(rng.integers(0, height - h + 1))
      return np.array([x0, y0, x0 + w, y0 + h], np.float64)
  side = int(size / (size + 32) * min(height, width))
  x0, y0 = (width - side + 1) // 2, (height - side + 1) // 2
  return np.array([x0, y0, x0 + side, y0 + side], np.float64)


def boxes_to_input(boxes_N4: np.ndarray, window_4: np.ndarray, size: int) -> np.ndarray:
  """Inclusive boxes in the original image -> inclusive boxes on the size×size input.

  A box covers the pixel edges [x0, x1 + 1); those edges are mapped through the window
  and rounded to the nearest input pixel edge, then clipped to the input. Boxes wholly
  outside the window come out as degenerate boxes on the input's border.
  """
  return _through_window(boxes_N4, window_4, size, to_input=True, out_hw=(size, size))


def boxes_to_original(boxes_N4: np.ndarray, window_4: np.ndarray, size: int,
                      orig_hw: tuple[int, int]) -> np.ndarray:
  """Inclusive boxes on the size×size input -> inclusive boxes in the original image.

  The inverse of `boxes_to_input` up to rounding: a round trip moves an edge by at most
  half an input pixel's extent in the original (plus the half pixel of the final
  rounding); with a window that maps input pixels onto whole original pixels, it is exact.
  """
  return _through_window(boxes_N4, window_4, size, to_input=False, out_hw=orig_hw)


def _through_window(boxes_N4, window_4, size, *, to_input: bool, out_hw) -> np.ndarray:
  boxes_N4 = np.asarray(boxes_N4, np.float64).reshape(-1, 4)
  wx0, wy0, wx1, wy1 = (float(v) for v in window_4)
  sx, sy = (wx1 - wx0) / size, (wy1 - wy0) / size  # original pixels per input pixel
  xs = boxes_N4[:, 0::2] + [0, 1]  # edges [x0, x1 + 1)
  ys = boxes_N4[:, 1::2] + [0, 1]
  if to_input:
    xs, ys = (xs - wx0) / sx, (ys - wy0) / sy
  else:
    xs, ys = wx0 + xs * sx, wy0 + ys * sy
  # Round half up, so that a mapping is the same on every platform.
  xs, ys = np.floor(xs + 0.5), np.floor(ys + 0.5)
  height, width = out_hw
  out_N4 = np.stack([xs[:, 0], ys[:, 0], xs[:, 1] - 1, ys[:, 1] - 1], axis=1)
  out_N4[:, 2] = np.maximum(out_N4[:, 2], out_N4[:, 0])  # a box keeps at least one pixel
  out_N4[:, 3] = np.maximum(out_N4[:, 3], out_N4[:, 1])
  out_N4 = np.clip(out_N4, 0, [width - 1, height - 1, width - 1, height - 1])
  return out_N4.astype(np.int32)


def map_to_original(map_hw: np.ndarray, window_4: np.ndarray, orig_hw: tuple[int, int]
                    ) -> tuple[np.ndarray, tuple[int, int]]:
  """A map that covers `window_4` of the original image, resampled bilinearly at the
  centres of the original pixels inside the window: the paper's protocol, which resizes the
  CAM to the original image before boxing it.

  The map may have any resolution: the network's S×S input grid, or a CAM's h×w feature
  grid, which covers the same window. Sampling is bilinear with half-pixel centres and
  clamped edges, without antialiasing: for the whole-image window it equals
  `jax.image.resize(map, orig_hw, 'bilinear', antialias=False)` and cv2.resize's
  INTER_LINEAR, which the paper's code used.

  Original pixels outside the window (a centre crop's sides) were not seen by the
  network and get no value: the result covers only the pixels whose centres lie in the
  window, clipped to the image, and `offset_xy` says where that block starts, so a box
  `(x0, y0, x1, y1)` found in it is `(x0 + ox, y0 + oy, x1 + ox, y1 + oy)` in the
  original.

  Returns:
    `(map_HW, (ox, oy))`: float32 map of the visible block, and its top-left pixel.
  """
  map_hw = np.asarray(map_hw)
  if map_hw.ndim != 2 or map_hw.size == 0:
    raise ValueError(f'map_hw must be a non-empty 2-D map, got shape {map_hw.shape}')
  wx0, wy0, wx1, wy1 = (float(v) for v in window_4)
  if not (wx1 > wx0 and wy1 > wy0):
    raise ValueError(f'window_4 must have x1 > x0 and y1 > y0, got {tuple(window_4)}')
  height, width = orig_hw
  rows_Hh, oy = _sample_matrix(map_hw.shape[0], wy0, wy1, height)
  cols_Ww, ox = _sample_matrix(map_hw.shape[1], wx0, wx1, width)
  values = map_hw.astype(np.float32, copy=False)
  # Two small matrix products: the cheaper order first.
  if rows_Hh.shape[0] * map_hw.shape[1] <= cols_Ww.shape[0] * map_hw.shape[0]:
    out_HW = (rows_Hh @ values) @ cols_Ww.T
  else:
    out_HW = rows_Hh @ (values @ cols_Ww.T)
  return out_HW, (ox, oy)


def _sample_matrix(n: int, w0: float, w1: float, size: int) -> tuple[np.ndarray, int]:
  """Bilinear weights `(num_out, n)` from a map axis of n cells covering [w0, w1) to the
  original pixels 0..size-1 whose centres lie in the window, and the first such pixel."""
  first = max(0, math.ceil(w0 - 0.5))
  last = min(size - 1, math.floor(w1 - 0.5))
  if last < first:
    raise ValueError(f'window [{w0}, {w1}) holds no pixel centre of an axis of {size} pixels')
  centres = np.arange(first, last + 1, dtype=np.float64) + 0.5
  # The original pixel centre in map cells, cell j's centre being at j.
  u = np.clip((centres - w0) * (n / (w1 - w0)) - 0.5, 0, n - 1)
  i0 = np.floor(u).astype(np.int64)
  i1 = np.minimum(i0 + 1, n - 1)
  frac = (u - i0).astype(np.float32)
  weights = np.zeros((len(centres), n), np.float32)
  rows = np.arange(len(centres))
  weights[rows, i0] += 1 - frac
  weights[rows, i1] += frac
  return weights, first


def map_on_image(map_hw: np.ndarray, window_4: np.ndarray, orig_hw: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray]:
  """A map covering `window_4` of the original image, on the whole original grid:
  `(map_HW, valid_HW)`, zero and False where the network did not see the image."""
  block_hw, (ox, oy) = map_to_original(map_hw, window_4, orig_hw)
  map_HW = np.zeros(orig_hw, np.float32)
  valid_HW = np.zeros(orig_hw, bool)
  map_HW[oy:oy + block_hw.shape[0], ox:ox + block_hw.shape[1]] = block_hw
  valid_HW[oy:oy + block_hw.shape[0], ox:ox + block_hw.shape[1]] = True
  return map_HW, valid_HW

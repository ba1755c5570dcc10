"""Host-side box stage: CAM -> threshold -> largest connected component -> box; IoU.

Box convention everywhere in this module: a box is `(x0, y0, x1, y1)`, inclusive
integer pixel corners as in ILSVRC XML, x the column and y the row, so a box covers
`(x1 - x0 + 1) * (y1 - y0 + 1)` pixels and IoU uses that +1 area.

Everything here is numpy/scipy on the host, one map at a time; callers parallelise
over maps (the functions hold no state).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

# 8-connectivity: pixels touching at a corner belong to one component, as in the
# paper's and wsolevaluation's notion of a blob.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def normalize_map(cam_HW: np.ndarray) -> np.ndarray:
  """Min-max normalises a 2-D map to [0, 1] (MATLAB `mat2gray`, wsolevaluation), float32.

  A constant map becomes all zeros rather than 0/0 = nan. The arithmetic is done in
  float64 and rounded once to float32, so a value exactly at a fraction of the range
  (e.g. 12 in 10..20 -> 0.2) lands on float32(fraction).

  Raises:
    ValueError: if the map is not 2-D, is empty, or holds nan/inf (a broken CAM
      must not silently turn into a plausible box).
  """
  cam_HW = np.asarray(cam_HW)
  if cam_HW.ndim != 2 or cam_HW.size == 0:
    raise ValueError(f'cam_HW must be a non-empty 2-D map, got shape {cam_HW.shape}')
  lo, hi = float(cam_HW.min()), float(cam_HW.max())
  # nan propagates into min/max and inf shows up in one of them: no extra pass.
  if not (np.isfinite(lo) and np.isfinite(hi)):
    raise ValueError(f'cam_HW holds non-finite values (min {lo}, max {hi})')
  if hi == lo:
    return np.zeros(cam_HW.shape, np.float32)
  return ((cam_HW.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


def threshold_mask(cam_HW: np.ndarray, threshold: float = 0.2) -> np.ndarray:
  """Pixels whose min-max normalised value is `>= threshold` (non-strict), bool (H, W).

  Exactly `normalize_map(cam_HW) >= threshold` compared in float32, so a threshold
  sweep over `normalize_map`'s output selects the same pixels. wsolevaluation uses a
  strict `>` on a uint8-quantised map instead (see `cam_jax.metrics`' module docstring).

  A constant map carries no localisation information; it returns the whole image
  (all True) for every threshold, so that its box is the whole image rather than
  depending on whether `threshold` is 0.
  """
  norm_HW = normalize_map(cam_HW)
  if not norm_HW.any():
    # All zeros after normalisation means max == min: the constant map.
    return np.ones(norm_HW.shape, dtype=bool)
  # A Python float is a weak scalar (NEP 50): the comparison stays in float32.
  return norm_HW >= float(threshold)


def paper_mask(cam_HW: np.ndarray, threshold: float = 0.2) -> np.ndarray:
  """Pixels `>= threshold * max(cam_HW)` (non-strict), bool (H, W): the paper's segmentation.

  The paper keeps "the regions of which the value is above 20% of the max value of the
  CAM", and its code divides the map by its maximum (ILSVRC_generate_heatmap.m) and
  clips negatives when saving it: the threshold is a fraction of the maximum, not of the
  min-max range. The two differ because CAMs go negative (no ReLU after the head): with
  min-max normalisation a strongly negative distractor lifts the whole background above
  the threshold. `threshold_mask` is the min-max variant that wsolevaluation uses.

  A constant map passes everywhere (its box is the whole image); a map whose maximum is
  negative passes nowhere, and `largest_component_box` then gives the whole image too.
  """
  cam_HW = np.asarray(cam_HW)
  if cam_HW.ndim != 2 or cam_HW.size == 0:
    raise ValueError(f'cam_HW must be a non-empty 2-D map, got shape {cam_HW.shape}')
  hi = cam_HW.max()
  if not np.isfinite(hi):  # nan propagates into the max
    raise ValueError(f'cam_HW holds non-finite values (max {hi})')
  return cam_HW >= threshold * hi


def largest_component_box(mask_HW: np.ndarray) -> np.ndarray:
  """Tight box `(x0, y0, x1, y1)` (inclusive corners) of the largest 8-connected component.

  Ties between components of equal pixel count go to the one that comes first in a
  raster (row-major) scan, i.e. the lowest `scipy.ndimage.label` label, whose labels
  follow the raster order of each component's first pixel.

  An empty mask gives the whole image `(0, 0, W - 1, H - 1)`: every prediction must
  be a box, and only degenerate maps produce an empty mask.

  Returns:
    int32 array of shape (4,).
  """
  mask_HW = np.asarray(mask_HW, dtype=bool)
  if mask_HW.ndim != 2 or mask_HW.size == 0:
    raise ValueError(f'mask_HW must be a non-empty 2-D mask, got shape {mask_HW.shape}')
  height, width = mask_HW.shape
  labels_HW, num = ndimage.label(mask_HW, structure=_EIGHT_CONNECTED)
  if num == 0:
    return np.array([0, 0, width - 1, height - 1], np.int32)
  if num == 1:
    component_HW = mask_HW  # skips a bincount and a comparison: the common case for CAMs
  else:
    sizes = np.bincount(labels_HW.ravel(), minlength=num + 1)
    sizes[0] = 0  # background
    # argmax returns the first maximum: the lowest label.
    component_HW = labels_HW == np.argmax(sizes)
  # Row/column projections are ~10x faster than ndimage.find_objects or np.nonzero here.
  rows_H, cols_W = component_HW.any(axis=1), component_HW.any(axis=0)
  y0, y1 = int(rows_H.argmax()), height - 1 - int(rows_H[::-1].argmax())
  x0, x1 = int(cols_W.argmax()), width - 1 - int(cols_W[::-1].argmax())
  return np.array([x0, y0, x1, y1], np.int32)


def paper_box(cam_HW: np.ndarray, threshold: float = 0.2) -> np.ndarray:
  """The paper's box for one CAM: keep `>= threshold * max`, largest component's box.

  The box `(x0, y0, x1, y1)` (inclusive corners) is in the grid of `cam_HW`; the paper
  resizes the CAM to the original image (bilinear) before this step, as
  `box_stage.paper_boxes_on_original` does.
  See `paper_mask` for why the threshold is a fraction of the maximum.

  Returns:
    int32 array of shape (4,).
  """
  return largest_component_box(paper_mask(cam_HW, threshold))


def paper_boxes(cams_NHW: np.ndarray | Sequence[np.ndarray],
                threshold: float = 0.2) -> np.ndarray:
  """`paper_box` for each map; a list of maps of different sizes is accepted.

  Returns:
    int32 array (N, 4) of boxes `(x0, y0, x1, y1)`, inclusive corners, each in the
    grid of its own map.
  """
  boxes = [paper_box(cam_HW, threshold) for cam_HW in cams_NHW]
  if not boxes:
    return np.zeros((0, 4), np.int32)
  return np.stack(boxes)


def check_boxes(boxes_N4: np.ndarray, name: str = 'boxes') -> np.ndarray:
  """Validates boxes `(x0, y0, x1, y1)` (inclusive corners) and returns them as an array.

  Raises:
    ValueError: naming `name`, if the array is not (N, 4) or some row has x0 > x1 or
      y0 > y1.
  """
  boxes_N4 = np.asarray(boxes_N4)
  if boxes_N4.ndim != 2 or boxes_N4.shape[1] != 4:
    raise ValueError(
        f'{name} must have shape (N, 4) of (x0, y0, x1, y1), got shape {boxes_N4.shape}')
  bad = np.flatnonzero((boxes_N4[:, 0] > boxes_N4[:, 2]) | (boxes_N4[:, 1] > boxes_N4[:, 3]))
  if bad.size:
    row = int(bad[0])
    raise ValueError(
        f'{name}[{row}] = {boxes_N4[row].tolist()} has x0 > x1 or y0 > y1; boxes are '
        '(x0, y0, x1, y1) with inclusive corners')
  return boxes_N4


def _iou_unchecked(a_N4: np.ndarray, b_M4: np.ndarray) -> np.ndarray:
  a_N4 = a_N4.astype(np.float64)
  b_M4 = b_M4.astype(np.float64)
  # +1: corners are inclusive, so boxes sharing an edge row overlap by one pixel row.
  inter_w_NM = np.clip(np.minimum(a_N4[:, None, 2], b_M4[None, :, 2])
                       - np.maximum(a_N4[:, None, 0], b_M4[None, :, 0]) + 1, 0, None)
  inter_h_NM = np.clip(np.minimum(a_N4[:, None, 3], b_M4[None, :, 3])
                       - np.maximum(a_N4[:, None, 1], b_M4[None, :, 1]) + 1, 0, None)
  inter_NM = inter_w_NM * inter_h_NM
  area_a_N = (a_N4[:, 2] - a_N4[:, 0] + 1) * (a_N4[:, 3] - a_N4[:, 1] + 1)
  area_b_M = (b_M4[:, 2] - b_M4[:, 0] + 1) * (b_M4[:, 3] - b_M4[:, 1] + 1)
  # Validated boxes have area >= 1, so the union is never 0.
  return inter_NM / (area_a_N[:, None] + area_b_M[None, :] - inter_NM)


def iou(boxes_a_N4: np.ndarray, boxes_b_M4: np.ndarray) -> np.ndarray:
  """Pairwise IoU of boxes `(x0, y0, x1, y1)` with inclusive corners (+1 area), (N, M) float64.

  Raises:
    ValueError: if an argument is not (N, 4) / (M, 4), or has a row with x0 > x1 or
      y0 > y1; the message names the argument.
  """
  return _iou_unchecked(check_boxes(boxes_a_N4, 'boxes_a_N4'),
                        check_boxes(boxes_b_M4, 'boxes_b_M4'))


def max_iou(box_4: np.ndarray, gt_boxes_M4: np.ndarray) -> float:
  """Best IoU of one box against any ground-truth box; 0.0 when there are none.

  Boxes are `(x0, y0, x1, y1)` with inclusive corners (+1 area).
  """
  box_4 = np.asarray(box_4)
  if box_4.shape != (4,):
    raise ValueError(f'box_4 must have shape (4,) of (x0, y0, x1, y1), got shape {box_4.shape}')
  gt_boxes_M4 = check_boxes(gt_boxes_M4, 'gt_boxes_M4')
  if len(gt_boxes_M4) == 0:
    return 0.0
  return float(_iou_unchecked(check_boxes(box_4[None], 'box_4'), gt_boxes_M4).max())


def _round_half_up(value: float) -> int:
  # Python's round() goes to even (2.5 -> 2); a box size should not depend on parity.
  return int(np.floor(value + 0.5))


def center_box(image_hw: tuple[int, int], box_hw: tuple[float, float]) -> np.ndarray:
  """A box of `box_hw` pixels (rounded half up, at least 1) centred in an H x W image.

  The centre-box baseline. When the leftover margin is odd the extra pixel goes to
  the bottom/right margin (the box sits half a pixel up-left of the exact centre).
  A box larger than the image is clipped to it.

  Returns:
    int32 array (4,): `(x0, y0, x1, y1)` with inclusive corners.
  """
  height, width = (int(s) for s in image_hw)
  if height < 1 or width < 1:
    raise ValueError(f'image_hw must be positive, got {tuple(image_hw)}')
  if not (box_hw[0] > 0 and box_hw[1] > 0):
    raise ValueError(f'box_hw must be positive, got {tuple(box_hw)}')
  box_h = max(1, _round_half_up(box_hw[0]))
  box_w = max(1, _round_half_up(box_hw[1]))
  y0 = (height - box_h) // 2
  x0 = (width - box_w) // 2
  box_4 = np.array([x0, y0, x0 + box_w - 1, y0 + box_h - 1])
  return np.clip(box_4, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.int32)

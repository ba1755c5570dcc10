"""Choe et al.'s protocol (CVPR 2020, clovaai/wsolevaluation), its steps as its code
computes them, with OpenCV as the reference is.

  maps = [normalize_scoremap(resize_cam(cam_hw)) for cam_hw in cams]    # inference.py
  boxes = scoremap_boxes(maps[0], thresholds(0.01), multi_contour=False)  # evaluation.py

- `resize_cam`: the CAM (float64, as their `t2n` makes it) to 224×224 with
  `cv2.INTER_CUBIC`.
- `normalize_scoremap`: min-max to [0, 1]; a map with a NaN, or constant, becomes zeros.
- `scoremap_boxes`: `compute_bboxes_from_scoremaps`: `u = (s * 255).astype(uint8)`, at each
  τ `cv2.threshold(u, int(τ * u.max()), 255, THRESH_BINARY)` (strict `>`),
  `cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`, the contour of largest
  `cv2.contourArea` (or every contour: MaxBoxAccV2), `(x, y, x + w, y + h)` from
  `cv2.boundingRect` with x1, y1 clipped to W - 1, H - 1; `[0, 0, 0, 0]` when there is no
  contour.
- `resize_box`: a ground-truth box to the 224 grid (`int` truncation of each corner).
- `multiple_iou`: their IoU with +1 areas, 0 where the union is not positive.
- `best_ious`: what `BoxEvaluator.accumulate` compares with δ: per τ, the best IoU of that
  τ's boxes against any ground-truth box.

Differences from their code, deliberate: a float32 map is taken (and compared in float64,
as theirs, which refuses float32); errors are ValueError/TypeError naming the problem, as
theirs, but the map may be any size (their loader always gives 224).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

RESIZE_LENGTH = 224  # _RESIZE_LENGTH


def thresholds(interval: float) -> np.ndarray:
  """Their τ grid: `np.arange(0, 1, interval)` (0.01 for boxes, 0.001 for PxAP)."""
  return np.arange(0, 1, interval)


def resize_cam(cam_hw: np.ndarray, size: int = RESIZE_LENGTH) -> np.ndarray:
  """`cv2.resize(cam, (size, size), interpolation=cv2.INTER_CUBIC)` of the float64 CAM."""
  cam = np.asarray(cam_hw, np.float64)
  return cv2.resize(cam, (size, size), interpolation=cv2.INTER_CUBIC)


def normalize_scoremap(cam_HW: np.ndarray) -> np.ndarray:
  """Their `normalize_scoremap`: zeros if the map has a NaN or is constant, else min-max
  to [0, 1] (in place on a copy, in the map's own dtype)."""
  cam = np.array(cam_HW, copy=True)
  if np.isnan(cam).any() or cam.min() == cam.max():
    return np.zeros_like(cam)
  cam -= cam.min()
  cam /= cam.max()
  return cam


def _check_scoremap(scoremap: np.ndarray) -> np.ndarray:
  scoremap = np.asarray(scoremap)
  if scoremap.dtype.kind != 'f':
    raise TypeError(f'the score map must be float, got {scoremap.dtype}')
  if scoremap.ndim != 2:
    raise ValueError(f'the score map must be 2-D, got {scoremap.ndim}-D')
  if np.isnan(scoremap).any():
    raise ValueError('the score map must not contain NaNs (normalize_scoremap zeroes them)')
  if (scoremap > 1).any() or (scoremap < 0).any():
    raise ValueError(f'the score map must be in [0, 1]; min {scoremap.min()}, '
                     f'max {scoremap.max()}')
  return scoremap.astype(np.float64)


def scoremap_boxes(scoremap_HW: np.ndarray, thresholds_T: Sequence[float],
                   multi_contour: bool = False) -> list[np.ndarray]:
  """Per threshold, an int `(n, 4)` array of `(x0, y0, x1, y1)` exactly as
  `compute_bboxes_from_scoremaps` returns them (n = 1 unless `multi_contour`)."""
  scoremap = _check_scoremap(scoremap_HW)
  height, width = scoremap.shape
  image = (scoremap * 255).astype(np.uint8)
  peak = np.max(image)
  out = []
  for tau in thresholds_T:
    _, binary = cv2.threshold(image, int(tau * peak), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
      out.append(np.zeros((1, 4), np.int64))
      continue
    if not multi_contour:
      contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for contour in contours:
      x, y, w, h = cv2.boundingRect(contour)
      boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    out.append(np.asarray(boxes, np.int64))
  return out


def resize_box(box: Sequence[float], image_wh: tuple[int, int],
               resize_wh: tuple[int, int] = (RESIZE_LENGTH, RESIZE_LENGTH)
               ) -> tuple[int, int, int, int]:
  """Their `resize_bbox`: each corner scaled and truncated with `int`."""
  x0, y0, x1, y1 = (float(v) for v in box)
  w, h = (float(v) for v in image_wh)
  nw, nh = (float(v) for v in resize_wh)
  return int(x0 * nw / w), int(y0 * nh / h), int(x1 * nw / w), int(y1 * nh / h)


def multiple_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
  """Their `calculate_multiple_iou`: `(num_a, num_b)` IoUs with +1 areas; 0 where the
  union is not positive."""
  a = np.asarray(boxes_a, np.int64).reshape(-1, 1, 4)
  b = np.asarray(boxes_b, np.int64).reshape(1, -1, 4)
  inter = (np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
           * np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
                        + 1))
  area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
  area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
  union = area_a + area_b - inter
  degenerate = union <= 0
  ious = inter / np.where(degenerate, 1, union)
  return np.where(degenerate, 0.0, ious)


def best_ious(boxes_T: list[np.ndarray], gt_boxes_M4: np.ndarray) -> np.ndarray:
  """Per threshold, the best IoU of its boxes with any ground-truth box: what
  `BoxEvaluator.accumulate` compares with `δ / 100` (correct where `>=`)."""
  return np.asarray([multiple_iou(boxes, gt_boxes_M4).max() for boxes in boxes_T])

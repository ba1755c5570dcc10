"""Looking at CAMs: jet overlays, boxes drawn, side-by-side figures, PNG files.

Host side, numpy + PIL only. Images are uint8 RGB arrays `(H, W, 3)`. Boxes are
`(x0, y0, x1, y1)`: inclusive integer pixel corners as in ILSVRC XML, x the column
(DESIGN.md §5).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cam_jax import boxes as boxes_lib
from cam_jax import io_utils

GT_COLOR = (0, 255, 0)
PRED_COLOR = (255, 0, 0)
_TITLE_HEIGHT = 14  # pixels; fits PIL's default font (about 11 px high)


def _check_image(image_HW3: np.ndarray, name: str = 'image_HW3') -> np.ndarray:
  image_HW3 = np.asarray(image_HW3)
  if image_HW3.ndim != 3 or image_HW3.shape[2] != 3 or image_HW3.dtype != np.uint8:
    raise ValueError(
        f'{name} must be a uint8 (H, W, 3) RGB image, got {image_HW3.dtype} {image_HW3.shape}')
  return image_HW3


def jet(values_HW: np.ndarray) -> np.ndarray:
  """MATLAB/OpenCV 'jet' colour map: 0 -> dark blue, 0.5 -> green, 1 -> dark red.

  Piecewise linear: each channel is `clip(1.5 - |4 v - c|, 0, 1)` with c = 3, 2, 1
  for red, green, blue. Values outside [0, 1] are clipped.

  Returns:
    uint8 RGB array `values_HW.shape + (3,)`.
  """
  values_HW = np.asarray(values_HW, dtype=np.float64)
  if not np.all(np.isfinite(values_HW)):
    raise ValueError('jet: values_HW holds nan or inf')
  v4_HW1 = 4.0 * np.clip(values_HW, 0.0, 1.0)[..., None]
  rgb_HW3 = np.clip(1.5 - np.abs(v4_HW1 - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
  return np.round(255.0 * rgb_HW3).astype(np.uint8)


def overlay(image_HW3: np.ndarray, cam_HW: np.ndarray, heat_weight: float = 0.3,
            image_weight: float = 0.5) -> np.ndarray:
  """Blends the min-max normalised CAM, coloured with jet, over the image.

  `heat_weight * jet(cam) + image_weight * image`, the look of the official CAM demo
  (which uses OpenCV's jet, 0.3 heat + 0.5 image). `cam_HW` must already be at the
  image's size.
  """
  image_HW3 = _check_image(image_HW3)
  cam_HW = np.asarray(cam_HW)
  if cam_HW.shape != image_HW3.shape[:2]:
    raise ValueError(
        f'cam_HW has shape {cam_HW.shape} but image_HW3 has shape {image_HW3.shape}; '
        'resize the CAM to the image first')
  heat_HW3 = jet(boxes_lib.normalize_map(cam_HW)).astype(np.float64)
  blend_HW3 = heat_weight * heat_HW3 + image_weight * image_HW3.astype(np.float64)
  return np.clip(np.round(blend_HW3), 0, 255).astype(np.uint8)


def draw_boxes(image_HW3: np.ndarray, boxes_N4: np.ndarray, color: tuple[int, int, int],
               width: int = 1) -> np.ndarray:
  """Draws rectangle outlines on a copy of the image.

  Boxes are `(x0, y0, x1, y1)` with inclusive corners: the outline covers columns x0
  and x1 and rows y0 and y1, and a wider line grows inwards. Parts outside the
  image are cut off.
  """
  image_HW3 = _check_image(image_HW3)
  boxes_N4 = boxes_lib.check_boxes(boxes_N4, 'boxes_N4')
  pil = Image.fromarray(image_HW3)  # copies: the caller's array is left alone
  draw = ImageDraw.Draw(pil)
  for x0, y0, x1, y1 in boxes_N4.tolist():
    # PIL's rectangle includes both corners, like ILSVRC boxes.
    draw.rectangle((x0, y0, x1, y1), outline=tuple(color), width=width)
  return np.asarray(pil).copy()


def upscale(image_HW3: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour upscale by an integer factor, so small images stay sharp."""
  if int(factor) != factor or factor < 1:
    raise ValueError(f'factor must be a positive integer, got {factor}')
  image_HW3 = np.asarray(image_HW3)
  return np.repeat(np.repeat(image_HW3, factor, axis=0), factor, axis=1)


def upscale_boxes(boxes_N4: np.ndarray, factor: int) -> np.ndarray:
  """Boxes `(x0, y0, x1, y1)` (inclusive corners) on an image upscaled by `factor`.

  Pixel p becomes pixels `[p * factor, (p + 1) * factor - 1]`, so x0, y0 are
  multiplied and x1, y1 become `(x1 + 1) * factor - 1`. Returns int32 (N, 4).
  """
  if int(factor) != factor or factor < 1:
    raise ValueError(f'factor must be a positive integer, got {factor}')
  boxes_N4 = boxes_lib.check_boxes(boxes_N4, 'boxes_N4').astype(np.int64)
  return np.concatenate(
      [boxes_N4[:, :2] * factor, (boxes_N4[:, 2:] + 1) * factor - 1], axis=1).astype(np.int32)


def cam_figure(image_HW3: np.ndarray, cam_HW: np.ndarray, gt_boxes_M4: np.ndarray,
               pred_box_4: np.ndarray | None, *, factor: int = 4,
               title: str | None = None) -> np.ndarray:
  """Side by side `[image | overlay]`, upscaled by `factor`, with boxes on both panels.

  Boxes are `(x0, y0, x1, y1)` with inclusive corners in the image's grid:
  ground truth in green, the prediction (if given) in red on top, width 2. With a
  title, a 14 px white strip holding it in black is added above.

  Returns:
    uint8 `(H * factor [+ 14], 2 * W * factor, 3)`.
  """
  image_HW3 = _check_image(image_HW3)
  gt_boxes_M4 = np.asarray(gt_boxes_M4)
  if gt_boxes_M4.size == 0:  # an image without boxes may come as shape (0,)
    gt_boxes_M4 = np.zeros((0, 4), np.int64)
  panels = []
  for panel_HW3 in (image_HW3, overlay(image_HW3, cam_HW)):
    panel_HW3 = upscale(panel_HW3, factor)
    panel_HW3 = draw_boxes(panel_HW3, upscale_boxes(gt_boxes_M4, factor), GT_COLOR, width=2)
    if pred_box_4 is not None:
      pred_N4 = upscale_boxes(np.asarray(pred_box_4).reshape(1, 4), factor)
      panel_HW3 = draw_boxes(panel_HW3, pred_N4, PRED_COLOR, width=2)
    panels.append(panel_HW3)
  figure_HW3 = np.concatenate(panels, axis=1)
  if title is None:
    return figure_HW3
  strip = Image.new('RGB', (figure_HW3.shape[1], _TITLE_HEIGHT), (255, 255, 255))
  ImageDraw.Draw(strip).text((2, 1), title, fill=(0, 0, 0), font=ImageFont.load_default())
  return np.concatenate([np.asarray(strip), figure_HW3], axis=0)


def save_png(path: str | os.PathLike, image_HW3: np.ndarray) -> None:
  """Writes an RGB uint8 image as PNG atomically (temp file + rename), creating parent dirs."""
  buffer = io.BytesIO()
  Image.fromarray(_check_image(image_HW3)).save(buffer, format='PNG')
  io_utils.atomic_write_bytes(path, buffer.getvalue())

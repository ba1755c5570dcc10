"""Looking at CAMs: colour-map overlays, boxes drawn, titled tiles, grids, PNG files.

Host side, numpy + PIL only (no matplotlib). Images are uint8 RGB arrays `(H, W, 3)`.
Boxes are `(x0, y0, x1, y1)`: inclusive integer pixel corners as in ILSVRC XML, x the
column.
"""

from __future__ import annotations

import io
import os
from typing import Callable, Sequence

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


# viridis (matplotlib's default) at 0, 1/8, ..., 1: the published 9-step palette,
# interpolated linearly in between (within a few levels of the 256-entry table).
_VIRIDIS_9x3 = np.array([
    (68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140),
    (40, 174, 128), (94, 201, 98), (173, 220, 48), (253, 231, 37)], np.float64)


def _finite_unit(values: np.ndarray, name: str) -> np.ndarray:
  values = np.asarray(values, dtype=np.float64)
  if not np.all(np.isfinite(values)):
    raise ValueError(f'{name}: values hold nan or inf')
  return np.clip(values, 0.0, 1.0)


def gray(values_HW: np.ndarray) -> np.ndarray:
  """0 -> black, 1 -> white; values outside [0, 1] are clipped. uint8 `shape + (3,)`."""
  v_HW = _finite_unit(values_HW, 'gray')
  return np.repeat(np.round(255.0 * v_HW)[..., None], 3, axis=-1).astype(np.uint8)


def viridis(values_HW: np.ndarray) -> np.ndarray:
  """Perceptually uniform dark blue -> green -> yellow; values outside [0, 1] are clipped."""
  v_HW = _finite_unit(values_HW, 'viridis')
  anchors_A = np.linspace(0.0, 1.0, len(_VIRIDIS_9x3))
  rgb_HW3 = np.stack([np.interp(v_HW, anchors_A, _VIRIDIS_9x3[:, c]) for c in range(3)], -1)
  return np.round(rgb_HW3).astype(np.uint8)


COLORMAPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    'jet': jet,  # the official CAM code's look (OpenCV's COLORMAP_JET)
    'gray': gray,  # saliency maps, as in the paper's Fig. 5
    'viridis': viridis,
}


def get_colormap(name: str) -> Callable[[np.ndarray], np.ndarray]:
  """The colour map `name` (values in [0, 1] -> uint8 RGB); raises listing the known ones."""
  if name not in COLORMAPS:
    raise ValueError(f'Unknown colormap {name!r}; known colormaps: {", ".join(sorted(COLORMAPS))}')
  return COLORMAPS[name]


def overlay(image_HW3: np.ndarray, cam_HW: np.ndarray, heat_weight: float = 0.3,
            image_weight: float = 0.5, colormap: str = 'jet',
            valid_HW: np.ndarray | None = None) -> np.ndarray:
  """Blends the min-max normalised CAM, coloured with `colormap`, over the image.

  `heat_weight * colormap(cam) + image_weight * image`, the look of the official CAM demo
  (which uses OpenCV's jet, 0.3 heat + 0.5 image). `cam_HW` must already be at the
  image's size.

  `valid_HW` (bool, optional) marks the pixels the network saw (a centre crop's window):
  the CAM is normalised over those alone, and the others show the plain image, unblended
  and so brighter than the blend, which tells "not seen" apart from "cold" (dark blue).
  """
  image_HW3 = _check_image(image_HW3)
  cam_HW = np.asarray(cam_HW)
  if cam_HW.shape != image_HW3.shape[:2]:
    raise ValueError(
        f'cam_HW has shape {cam_HW.shape} but image_HW3 has shape {image_HW3.shape}; '
        'resize the CAM to the image first')
  cmap = get_colormap(colormap)
  if valid_HW is None:
    norm_HW = boxes_lib.normalize_map(cam_HW)
  else:
    valid_HW = np.asarray(valid_HW, bool)
    if valid_HW.shape != cam_HW.shape:
      raise ValueError(f'valid_HW has shape {valid_HW.shape}, cam_HW {cam_HW.shape}')
    if not valid_HW.any():
      return image_HW3.copy()
    norm_HW = np.zeros(cam_HW.shape, np.float32)
    norm_HW[valid_HW] = boxes_lib.normalize_map(cam_HW[valid_HW][None])[0]
  heat_HW3 = cmap(norm_HW).astype(np.float64)
  blend_HW3 = heat_weight * heat_HW3 + image_weight * image_HW3.astype(np.float64)
  blend_HW3 = np.clip(np.round(blend_HW3), 0, 255).astype(np.uint8)
  if valid_HW is not None:
    blend_HW3[~valid_HW] = image_HW3[~valid_HW]
  return blend_HW3


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
  return figure_HW3 if title is None else titled(figure_HW3, title)


def shrink(image_HW3: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
  """Downscales (PIL, antialiased) so that the long side is at most `max_side`.

  Never upscales. Returns `(image, scale)`, scale = new long side / old long side (1.0
  when the image is left alone); `scale_boxes` maps boxes with it.
  """
  image_HW3 = _check_image(image_HW3)
  if max_side < 1:
    raise ValueError(f'max_side must be positive, got {max_side}')
  height, width = image_HW3.shape[:2]
  long_side = max(height, width)
  if long_side <= max_side:
    return image_HW3, 1.0
  scale = max_side / long_side
  new_wh = (max(1, round(width * scale)), max(1, round(height * scale)))
  # PIL's bilinear widens its support when shrinking: antialiased, no moiré.
  small_HW3 = np.asarray(Image.fromarray(image_HW3).resize(new_wh, Image.BILINEAR))
  return small_HW3, max(new_wh) / long_side


def fit(image_HW3: np.ndarray, max_side: int, min_side: int = 0) -> tuple[np.ndarray, float]:
  """The image with its long side at most `max_side` (`shrink`) or, when it is shorter
  than `min_side`, upscaled by the integer factor that brings it nearest below
  `min_side` (nearest neighbour: pixels stay sharp). Returns `(image, scale)`, scale =
  new long side / old long side, for `scale_boxes`."""
  long_side = max(_check_image(image_HW3).shape[:2])
  if long_side >= min_side:
    return shrink(image_HW3, max_side)
  factor = max(1, min(min_side, max_side) // long_side)
  return upscale(image_HW3, factor), float(factor)


def scale_boxes(boxes_N4: np.ndarray, scale: float, hw: tuple[int, int]) -> np.ndarray:
  """Boxes `(x0, y0, x1, y1)` (inclusive corners) on an image resized by `scale`.

  A box covers the pixel edges `[x0, x1 + 1)`; the edges are scaled and rounded (half
  up), the result made inclusive again, kept at least one pixel wide and clipped to the
  `hw` image. Returns int32 (N, 4).
  """
  boxes_N4 = boxes_lib.check_boxes(np.asarray(boxes_N4).reshape(-1, 4), 'boxes_N4')
  edges_N4 = boxes_N4.astype(np.float64) + [0, 0, 1, 1]
  edges_N4 = np.floor(edges_N4 * scale + 0.5)
  out_N4 = edges_N4 - [0, 0, 1, 1]
  out_N4[:, 2:] = np.maximum(out_N4[:, 2:], out_N4[:, :2])
  height, width = hw
  return np.clip(out_N4, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.int32)


def titled(image_HW3: np.ndarray, title: str) -> np.ndarray:
  """The image below a 14 px white strip holding `title` in black (cut at the right edge)."""
  image_HW3 = _check_image(image_HW3)
  strip = Image.new('RGB', (image_HW3.shape[1], _TITLE_HEIGHT), (255, 255, 255))
  ImageDraw.Draw(strip).text((2, 1), title, fill=(0, 0, 0), font=ImageFont.load_default())
  return np.concatenate([np.asarray(strip), image_HW3], axis=0)


def grid(tiles: Sequence[np.ndarray], columns: int, pad: int = 2,
         background: int = 255) -> np.ndarray:
  """Tiles in rows of `columns`, filled left to right, `pad` pixels between cells.

  Every cell has the largest tile's height and width; a smaller tile sits at its cell's
  top-left corner, the rest is `background`. The result is
  `(rows * cell_h + (rows - 1) * pad, columns * cell_w + (columns - 1) * pad, 3)`.
  """
  if not tiles:
    raise ValueError('grid needs at least one tile')
  if columns < 1 or pad < 0:
    raise ValueError(f'columns must be >= 1 and pad >= 0, got {columns} and {pad}')
  tiles = [_check_image(t, f'tiles[{i}]') for i, t in enumerate(tiles)]
  cell_h = max(t.shape[0] for t in tiles)
  cell_w = max(t.shape[1] for t in tiles)
  rows = -(-len(tiles) // columns)
  out_HW3 = np.full((rows * cell_h + (rows - 1) * pad, columns * cell_w + (columns - 1) * pad,
                     3), background, np.uint8)
  for i, tile_HW3 in enumerate(tiles):
    y, x = (i // columns) * (cell_h + pad), (i % columns) * (cell_w + pad)
    out_HW3[y:y + tile_HW3.shape[0], x:x + tile_HW3.shape[1]] = tile_HW3
  return out_HW3


def box_width(hw: tuple[int, int]) -> int:
  """An outline width that stays visible on large images: 2 px up to 400 px long sides."""
  return max(2, round(max(hw) / 200))


def top_k_figure(image_HW3: np.ndarray, maps_kHW: Sequence[np.ndarray], titles: Sequence[str],
                 boxes_k4: Sequence[np.ndarray | None], *, colormap: str = 'jet',
                 heat_weight: float = 0.3, image_weight: float = 0.5,
                 valid_HW: np.ndarray | None = None, image_title: str = '') -> np.ndarray:
  """The paper's Fig. 4 layout, one row: the image, then one overlay per class.

  `maps_kHW[j]` is class j's map at the image's size, `titles[j]` its caption (e.g.
  'golden retriever 0.87'), `boxes_k4[j]` its box `(x0, y0, x1, y1)` (inclusive corners,
  the image's grid; None for none), drawn in red. Each tile has a title strip
  (`titled`); `valid_HW` as in `overlay`.

  Returns:
    uint8 `(14 + H, (k + 1) * W + k * 2, 3)`.
  """
  image_HW3 = _check_image(image_HW3)
  if not len(maps_kHW) == len(titles) == len(boxes_k4):
    raise ValueError(f'got {len(maps_kHW)} maps, {len(titles)} titles and {len(boxes_k4)} '
                     'boxes; give one of each per class')
  width = box_width(image_HW3.shape[:2])
  tiles = [titled(image_HW3, image_title)]
  for map_HW, title, box_4 in zip(maps_kHW, titles, boxes_k4):
    tile_HW3 = overlay(image_HW3, map_HW, heat_weight, image_weight, colormap, valid_HW)
    if box_4 is not None:
      tile_HW3 = draw_boxes(tile_HW3, np.asarray(box_4).reshape(1, 4), PRED_COLOR, width)
    tiles.append(titled(tile_HW3, title))
  return grid(tiles, columns=len(tiles))


def save_png(path: str | os.PathLike, image_HW3: np.ndarray) -> None:
  """Writes an RGB uint8 image as PNG atomically (temp file + rename), creating parent dirs."""
  buffer = io.BytesIO()
  Image.fromarray(_check_image(image_HW3)).save(buffer, format='PNG')
  io_utils.atomic_write_bytes(path, buffer.getvalue())


# Line colours of `curve_plot`, one per curve in order (matplotlib's first tab10 colours).
CURVE_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


def curve_plot(curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str,
               x_label: str, y_label: str, size: tuple[int, int] = (480, 360)) -> np.ndarray:
  """Curves `{name: (xs, ys)}`, both axes from 0 to 1, as a uint8 RGB picture: axes with
  ticks at 0, 0.5, 1, one coloured polyline per curve, its name in the legend (top right),
  the title above. Values outside [0, 1] are clipped to the frame. Text is ASCII (PIL's
  default font has no Greek letters)."""
  if not curves or len(curves) > len(CURVE_COLORS):
    raise ValueError(f'curve_plot draws 1 to {len(CURVE_COLORS)} curves, got {len(curves)}')
  width, height = size
  left, right, top, bottom = 44, 12, 22, 34
  image = Image.new('RGB', size, (255, 255, 255))
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default()
  x0, y0, x1, y1 = left, top, width - right, height - bottom
  to_px = lambda x, y: (x0 + float(np.clip(x, 0, 1)) * (x1 - x0),  # pylint: disable=unnecessary-lambda-assignment
                        y1 - float(np.clip(y, 0, 1)) * (y1 - y0))
  draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
  for t in (0.0, 0.5, 1.0):
    px, _ = to_px(t, 0)
    _, py = to_px(0, t)
    draw.line((px, y1, px, y1 + 4), fill=(0, 0, 0))
    draw.text((px - 8, y1 + 6), f'{t:g}', fill=(0, 0, 0), font=font)
    draw.line((x0 - 4, py, x0, py), fill=(0, 0, 0))
    draw.text((x0 - 24, py - 6), f'{t:g}', fill=(0, 0, 0), font=font)
  draw.text((x0, 4), title, fill=(0, 0, 0), font=font)
  draw.text(((x0 + x1) // 2 - 3 * len(x_label), height - 14), x_label, fill=(0, 0, 0),
            font=font)
  draw.text((2, y0 - 14), y_label, fill=(0, 0, 0), font=font)
  for k, (name, (xs, ys)) in enumerate(curves.items()):
    if len(xs) != len(ys):
      raise ValueError(f'curve {name!r}: {len(xs)} x values, {len(ys)} y values')
    color = CURVE_COLORS[k]
    points = [to_px(x, y) for x, y in zip(xs, ys)]
    if len(points) > 1:
      draw.line(points, fill=color, width=2)
    elif points:
      draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2),
                   fill=color)
    draw.line((x1 - 110, y0 + 10 + 12 * k, x1 - 94, y0 + 10 + 12 * k), fill=color, width=2)
    draw.text((x1 - 90, y0 + 4 + 12 * k), name, fill=(0, 0, 0), font=font)
  return np.asarray(image)


REGION_COLOR = (255, 255, 0)


def highlight_region(image_HW3: np.ndarray, region_HW: np.ndarray, *, dim: float = 0.4,
                     color: tuple[int, int, int] = REGION_COLOR) -> np.ndarray:
  """Network dissection's look: the image as it is inside `region_HW` (bool), darkened to
  `dim` of its brightness outside, and the region's outline (its pixels with a 4-neighbour
  outside it, or on the image's border) in `color`."""
  image_HW3 = _check_image(image_HW3)
  region_HW = np.asarray(region_HW, bool)
  if region_HW.shape != image_HW3.shape[:2]:
    raise ValueError(f'region_HW has shape {region_HW.shape}, image_HW3 {image_HW3.shape}')
  out_HW3 = image_HW3.astype(np.float32)
  out_HW3[~region_HW] *= dim
  out_HW3 = np.round(out_HW3).astype(np.uint8)
  padded = np.pad(region_HW, 1, constant_values=False)
  interior_HW = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  out_HW3[region_HW & ~interior_HW] = color
  return out_HW3

"""Encoded images and their boxes: checks at prepare time, decoding at read time.

Shared by every dataset (TFDS builders and the WSOL folder source), so that a corrupt
file, an odd colour mode or a box outside its image gets the same treatment everywhere:
a clear error naming the file, never a silent wrong answer.

Boxes are `(x0, y0, x1, y1)`: inclusive integer pixel corners in the original image, x
the column.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image, ImageOps


class BadImageError(ValueError):
  """An image file that cannot be decoded (not an image, truncated, corrupt)."""


class BadBoxError(ValueError):
  """A ground-truth box that cannot be used (x0 > x1, or outside its image)."""


def open_image(data: bytes, name: str) -> Image.Image:
  """The PIL image of encoded bytes, not yet decoded; a BadImageError names the file."""
  try:
    return Image.open(io.BytesIO(data))
  except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
    raise BadImageError(f'{name}: not a readable image ({e})') from e


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 H×W or H×W×C array (fast compression: TFDS needs TF to encode
  numpy, and masks are read back at once)."""
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG', compress_level=1)
  return buf.getvalue()


def check_encoded_image(data: bytes, name: str, formats: tuple[str, ...] = ('JPEG', 'PNG')
                        ) -> tuple[bytes, tuple[int, int]]:
  """`(jpeg_or_png_bytes, (height, width))` of a verified image file.

  The whole stream is decoded (at 1/8 scale through JPEG's DCT scaling, so that checking
  1.3M ILSVRC images costs minutes, not hours): a truncated file fails here, at prepare
  time, not in the middle of training. Files in one of `formats`, in RGB or grayscale,
  are kept byte for byte; anything else (CMYK JPEG, a PNG where only JPEG is expected,
  GIF, palette or 16-bit images) is re-encoded as a quality-95 JPEG, as TFDS's
  imagenet2012 does for the train set's CMYK and PNG-in-JPEG files.
  """
  image = open_image(data, name)
  size = image.size
  fmt, mode = image.format, image.mode
  try:
    if fmt == 'JPEG':
      image.draft('RGB', (max(1, size[0] // 8), max(1, size[1] // 8)))
    image.load()
  except Exception as e:
    raise BadImageError(f'{name}: truncated or corrupt {fmt} image ({e})') from e
  width, height = size
  if fmt in formats and mode in ('RGB', 'L'):
    return data, (height, width)
  rgb = to_rgb(open_image(data, name), name)
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format='JPEG', quality=95)
  return buf.getvalue(), (height, width)


def to_rgb(image: Image.Image, name: str) -> np.ndarray:
  """H×W×3 uint8 from a PIL image of any mode (grayscale, RGBA, CMYK, palette, 16-bit)."""
  try:
    if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
      # 16-bit: keep the top 8 bits of the range actually used by the format.
      array = np.asarray(image, np.uint32)
      scale = 65535 if array.max(initial=0) > 255 else 255
      return np.repeat((array * 255 // scale).astype(np.uint8)[..., None], 3, axis=-1)
    if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
      # Transparent pixels over white, as a browser shows them.
      rgba = image.convert('RGBA')
      background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
      image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert('RGB'), np.uint8)
  except Exception as e:
    raise BadImageError(f'{name}: cannot decode image ({e})') from e


def decode_image(data: bytes, name: str, *, exif_orientation: bool = False) -> np.ndarray:
  """H×W×3 uint8 pixels of an encoded image; a BadImageError names the file.

  `exif_orientation`: turn the pixels upright as the EXIF Orientation tag says (a phone's
  photo, as a viewer shows it). Off for datasets: their boxes are drawn on the stored
  pixels.
  """
  image = open_image(data, name)
  if exif_orientation:
    try:
      image = ImageOps.exif_transpose(image)
    except Exception as e:  # a damaged EXIF block, or pixels that fail to load
      raise BadImageError(f'{name}: cannot apply its EXIF orientation ({e})') from e
  return to_rgb(image, name)


def decode_mask(data: bytes, name: str) -> np.ndarray:
  """H×W uint8 of an encoded single-channel mask (colour masks are converted to L)."""
  image = open_image(data, name)
  try:
    return np.asarray(image if image.mode == 'L' else image.convert('L'), np.uint8)
  except Exception as e:
    raise BadImageError(f'{name}: cannot decode mask ({e})') from e


def check_boxes(boxes: Any, image_hw: tuple[int, int], name: str) -> np.ndarray:
  """N×4 int32 inclusive boxes, clipped to the image; raises BadBoxError naming the file.

  A box with x0 > x1 or y0 > y1, or lying wholly outside the image, is rejected: it says
  the annotation belongs to another image or another convention. A box that overhangs
  the image edge (common in ILSVRC and CUB, by a pixel or two) is clipped, with a warning.
  """
  boxes_N4 = np.asarray(boxes, np.float64).reshape(-1, 4)
  if not np.isfinite(boxes_N4).all():
    raise BadBoxError(f'{name}: non-finite box coordinates {boxes_N4.tolist()}')
  boxes_N4 = np.round(boxes_N4).astype(np.int64)
  height, width = image_hw
  for box in boxes_N4:
    x0, y0, x1, y1 = box
    if x0 > x1 or y0 > y1:
      raise BadBoxError(f'{name}: box {box.tolist()} has x0 > x1 or y0 > y1 '
                        '(expected inclusive corners x0 <= x1, y0 <= y1)')
    if x1 < 0 or y1 < 0 or x0 >= width or y0 >= height:
      raise BadBoxError(f'{name}: box {box.tolist()} lies outside the {width}×{height} image')
  clipped = boxes_N4.copy()
  clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0, width - 1)
  clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0, height - 1)
  if (clipped != boxes_N4).any():
    # The first few only: a dataset may have thousands of boxes one pixel over the edge.
    logging.log_first_n(logging.WARNING, '%s: boxes %s clipped to the %d×%d image', 20,
                        name, boxes_N4.tolist(), width, height)
  return clipped.astype(np.int32)


def localization_features(class_names: list[str] | None, *, image_format: str = 'jpeg',
                          with_mask: bool = False) -> tfds.features.FeaturesDict:
  """The features every localization builder stores (images as encoded bytes: no TF).

  `class_names=None` leaves the label's names to be set at prepare time (when only the
  manual files tell them); a prepared dataset reads them back from its folder.
  """
  features = {
      'image': tfds.features.Image(encoding_format=image_format),
      'label': tfds.features.ClassLabel(names=class_names),
      # (x0, y0, x1, y1), inclusive pixel corners in the original image; one row per object.
      'boxes': tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
      'image_hw': tfds.features.Tensor(shape=(2,), dtype=np.int32),
      'file_name': tfds.features.Text(),
  }
  if with_mask:
    features['segmentation_mask'] = tfds.features.Image(shape=(None, None, 1),
                                                        encoding_format='png')
  return tfds.features.FeaturesDict(features)


def skip_or_raise(error: ValueError, skip_bad_images: bool) -> None:
  """Re-raises a bad-file error, or logs it as a warning when skipping is allowed."""
  if not skip_bad_images:
    raise error
  logging.warning('skipped: %s', error)

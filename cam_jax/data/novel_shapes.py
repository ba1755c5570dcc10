r"""Shapes that cam_synth never draws, as a folder-per-class dataset with boxes: the target
of transfer learning (paper Sec. 4) for a network trained on cam_synth.

  python -m cam_jax.data.novel_shapes --root=data/novel_shapes

writes ROOT/<split>/<class>/<nnnnn>.png for the splits train, validation and test, and
ROOT/boxes.txt (`<split>/<class>/<file>,x0,y0,x1,y1`: each object's tight box), the
layout of data.name='folders' with config.data.folders.boxes_file=ROOT/boxes.txt. The
images are drawn as cam_synth's are (textured clutter, distractors, contrasting colours)
with other objects: a pentagon, an arrow, a crescent, a chevron, a trapezoid and an
ellipse band. Deterministic: the same seed gives the same files.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from cam_jax import io_utils
from cam_jax.data import images
from cam_jax.data import synthetic

CLASS_NAMES = ('pentagon', 'arrow', 'crescent', 'chevron', 'trapezoid', 'band')
SPLITS = {'train': 60, 'validation': 20, 'test': 40}  # images per class


def _polygon(name: str) -> list[tuple[float, float]]:
  if name == 'pentagon':
    angles = -np.pi / 2 + np.arange(5) * 2 * np.pi / 5
    return list(zip(0.5 + 0.5 * np.cos(angles), 0.5 + 0.5 * np.sin(angles)))
  if name == 'arrow':
    return [(0, 0.35), (0.55, 0.35), (0.55, 0), (1, 0.5), (0.55, 1), (0.55, 0.65), (0, 0.65)]
  if name == 'chevron':
    return [(0, 0), (0.45, 0), (1, 0.5), (0.45, 1), (0, 1), (0.55, 0.5)]
  if name == 'trapezoid':
    return [(0.3, 0), (0.7, 0), (1, 1), (0, 1)]
  raise ValueError(f'no polygon for shape {name!r}')


def draw_shape(draw: ImageDraw.ImageDraw, name: str, box: tuple[int, int, int, int],
               fill) -> None:
  """Draws shape `name` filling the inclusive box (x0, y0, x1, y1)."""
  x0, y0, x1, y1 = box
  w, h = x1 - x0, y1 - y0
  if name == 'crescent':
    draw.ellipse([x0, y0, x1, y1], fill=fill)
    draw.ellipse([x0 + 0.35 * w, y0 - 0.1 * h, x1 + 0.35 * w, y1 - 0.1 * h], fill=0)
  elif name == 'band':
    draw.ellipse([x0, y0 + 0.3 * h, x1, y1 - 0.3 * h], fill=fill)
  else:
    pts = np.asarray(_polygon(name), np.float64)
    pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))
    draw.polygon([(x0 + u * w, y0 + v * h) for u, v in pts], fill=fill)


def render(rng: np.random.Generator, image_size: int, label: int
           ) -> tuple[np.ndarray, np.ndarray]:
  """One image of class `label` and its object's tight box (x0, y0, x1, y1)."""
  # pylint: disable=protected-access
  image = Image.fromarray(synthetic._background(rng, image_size))
  draw = ImageDraw.Draw(image)
  box = synthetic._place(rng, image_size, [], 0.3, 0.55)
  colour = synthetic._contrasting_colour(
      rng, np.asarray(image)[box[1]:box[3] + 1, box[0]:box[2] + 1])
  # The exact pixels first (a crescent's bite is cut out of a blank canvas), then the
  # same drawing through them onto the image.
  canvas = Image.new('L', (image_size, image_size), 0)
  draw_shape(ImageDraw.Draw(canvas), CLASS_NAMES[label], box, 1)
  mask = np.asarray(canvas, bool)
  pixels = np.asarray(image).copy()
  pixels[mask] = colour
  image = Image.fromarray(pixels)
  draw = ImageDraw.Draw(image)
  taken = [box]
  for _ in range(int(rng.integers(1, 3))):
    other = synthetic._place(rng, image_size, taken, 0.2, 0.4)
    if other is None:
      break
    taken.append(other)
    c = synthetic._contrasting_colour(
        rng, np.asarray(image)[other[1]:other[3] + 1, other[0]:other[2] + 1])
    # A distractor: a diagonal cross (cam_synth's strokes are its own business).
    x0, y0, x1, y1 = other
    width = max(2, round(0.15 * (x1 - x0 + 1)))
    draw.line([(x0, y0), (x1, y1)], fill=c, width=width)
    draw.line([(x0, y1), (x1, y0)], fill=c, width=width)
  rows, cols = np.nonzero(mask)
  return np.asarray(image), np.array([cols.min(), rows.min(), cols.max(), rows.max()])


def write(root: str, *, per_class: dict[str, int] | None = None, image_size: int = 64,
          seed: int = 0, num_classes: int = len(CLASS_NAMES)) -> dict[str, int]:
  """Writes the dataset under `root` (module docstring); returns the images per split."""
  per_class = SPLITS if per_class is None else per_class
  counts, lines = {}, []
  for split_id, (split, n) in enumerate(per_class.items()):
    for label in range(num_classes):
      name = CLASS_NAMES[label]
      for i in range(n):
        rng = np.random.default_rng([seed, split_id, label, i])
        pixels, box = render(rng, image_size, label)
        rel = f'{split}/{name}/{i:05d}.png'
        io_utils.atomic_write_bytes(os.path.join(root, rel), images.encode_png(pixels))
        lines.append(f'{rel},{box[0]},{box[1]},{box[2]},{box[3]}\n')
    counts[split] = n * num_classes
  io_utils.atomic_write_text(os.path.join(root, 'boxes.txt'), ''.join(lines))
  return counts


_ROOT = flags.DEFINE_string('root', None, 'Where the dataset goes.')
_SIZE = flags.DEFINE_integer('image_size', 64, 'Image side.')


def main(argv):
  del argv
  if not _ROOT.value:
    raise app.UsageError('--root is required')
  print(write(_ROOT.value, image_size=_SIZE.value))


if __name__ == '__main__':
  app.run(main)

"""`cam_synth`: an embedded synthetic localization dataset, prepared without TensorFlow.

Each image shows one or two objects of a labelled class (a shape drawn in a random
colour, at a uniformly random position, with a box side between 20 % and 50 % of the
image side) on textured clutter, together with distractor objects that belong to no
class. Features: the image (PNG bytes), its label, every ground-truth box of the
labelled objects and their segmentation mask (evaluation only; never for training).

Boxes are `(x0, y0, x1, y1)`: inclusive integer pixel corners, x the column, as in
ILSVRC XML.

Everything is a pure function of (seed, split, index), so a dataset prepared twice, or
on two hosts, is identical, and `example_objects` draws any stored example again to give
what the dataset does not store: every object's name and exact mask, distractors too
(the ground truth of `cam_jax.patterns`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from cam_jax.data import images

# The shapes are not rotated: rotation would make a square a diamond.
CLASS_NAMES = (
    'circle', 'square', 'triangle', 'plus', 'ring',
    'star', 'diamond', 'hexagon', 'hourglass', 'letter_t',
)
_SPLIT_IDS = {'train': 0, 'test': 1, 'validation': 2}
_MIN_SIDE, _MAX_SIDE = 0.2, 0.5  # object box side, as a fraction of the image side
_MIN_CONTRAST = 110.0  # RGB distance between an object and the background it sits on


def _unit_polygon(name: str) -> list[tuple[float, float]]:
  """Vertices of a class shape spanning the unit square [0, 1]^2 (x right, y down)."""
  pts = np.asarray(_raw_polygon(name), np.float64)
  # Stretched to touch all four sides, so that the object's box is the placed box.
  pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))
  return [tuple(p) for p in pts]


def _raw_polygon(name: str) -> list[tuple[float, float]]:
  if name == 'square':
    return [(0, 0), (1, 0), (1, 1), (0, 1)]
  if name == 'triangle':
    return [(0.5, 0), (1, 1), (0, 1)]
  if name == 'plus':
    a, b = 0.34, 0.66
    return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b),
            (0, b), (0, a), (a, a)]
  if name == 'star':
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 0.5, 0.2)
    return list(zip(0.5 + radii * np.cos(angles), 0.5 + radii * np.sin(angles)))
  if name == 'diamond':
    return [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]
  if name == 'hexagon':
    angles = np.arange(6) * np.pi / 3
    return list(zip(0.5 + 0.5 * np.cos(angles), 0.5 + 0.5 * np.sin(angles)))
  if name == 'hourglass':
    return [(0, 0), (1, 0), (0.56, 0.5), (1, 1), (0, 1), (0.44, 0.5)]
  if name == 'letter_t':
    return [(0, 0), (1, 0), (1, 0.3), (0.65, 0.3), (0.65, 1), (0.35, 1), (0.35, 0.3),
            (0, 0.3)]
  raise ValueError(f'no polygon for shape {name!r}')


def _draw_class_shape(draw: ImageDraw.ImageDraw, name: str, box: tuple[int, int, int, int],
                      fill) -> None:
  """Draws class shape `name` filling the inclusive box (x0, y0, x1, y1)."""
  x0, y0, x1, y1 = box
  if name == 'circle':
    draw.ellipse([x0, y0, x1, y1], fill=fill)
  elif name == 'ring':
    draw.ellipse([x0, y0, x1, y1], outline=fill, width=max(2, round(0.18 * (x1 - x0 + 1))))
  else:
    w, h = x1 - x0, y1 - y0
    draw.polygon([(x0 + u * w, y0 + v * h) for u, v in _unit_polygon(name)], fill=fill)


# The kinds of distractor, named `distractor:<kind>` among an example's objects.
DISTRACTOR_KINDS = ('zigzag', 'cross')


def distractor_name(kind: str) -> str:
  return f'distractor:{kind}'


def object_names(num_classes: int) -> tuple[str, ...]:
  """Every name an example's `objects` may hold: the classes, then the distractor kinds."""
  return CLASS_NAMES[:num_classes] + tuple(distractor_name(k) for k in DISTRACTOR_KINDS)


@dataclasses.dataclass(frozen=True)
class _Distractor:
  """A drawn distractor's geometry: drawn once on the image, once on a blank canvas."""
  kind: str
  lines: tuple[tuple[list[tuple[float, float]], str | None], ...]  # (points, joint)
  width: int

  def draw(self, draw: ImageDraw.ImageDraw, fill) -> None:
    for points, joint in self.lines:
      draw.line(points, fill=fill, width=self.width, joint=joint)


def _distractor(rng: np.random.Generator, box: tuple[int, int, int, int]) -> _Distractor:
  """An object of no class in the inclusive box: a thick zig-zag stroke or a diagonal
  cross."""
  x0, y0, x1, y1 = box
  width = max(2, round(0.15 * (x1 - x0 + 1)))
  if rng.random() < 0.5:
    n = int(rng.integers(3, 6))
    xs = np.linspace(x0, x1, n)
    ys = np.where(np.arange(n) % 2 == 0, y0, y1) + rng.uniform(-0.15, 0.15, n) * (y1 - y0)
    return _Distractor('zigzag', ((list(zip(xs, np.clip(ys, y0, y1))), 'curve'),), width)
  return _Distractor('cross', (([(x0, y0), (x1, y1)], None), ([(x0, y1), (x1, y0)], None)),
                     width)


def _blank_mask(image_size: int, draw_on: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
  """The pixels `draw_on` paints (with fill 1) on a blank canvas: an object's exact mask.
  The image's own drawing is left alone, so no random draw is added."""
  canvas = Image.new('L', (image_size, image_size), 0)
  draw_on(ImageDraw.Draw(canvas))
  return np.asarray(canvas, np.uint8)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """Textured clutter: a smooth random colour field, thin random lines and pixel noise."""
  coarse = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.float32)
  field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size),
                                                                      Image.BICUBIC))
  img = Image.fromarray(field)
  draw = ImageDraw.Draw(img)
  for _ in range(int(rng.integers(3, 8))):
    pts = rng.uniform(0, size, size=4)
    colour = tuple(int(c) for c in rng.integers(40, 216, 3))
    draw.line(list(pts), fill=colour, width=1)
  arr = np.asarray(img).astype(np.float32) + rng.normal(0, 8, size=(size, size, 3))
  return np.clip(arr, 0, 255).astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator, region: np.ndarray) -> tuple[int, int, int]:
  """A random colour that stands out from the mean colour of `region`."""
  mean = region.reshape(-1, 3).mean(0)
  for _ in range(100):
    colour = rng.integers(0, 256, 3)
    if np.linalg.norm(colour - mean) >= _MIN_CONTRAST:
      break
  else:  # A mid-grey background: its complement is always far enough.
    colour = np.where(mean > 127, 0, 255)
  return tuple(int(c) for c in colour)


def _place(rng: np.random.Generator, size: int, taken: list[tuple[int, int, int, int]],
           min_side: float, max_side: float) -> tuple[int, int, int, int] | None:
  """A random square-ish box, uniformly positioned, not overlapping any in `taken`."""
  for _ in range(50):
    w = int(round(rng.uniform(min_side, max_side) * size))
    h = int(round(w * rng.uniform(0.8, 1.25)))
    h = int(np.clip(h, round(min_side * size), round(max_side * size)))
    x0 = int(rng.integers(0, size - w + 1))
    y0 = int(rng.integers(0, size - h + 1))
    box = (x0, y0, x0 + w - 1, y0 + h - 1)
    # A gap of 1/16 of the side between objects: they never touch, masks stay separable,
    # and each object's box is recoverable from a map of the network's resolution.
    gap = max(1, size // 16)
    if all(box[0] > t[2] + gap or box[2] < t[0] - gap or box[1] > t[3] + gap
           or box[3] < t[1] - gap for t in taken):
      return box
  return None


def render_example(rng: np.random.Generator, image_size: int, num_classes: int,
                   *, p_two_instances: float = 0.1, max_distractors: int = 2,
                   with_objects: bool = True) -> dict[str, np.ndarray | int]:
  """Draws one example.

  Returns a dict with `image` (S×S×3 uint8), `mask` (S×S uint8, 1 on the labelled
  objects), `label` (int), `boxes` (N×4 int32, `(x0, y0, x1, y1)` inclusive: the
  tight box of each labelled object's drawn pixels) and `objects`: `(name, mask_HW
  bool)` of every object drawn, in drawing order, the labelled ones named by their class
  (`CLASS_NAMES[label]`), the distractors `distractor:<kind>` (`DISTRACTOR_KINDS`). Each
  mask is the object's exact pixels, drawn again on a blank canvas; objects are placed
  1/16 of the side apart, so the masks are disjoint. The dataset stores only the labelled
  objects' union (`mask`); `regenerate_example` gives the rest back for a stored example.
  `with_objects=False` leaves `objects` out (and the distractors' masks undrawn): the
  preparation of the dataset, which stores none of them.
  """
  if not 1 <= num_classes <= len(CLASS_NAMES):
    raise ValueError(f'num_classes must be in [1, {len(CLASS_NAMES)}], got {num_classes}')
  label = int(rng.integers(num_classes))
  image = Image.fromarray(_background(rng, image_size))
  draw = ImageDraw.Draw(image)
  mask = np.zeros((image_size, image_size), np.uint8)
  taken: list[tuple[int, int, int, int]] = []
  boxes = []
  objects: list[tuple[str, np.ndarray]] = []
  num_instances = 2 if rng.random() < p_two_instances else 1
  for i in range(num_instances):
    # Two instances must both fit: the second may come out smaller or not at all.
    box = _place(rng, image_size, taken, _MIN_SIDE, _MAX_SIDE if i == 0 else 0.35)
    if box is None:
      break
    taken.append(box)
    x0, y0, x1, y1 = box
    colour = _contrasting_colour(rng, np.asarray(image)[y0:y1 + 1, x0:x1 + 1])
    _draw_class_shape(draw, CLASS_NAMES[label], box, colour)
    obj_mask = _blank_mask(image_size, functools.partial(
        _draw_class_shape, name=CLASS_NAMES[label], box=box, fill=1))
    rows, cols = np.nonzero(obj_mask)
    boxes.append((cols.min(), rows.min(), cols.max(), rows.max()))
    mask |= obj_mask
    if with_objects:
      objects.append((CLASS_NAMES[label], obj_mask.astype(bool)))
  for _ in range(int(rng.integers(1, max_distractors + 1))):
    box = _place(rng, image_size, taken, _MIN_SIDE, 0.4)
    if box is None:
      break
    taken.append(box)
    x0, y0, x1, y1 = box
    colour = _contrasting_colour(rng, np.asarray(image)[y0:y1 + 1, x0:x1 + 1])
    distractor = _distractor(rng, box)
    distractor.draw(draw, colour)
    if with_objects:
      objects.append((distractor_name(distractor.kind),
                      _blank_mask(image_size, functools.partial(distractor.draw, fill=1))
                      .astype(bool)))
  # Distractors never overlap the objects, so the mask stays exact.
  example = {
      'image': np.asarray(image, np.uint8),
      'mask': mask,
      'label': label,
      'boxes': np.asarray(boxes, np.int32).reshape(-1, 4),
  }
  if with_objects:
    example['objects'] = objects
  return example


@dataclasses.dataclass
class CamSynthConfig(tfds.core.BuilderConfig):
  """Size of the synthetic dataset."""
  image_size: int = 64
  num_classes: int = 10
  num_train: int = 10_000
  num_test: int = 1_000
  # Held-out images on which runs choose their best checkpoint, so that the test split
  # stays unseen by every choice.
  num_validation: int = 1_000
  seed: int = 0


class CamSynth(tfds.core.GeneratorBasedBuilder):
  """Shapes on clutter with boxes and masks, for weakly supervised localization."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release.',
      '1.1.0': 'Objects 1/16 of the side apart; a second instance in 10 % of images.',
      '1.2.0': 'A validation split (train and test unchanged).',
  }
  BUILDER_CONFIGS = [
      CamSynthConfig(name='default', description='64×64 images, 10 classes.'),
      CamSynthConfig(name='tiny', description='32×32 images, 4 classes; for tests.',
                     image_size=32, num_classes=4, num_train=256, num_test=64,
                     num_validation=64),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    names = list(CLASS_NAMES[:self.builder_config.num_classes])
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=names),
            # (x0, y0, x1, y1), inclusive pixel corners, one row per labelled object.
            'boxes': tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
            'segmentation_mask': tfds.features.Image(shape=(s, s, 1), encoding_format='png'),
        }),
        supervised_keys=('image', 'label'),
        # Record i is example i: evaluation order and picture indices are stable.
        disable_shuffling=True,
        description=__doc__,
    )

  def _split_generators(self, dl_manager) -> dict[str, Iterator]:
    del dl_manager  # Nothing to download: the data is drawn.
    cfg = self.builder_config
    return {'train': self._generate_examples('train', cfg.num_train),
            'validation': self._generate_examples('validation', cfg.num_validation),
            'test': self._generate_examples('test', cfg.num_test)}

  def _generate_examples(self, split: str, num: int):
    cfg = self.builder_config
    for index in range(num):
      ex = render_example(example_rng(cfg.seed, split, index), cfg.image_size,
                          cfg.num_classes, with_objects=False)
      yield index, {
          'image': images.encode_png(ex['image']),
          'label': ex['label'],
          'boxes': ex['boxes'],
          'segmentation_mask': images.encode_png(ex['mask'] * 255),
      }


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator that example `index` of `split` is drawn from (`_generate_examples`)."""
  return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def _builder_config(builder_config: CamSynthConfig | str | None) -> CamSynthConfig:
  if isinstance(builder_config, CamSynthConfig):
    return builder_config
  name = builder_config or CamSynth.DEFAULT_CONFIG_NAME
  configs = {c.name: c for c in CamSynth.BUILDER_CONFIGS}
  if name not in configs:
    raise ValueError(f'cam_synth has no builder config {name!r}; known: {", ".join(configs)}')
  return configs[name]


def regenerate_example(builder_config: CamSynthConfig | str | None, split: str,
                       index: int) -> dict[str, np.ndarray | int | list]:
  """Example `index` of `split` drawn again from its seed, as `_generate_examples` drew it
  for the stored dataset: `render_example`'s dict, with every object's exact mask
  (`objects`), which the stored dataset does not hold. `builder_config`: a config or its
  name ('default', 'tiny'; None: the default)."""
  cfg = _builder_config(builder_config)
  sizes = {'train': cfg.num_train, 'test': cfg.num_test, 'validation': cfg.num_validation}
  if split not in sizes:
    raise ValueError(f'cam_synth has no split {split!r}; splits: {", ".join(sizes)}')
  if not 0 <= index < sizes[split]:
    raise IndexError(f'cam_synth/{cfg.name} {split} has {sizes[split]} examples, '
                     f'no index {index}')
  return render_example(example_rng(cfg.seed, split, index), cfg.image_size,
                        cfg.num_classes)


def example_objects(builder_config: CamSynthConfig | str | None, split: str,
                    index: int) -> list[tuple[str, np.ndarray]]:
  """`(name, mask_HW bool)` of every object in example `index` of `split`
  (`render_example`'s `objects`: the labelled class's instances, then the distractors)."""
  return regenerate_example(builder_config, split, index)['objects']

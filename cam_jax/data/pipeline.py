"""grain input pipelines: decoded TFDS examples in, fixed-shape numpy batches out.

Train batch: `image` (B×S×S×3 float32, normalised), `label` (B,).
Eval batch: those plus `boxes` (B×M×4 int32, ground truth in the *original* image's
pixel grid, rows of -1 past `num_boxes`), `num_boxes`, `orig_hw` (B×2) and `index`
(position in the split), so that predictions are scored on the original image
(DESIGN.md §5) whatever the network saw.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import grain
import jax
import numpy as np
from PIL import Image

# ImageNet statistics, so that pretrained backbones see what they were trained on.
MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255
STDDEV_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
  """H×W×3 uint8 from a decoded image (grayscale is repeated)."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected an H×W×3 uint8 image, got {image.dtype} {image.shape}')
  return image


def resize(image_HW3: np.ndarray, size: int) -> np.ndarray:
  """The whole image to size×size (bilinear); unchanged when it already is."""
  if image_HW3.shape[:2] == (size, size):
    return image_HW3
  return np.asarray(Image.fromarray(image_HW3).resize((size, size), Image.BILINEAR))


def normalize(image_HW3: np.ndarray) -> np.ndarray:
  return (image_HW3.astype(np.float32) - MEAN_RGB) / STDDEV_RGB


def denormalize(image_HW3: np.ndarray) -> np.ndarray:
  """uint8 pixels back from a normalised image."""
  return np.clip(np.asarray(image_HW3) * STDDEV_RGB + MEAN_RGB, 0, 255).round().astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class TrainPreprocess(grain.transforms.RandomMap):
  """Resize to S×S, random horizontal flip, normalise."""
  image_size: int
  flip: bool = True

  def random_map(self, ex: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = resize(to_rgb_uint8(ex['image']), self.image_size)
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {'image': normalize(image), 'label': np.int32(ex['label'])}


@dataclasses.dataclass(frozen=True)
class EvalPreprocess(grain.transforms.Map):
  """The whole image resized to S×S; ground truth kept in the original pixel grid."""
  image_size: int
  max_boxes: int

  def map(self, item: tuple[int, dict[str, Any]]) -> dict[str, np.ndarray]:
    index, ex = item
    image = to_rgb_uint8(ex['image'])
    boxes = np.asarray(ex['boxes'], np.int32).reshape(-1, 4)
    if len(boxes) > self.max_boxes:
      raise ValueError(f'example {index} has {len(boxes)} boxes; raise config.data.max_boxes '
                       f'(now {self.max_boxes})')
    padded = np.full((self.max_boxes, 4), -1, np.int32)
    padded[:len(boxes)] = boxes
    return {
        'image': normalize(resize(image, self.image_size)),
        'label': np.int32(ex['label']),
        'boxes': padded,
        'num_boxes': np.int32(len(boxes)),
        'orig_hw': np.asarray(image.shape[:2], np.int32),
        'index': np.int32(index),
    }


def _process_shard(ds: grain.MapDataset) -> grain.MapDataset:
  """This process's share of a split (every process reads a disjoint stride)."""
  return ds.slice(slice(jax.process_index(), None, jax.process_count()))


def _read_options(num_threads: int) -> grain.ReadOptions:
  # Each prefetched element is a whole batch; a buffer below the thread count idles threads.
  return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(num_threads, 2))


def train_batches(source, *, image_size: int, process_batch_size: int, seed: int,
                  start_step: int = 0, flip: bool = True,
                  num_threads: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled batches; batch k is a pure function of (seed, k).

  Resuming at `start_step` yields exactly the batches an uninterrupted run would see,
  which is what makes a resumed run end with the same parameters.
  """
  ds = (_process_shard(grain.MapDataset.source(source))
        .shuffle(seed=seed)
        .repeat(None)  # Reseeded each epoch: every epoch has its own order.
        .random_map(TrainPreprocess(image_size, flip), seed=seed + 1)
        .batch(process_batch_size, drop_remainder=True))
  ds = ds.slice(slice(start_step, None))
  return iter(ds.to_iter_dataset(_read_options(num_threads)))


def eval_batches(source, *, image_size: int, process_batch_size: int, max_boxes: int,
                 num_examples: int | None = None,
                 num_threads: int = 4) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """`(batch, num_valid)` over (the first `num_examples` of) a split, in order.

  Short batches are padded to full size by repeating their first example, so that every
  batch has one shape (one compilation); `num_valid` says how many rows are real. Every
  process yields the same number of batches (the jitted step is collective), padding with
  all-invalid batches where its share is shorter.
  """
  ds = grain.MapDataset.source(source)
  if num_examples is not None:
    ds = ds.slice(slice(0, min(num_examples, len(ds))))
  longest_share = -(-len(ds) // jax.process_count())
  num_batches = -(-longest_share // process_batch_size)
  ds = _process_shard(ds.map_with_index(lambda i, ex: (i, ex)))
  ds = ds.map(EvalPreprocess(image_size, max_boxes)).batch(process_batch_size)
  batches = iter(ds.to_iter_dataset(_read_options(num_threads)))
  # A process whose share is empty (fewer images than processes) still needs a batch.
  template = {
      'image': np.zeros((process_batch_size, image_size, image_size, 3), np.float32),
      'label': np.zeros((process_batch_size,), np.int32),
      'boxes': np.full((process_batch_size, max_boxes, 4), -1, np.int32),
      'num_boxes': np.zeros((process_batch_size,), np.int32),
      'orig_hw': np.full((process_batch_size, 2), image_size, np.int32),
      'index': np.zeros((process_batch_size,), np.int32),
  }
  for _ in range(num_batches):
    batch = next(batches, None)
    if batch is None:
      yield template, 0
      continue
    n = len(batch['label'])
    if n < process_batch_size:
      batch = {k: np.concatenate([v, np.repeat(v[:1], process_batch_size - n, axis=0)])
               for k, v in batch.items()}
    template = batch
    yield batch, n

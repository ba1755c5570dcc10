"""grain input pipelines: encoded examples in, fixed-shape numpy batches out.

Train batch: `image` (B×S×S×3 float32, normalised), `label` (B,).
Eval batch: those plus `boxes` (B×M×4 int32, ground truth in the *original* image's
pixel grid, rows of -1 past `num_boxes`), `num_boxes`, `orig_hw` (B×2), `window` (B×4
float32) and `index` (position in the split); for datasets with masks, `mask` and
`ignore` (B×S×S bool: foreground, and pixels PxAP must not score) on the network's input
grid, through the same window (nearest neighbour, as wsolevaluation resizes masks).

Every transform here is "crop a window of the original image, resize it to S×S"; the
windows and the maps between the two pixel grids are `cam_jax.windows`, so that
predictions are scored on the original image whatever the network saw.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import grain
import jax
import numpy as np
from absl import flags
from PIL import Image

from cam_jax.data import conventions
from cam_jax.data import images
from cam_jax import windows

DEFAULT_INPUT = conventions.preset(conventions.DEFAULT)

TRAIN_CROPS = ('random_resized', 'resize')
EVAL_CROPS = ('resize', 'resize_crop')


# ---------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------

def example_name(ex: dict[str, Any], index: int) -> str:
  """How errors name an example: its file, else its position."""
  name = ex.get('file_name')
  if isinstance(name, bytes):
    name = name.decode('utf-8', 'replace')
  return name or f'example {index}'


def decode(ex: dict[str, Any], index: int) -> np.ndarray:
  """H×W×3 uint8 pixels of an example's image (encoded bytes, or already pixels)."""
  image = ex['image']
  if isinstance(image, (bytes, np.bytes_)):
    return images.decode_image(bytes(image), example_name(ex, index))
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  return images.to_rgb(Image.fromarray(image), example_name(ex, index))


def crop_resize(image_HW3: np.ndarray, window_4: np.ndarray, size: int) -> np.ndarray:
  """The window `(x0, y0, x1, y1)` (continuous coordinates) resized to size×size.

  PIL's bilinear filter widens with the scale factor when shrinking (antialiased), as
  the flax ImageNet example's `tf.image.resize` with antialias does.
  """
  height, width = image_HW3.shape[:2]
  box = tuple(float(v) for v in window_4)
  if (height, width) == (size, size) and box == (0.0, 0.0, float(width), float(height)):
    return image_HW3
  return np.asarray(Image.fromarray(image_HW3).resize((size, size), Image.BILINEAR, box=box))


def mask_on_input(mask_HW: np.ndarray, window_4: np.ndarray, size: int) -> np.ndarray:
  """A uint8 mask's window, nearest-neighbour resized to size×size, as bool: foreground
  where at least half the annotators said so (>= 128; CUB's masks are soft)."""
  box = tuple(float(v) for v in window_4)
  resized = Image.fromarray(mask_HW).resize((size, size), Image.NEAREST, box=box)
  return np.asarray(resized) >= 128


def normalize(image_HW3: np.ndarray,
              convention: conventions.InputConvention = DEFAULT_INPUT) -> np.ndarray:
  """uint8 RGB pixels → network input, by the weights' convention (default: torchvision's
  ImageNet mean and std)."""
  return convention.normalize(image_HW3)


def denormalize(image_HW3: np.ndarray,
                convention: conventions.InputConvention = DEFAULT_INPUT) -> np.ndarray:
  """uint8 RGB pixels back from a network input."""
  return convention.denormalize(image_HW3)


# ---------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainPreprocess(grain.transforms.RandomMap):
  """Decode, crop (random resized, or the whole image), resize to S×S, flip, normalise."""
  image_size: int
  crop: str = 'random_resized'
  flip: bool = True
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
  convention: conventions.InputConvention = DEFAULT_INPUT

  def __post_init__(self):
    if self.crop not in TRAIN_CROPS:
      raise ValueError(f'config.data.train_crop={self.crop!r}; expected one of {TRAIN_CROPS}')

  def random_map(self, item: tuple[int, dict[str, Any]],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    index, ex = item
    image = decode(ex, index)
    if self.crop == 'random_resized':
      window = windows.random_resized_crop_window(image.shape[:2], rng, self.image_size,
                                          area_range=self.area_range,
                                          aspect_range=self.aspect_range)
    else:
      window = windows.whole_window(image.shape[:2])
    image = crop_resize(image, window, self.image_size)
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {'image': normalize(image, self.convention), 'label': np.int32(ex['label'])}


@dataclasses.dataclass(frozen=True)
class EvalPreprocess(grain.transforms.Map):
  """The whole image resized to S×S (default), or the shorter side resized to R and the
  central S×S crop; ground truth kept in the original pixel grid, with the window."""
  image_size: int
  max_boxes: int
  crop: str = 'resize'
  resize_shorter: int | None = None  # R; None: S / 0.875, the usual 256 for 224
  with_masks: bool = False  # decode `segmentation_mask` (and `ignore_mask`) for PxAP
  convention: conventions.InputConvention = DEFAULT_INPUT
  # N×4 inclusive pixel boxes, row i the region of example i that the network sees
  # (crops of Sec. 4.1), resized to S×S whatever the aspect; None: `crop`.
  crop_boxes: np.ndarray | None = None
  with_names: bool = False  # `file_name`: the example's name (its file, else its position)

  def __post_init__(self):
    if self.crop not in EVAL_CROPS:
      raise ValueError(f'config.data.eval_crop={self.crop!r}; expected one of {EVAL_CROPS}')

  def window(self, hw: tuple[int, int], index: int | None = None) -> np.ndarray:
    if self.crop_boxes is not None:
      # Inclusive pixel corners → the continuous window they cover, inside the image.
      x0, y0, x1, y1 = (float(v) for v in self.crop_boxes[index])
      return np.array([max(x0, 0), max(y0, 0), min(x1 + 1, hw[1]), min(y1 + 1, hw[0])],
                      np.float64)
    if self.crop == 'resize':
      return windows.whole_window(hw)
    shorter = self.resize_shorter or int(round(self.image_size / 0.875))
    return windows.center_crop_window(hw, self.image_size, shorter)

  def map(self, item: tuple[int, dict[str, Any]]) -> dict[str, np.ndarray]:
    index, ex = item
    image = decode(ex, index)
    boxes = np.asarray(ex['boxes'], np.int32).reshape(-1, 4)
    if len(boxes) > self.max_boxes:
      raise ValueError(f'{example_name(ex, index)} has {len(boxes)} boxes; raise '
                       f'config.data.max_boxes (now {self.max_boxes})')
    padded = np.full((self.max_boxes, 4), -1, np.int32)
    padded[:len(boxes)] = boxes
    window = self.window(image.shape[:2], index)
    out = {
        'image': normalize(crop_resize(image, window, self.image_size), self.convention),
        'label': np.int32(ex['label']),
        'boxes': padded,
        'num_boxes': np.int32(len(boxes)),
        'orig_hw': np.asarray(image.shape[:2], np.int32),
        'window': window.astype(np.float32),
        'index': np.int32(index),
    }
    if self.with_names:
      out['file_name'] = np.str_(example_name(ex, index))
    if self.with_masks:
      name = example_name(ex, index)
      for key, field in (('mask', 'segmentation_mask'), ('ignore', 'ignore_mask')):
        if field in ex:
          mask = ex[field]  # an encoded PNG (TFDS), or already pixels (WSOL folders)
          mask = (np.asarray(mask, np.uint8) if isinstance(mask, np.ndarray)
                  else images.decode_mask(bytes(mask), f'{name} ({field})'))
          if mask.shape != image.shape[:2]:
            raise ValueError(f'{name}: {field} is {mask.shape[1]}×{mask.shape[0]}, the image '
                             f'{image.shape[1]}×{image.shape[0]}')
          out[key] = mask_on_input(mask, window, self.image_size)
        else:
          out[key] = np.zeros((self.image_size, self.image_size), bool)
    return out


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------

def _process_shard(ds: grain.MapDataset) -> grain.MapDataset:
  """This process's share of a split (every process reads a disjoint stride)."""
  return ds.slice(slice(jax.process_index(), None, jax.process_count()))


def _to_iter(ds: grain.MapDataset, num_threads: int, num_workers: int) -> grain.DatasetIterator:
  # Each prefetched element is a whole batch; a buffer below the thread count idles threads.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=max(num_threads, 2)))
  if num_workers > 0:
    # Worker processes decode in parallel (the GIL holds threads back); the batch order is
    # the same as with none, and the iterator's state still checkpoints. grain reads absl
    # flags in its workers: outside an absl app (Colab, pytest) they count as parsed.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it)


def train_batches(source, *, image_size: int, global_batch_size: int, seed: int,
                  start_step: int = 0, crop: str = 'random_resized', flip: bool = True,
                  convention: conventions.InputConvention = DEFAULT_INPUT,
                  num_threads: int = 4, num_workers: int = 0) -> grain.DatasetIterator:
  """This process's rows of the global batches `start_step + 1, start_step + 2, ...`.

  The global stream is one shuffled, augmented order of the whole split (reshuffled each
  epoch), cut into global batches; process p of P reads only its rows (the p-th of P
  equal blocks of each global batch, the rows its devices hold). Global batch k is
  therefore a pure function of (seed, k, global batch size): the same for any number of
  processes, and a resumed run (`start_step`) reads the batches an uninterrupted one
  would have read, whatever the number of processes, devices or workers it resumes on.
  """
  count, index = jax.process_count(), jax.process_index()
  if global_batch_size % count:
    raise ValueError(f'config.batch_size={global_batch_size} must be a multiple of the '
                     f'number of processes ({count})')
  ds = (grain.MapDataset.source(source)
        .map_with_index(lambda i, ex: (i, ex))
        .shuffle(seed=seed)
        .repeat(None)  # Reseeded each epoch: every epoch has its own order.
        .random_map(TrainPreprocess(image_size, crop, flip, convention=convention),
                    seed=seed + 1)
        # Block j of the stream; global batch k is blocks kP .. kP + P - 1, in process order.
        .batch(global_batch_size // count, drop_remainder=True))
  ds = ds.slice(slice(start_step * count + index, None, count))
  return _to_iter(ds, num_threads, num_workers)


def eval_settings(data_config) -> dict[str, Any]:
  """`eval_batches`' (and `cam_jax.features.extract`'s) arguments as `config.data` sets
  them: image size, boxes, crop, input convention, reader threads and worker processes."""
  return dict(image_size=data_config.image_size, max_boxes=data_config.max_boxes,
              crop=data_config.eval_crop, resize_shorter=data_config.eval_resize_shorter,
              convention=conventions.from_config(data_config),
              num_threads=data_config.num_threads, num_workers=data_config.num_workers)


def eval_batches(source, *, image_size: int, process_batch_size: int, max_boxes: int,
                 num_examples: int | None = None, crop: str = 'resize',
                 resize_shorter: int | None = None, with_masks: bool = False,
                 convention: conventions.InputConvention = DEFAULT_INPUT,
                 num_threads: int = 4, num_workers: int = 0,
                 crop_boxes: np.ndarray | None = None, with_names: bool = False,
                 start_batch: int = 0) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """`(batch, num_valid)` over (the first `num_examples` of) a split, in order; `close()`
  it when stopping early. `crop_boxes` and `with_names`: EvalPreprocess; `start_batch`:
  this process's batches from that one on (a resumed pass).

  Short batches are padded to full size by repeating their first example, so that every
  batch has one shape (one compilation); `num_valid` says how many rows are real. Every
  process yields the same number of batches (the jitted step is collective), padding with
  all-invalid batches where its share is shorter.
  """
  preprocess = EvalPreprocess(image_size, max_boxes, crop, resize_shorter, with_masks,
                              convention, crop_boxes, with_names)
  ds = grain.MapDataset.source(source)
  if num_examples is not None:
    ds = ds.slice(slice(0, min(num_examples, len(ds))))
  if crop_boxes is not None and len(crop_boxes) < len(ds):
    raise ValueError(f'crop_boxes has {len(crop_boxes)} rows for {len(ds)} examples')
  longest_share = -(-len(ds) // jax.process_count())
  num_batches = -(-longest_share // process_batch_size) - start_batch
  ds = _process_shard(ds.map_with_index(lambda i, ex: (i, ex)))
  if start_batch:
    ds = ds.slice(slice(start_batch * process_batch_size, None))
  batches = _to_iter(ds.map(preprocess).batch(process_batch_size), num_threads, num_workers)
  # A process whose share is empty (fewer images than processes) still needs a batch.
  template = {
      'image': np.zeros((process_batch_size, image_size, image_size, 3), np.float32),
      'label': np.zeros((process_batch_size,), np.int32),
      'boxes': np.full((process_batch_size, max_boxes, 4), -1, np.int32),
      'num_boxes': np.zeros((process_batch_size,), np.int32),
      'orig_hw': np.full((process_batch_size, 2), image_size, np.int32),
      'window': np.tile(np.float32([0, 0, image_size, image_size]), (process_batch_size, 1)),
      'index': np.zeros((process_batch_size,), np.int32),
  }
  if with_names:
    template['file_name'] = np.full((process_batch_size,), '')
  if with_masks:
    template['mask'] = np.zeros((process_batch_size, image_size, image_size), bool)
    template['ignore'] = np.zeros((process_batch_size, image_size, image_size), bool)
  try:
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
  finally:
    # Also when the caller stops early (`close()` of this generator, or an error): the
    # reader threads and worker processes stop now, not at garbage collection.
    batches.close()

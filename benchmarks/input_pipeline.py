r"""Images/s of the train input pipeline on real-sized JPEGs, by number of worker processes.

  python benchmarks/input_pipeline.py [--num_images=512] [--workers=0,1,2] [--batch_size=32]

Writes `num_images` 500×375 JPEGs (the median ILSVRC size) of smooth random scenes with
texture, at quality 90 (about the bytes per image of ILSVRC), into an in-memory source,
then times `pipeline.train_batches` (decode, random resized crop, resize to 224, flip,
normalise, batch) after two warm-up batches. Disk reads and ArrayRecord deserialisation
are not included: they are small next to JPEG decoding, and depend on the disk.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
from absl import app, flags
from PIL import Image

from cam_jax.data import pipeline

_NUM_IMAGES = flags.DEFINE_integer('num_images', 512, 'Distinct JPEGs in the source.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'], 'Worker process counts to time.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Images per batch.')
_BATCHES = flags.DEFINE_integer('batches', 16, 'Timed batches per setting.')
_THREADS = flags.DEFINE_integer('num_threads', 4, 'grain reader threads per process.')
_SIZE = flags.DEFINE_integer('image_size', 224, 'Network input side.')


def scene_jpeg(rng: np.random.Generator, hw=(375, 500), quality: int = 90) -> bytes:
  """A photo-like JPEG: smooth colour fields plus fine texture (not white noise, which
  JPEG cannot compress, nor flat colour, which decodes unrealistically fast)."""
  coarse = rng.uniform(0, 255, (hw[0] // 25 + 1, hw[1] // 25 + 1, 3)).astype(np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((hw[1], hw[0]), Image.BICUBIC), np.float32)
  texture = rng.normal(0, 12, (*hw, 3))
  pixels = np.clip(smooth + texture, 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def images_per_s(source, workers: int) -> float:
  batches = pipeline.train_batches(source, image_size=_SIZE.value,
                                   process_batch_size=_BATCH.value, seed=0,
                                   num_threads=_THREADS.value, num_workers=workers)
  for _ in range(2):
    next(batches)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(batches)
  rate = _BATCHES.value * _BATCH.value / (time.perf_counter() - start)
  if hasattr(batches, 'close'):
    batches.close()
  return rate


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  source = [{'image': scene_jpeg(rng), 'label': i % 1000, 'file_name': f'{i}.JPEG'}
            for i in range(_NUM_IMAGES.value)]
  kb = np.mean([len(ex['image']) for ex in source]) / 1024
  print(f'{len(source)} JPEGs 500×375, mean {kb:.0f} KB; {os.cpu_count()} CPUs; batch '
        f'{_BATCH.value}, {_THREADS.value} threads per process, input {_SIZE.value}')
  for workers in (int(w) for w in _WORKERS.value):
    print(f'workers={workers}: {images_per_s(source, workers):.1f} images/s', flush=True)


if __name__ == '__main__':
  app.run(main)

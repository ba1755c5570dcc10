r"""The evaluation's host box stage: images/s and maps/s on this machine's cores.

  python benchmarks/box_stage.py [--images=256] [--rounds=3] [--workers=0,1,-1]

About 1 minute on 2 cores. The goal: the box stage is never the bottleneck, i.e. its
maps/s is at least the network's forward images/s × 5 (the top-5 maps of each image);
take the forward figure from benchmarks/cam_kernel.py or benchmarks/networks.py, on the
same machine.

Workload, ILSVRC-like: 500×375 original images seen whole at 224×224; per image 6 maps at
GoogLeNet-GAP's 14×14 (the top 5 classes and the label), smooth random fields as CAMs
are; the label among the top 5 at a random rank (or outside them, 1 in 4); one or two
ground-truth boxes. Timed, the median over rounds, each round over every worker count:

  (a) `BoxStage(...).submit/finish`: everything the evaluation does on the host per
      image: the paper's boxes on the original image (label's map resized to 500×375,
      0.2 × max, largest component; the heuristic's tight/loose boxes), the label's map
      at 224×224 through the 100-τ sweep for MaxBoxAcc and MaxBoxAccV2.
  (b) one paper box per map on the original image (`paper_boxes_on_original`), for every
      one of the 6 maps, in the main process: the cost of boxing maps that do not score
      (what a top-5 submission file needs).

maps/s for (a) counts the 6 maps per image that the stage receives.
"""

import datetime
import os
import platform
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from cam_jax import box_stage

_IMAGES = flags.DEFINE_integer('images', 256, 'Images per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds; the median is reported.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '-1'],
                             'BoxStage worker counts (-1: one per host core).')
_FEATURE = flags.DEFINE_integer('feature', 14, 'Map side on the device (14: GoogLeNet-GAP).')
_SIZE = flags.DEFINE_integer('size', 224, 'Network input side.')

_ORIG_HW = (375, 500)
_T = 6  # top 5 + the label


def make_images(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Batch arrays as evaluate() sends them to the box stage."""
  feature = _FEATURE.value
  coarse = rng.normal(size=(n, _T, 4, 4)).astype(np.float32)
  maps = np.stack([[box_stage.on_input_grid(m, feature) for m in image] for image in coarse])
  labels = rng.integers(0, 1000, n).astype(np.int32)
  classes = rng.integers(0, 1000, (n, 5)).astype(np.int32)
  rank = rng.integers(0, 5, n)
  inside = rng.random(n) < 0.75
  classes[inside, rank[inside]] = labels[inside]
  maps[inside, rank[inside]] = maps[inside, -1]  # a CAM depends on the class alone
  height, width = _ORIG_HW
  boxes = np.full((n, 2, 4), -1, np.int32)
  num_boxes = rng.integers(1, 3, n).astype(np.int32)
  for i in range(n):
    for j in range(num_boxes[i]):
      x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
      boxes[i, j] = [x0, y0, x0 + rng.integers(40, width // 2), y0 + rng.integers(40, height // 2)]
  return {'classes_Bk': classes, 'label': labels, 'maps_BThw': maps, 'boxes': boxes,
          'num_boxes': num_boxes, 'window': np.tile(np.float32([0, 0, width, height]), (n, 1)),
          'orig_hw': np.tile(np.int32(_ORIG_HW), (n, 1))}


def time_stage(params: box_stage.BoxParams, images: dict[str, np.ndarray], workers: int,
               batch: int = 64) -> float:
  stage = box_stage.BoxStage(params, workers)
  start = time.perf_counter()
  for s in range(0, len(images['label']), batch):
    stage.submit({k: v[s:s + batch] for k, v in images.items()})
  stage.finish()
  return time.perf_counter() - start


def time_every_map(images: dict[str, np.ndarray], threshold: float) -> float:
  start = time.perf_counter()
  for i in range(len(images['label'])):
    for map_hw in images['maps_BThw'][i]:
      box_stage.paper_boxes_on_original(map_hw, images['window'][i], _ORIG_HW, (threshold,))
  return time.perf_counter() - start


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  images = make_images(_IMAGES.value, rng)
  params = box_stage.BoxParams(_SIZE.value)
  worker_counts = [int(w) for w in _WORKERS.value]
  # Warm-up: start every pool (worker start-up is paid once per process).
  small = {k: v[:16] for k, v in images.items()}
  for workers in worker_counts:
    time_stage(params, small, workers)
  times = {w: [] for w in worker_counts}
  every = []
  for _ in range(_ROUNDS.value):
    for workers in worker_counts:
      times[workers].append(time_stage(params, images, workers))
    every.append(time_every_map(images, params.cam_threshold))
  n = _IMAGES.value
  print(f'{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.node()}, '
        f'{box_stage.host_cores()} host cores, python {platform.python_version()}, numpy '
        f'{np.__version__}; {n} images of {_ORIG_HW[1]}×{_ORIG_HW[0]}, maps '
        f'{_FEATURE.value}×{_FEATURE.value}, input {_SIZE.value}, median of '
        f'{_ROUNDS.value} rounds')
  print('\n| what | workers | images/s | maps/s | ms per image |\n|---|---:|---:|---:|---:|')
  for workers in worker_counts:
    t = float(np.median(times[workers]))
    shown = box_stage.host_cores() if workers < 0 else workers
    print(f'| (a) evaluation box stage | {shown or "0 (main)"} | {n / t:.1f} | '
          f'{n * _T / t:.0f} | {1000 * t / n:.2f} |')
  t = float(np.median(every))
  print(f'| (b) paper box of every map | 0 (main) | {n / t:.1f} | {n * _T / t:.0f} | '
        f'{1000 * t / n:.2f} |')


if __name__ == '__main__':
  app.run(main)

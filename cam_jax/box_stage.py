"""The host side of a localization evaluation: maps in, counts out, on all host cores.

The device gives, per image, its top-k classes and the maps (CAMs, or a saliency
baseline's) of some of them (evaluation: the top 1) and of its label, at the maps' own
resolution (a CAM's h×w feature grid); this
module scores them against the ground truth (boxes `(x0, y0, x1, y1)`,
inclusive integer corners, in the original image's pixel grid):

- The paper's protocol (`score_paper`): the label's map resampled onto the original image
  through the eval window's inverse (`windows.map_to_original`: "resize the CAM to the
  image size", bilinear), `>= cam_threshold * max`, the largest 8-connected component's
  box. Only the pairs whose class is the label can count, so only the label's maps are
  boxed: at its rank among the top k (top-1/top-k localization, the test heuristic's
  tight and loose boxes when that rank is 1-3) and the label's own map (GT-known; the same
  map when the two are equal, as they are for a CAM).
- The WSOL metrics of Choe et al. (`WsolScores`): the label's map on the network's S×S
  input grid, as wsolevaluation scores at 224×224: min-max normalised, the box sweep over
  the τ grid (MaxBoxAcc, MaxBoxAccV2) with the boxes mapped back to the original image,
  and PxAP against the mask on the same input grid.

Every result is a count that adds up (`Scores.state()`), so images are scored in chunks,
anywhere, in any grouping: `BoxStage` sends chunks to worker processes while the device
computes the next batch, and sums the counts in submission order, so the totals do not
depend on the number of workers. This module imports numpy and scipy only, not jax: the
workers start fast and hold no accelerator.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import concurrent.futures.process
import dataclasses
import multiprocessing
import multiprocessing.forkserver
import os
from typing import Any, Mapping

import numpy as np
from absl import logging

from cam_jax import box_sweep
from cam_jax import boxes as boxes_lib
from cam_jax import metrics as metrics_lib
from cam_jax import windows

# Images per task sent to a worker: small enough to spread a batch over the cores, big
# enough that pickling and scheduling stay a small part of the work. Fixed, so that float
# sums (mean IoU) group the same whatever the number of workers.
CHUNK_SIZE = 8


@dataclasses.dataclass(frozen=True)
class BoxParams:
  """What the box stage needs to know; `from_config` reads `config.eval`."""
  input_size: int  # S: the network's input is S×S
  cam_threshold: float = 0.2  # paper box: keep >= this fraction of the map's max
  iou_threshold: float = 0.5
  heuristic_thresholds: tuple[float, float] = (0.5, 0.2)  # tight, loose
  box_threshold_step: float = 0.01  # τ grid of MaxBoxAcc/V2
  pxap_threshold_step: float = 0.001
  with_masks: bool = False
  num_classes: int = 0  # > 0: per-class counts (`class/<key>`, arrays over the classes)
  records: bool = False  # one record per image (`records`; predictions.jsonl)

  @classmethod
  def from_config(cls, eval_config: Any, input_size: int, with_masks: bool,
                  num_classes: int = 0, records: bool = False) -> BoxParams:
    tight, loose = eval_config.get('heuristic_thresholds', (0.5, 0.2))
    return cls(input_size=input_size, cam_threshold=float(eval_config.cam_threshold),
               iou_threshold=float(eval_config.iou_threshold),
               heuristic_thresholds=(float(tight), float(loose)),
               box_threshold_step=float(eval_config.get('box_threshold_step', 0.01)),
               pxap_threshold_step=float(eval_config.get('pxap_threshold_step', 0.001)),
               with_masks=with_masks, num_classes=int(num_classes), records=bool(records))


# ---------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------

def paper_boxes_on_original(map_hw: np.ndarray, window_4: np.ndarray,
                            orig_hw: tuple[int, int], thresholds: tuple[float, ...]
                            ) -> np.ndarray:
  """The paper's box at each threshold (fractions of the max) of a map that covers
  `window_4` of the original image, in the original's grid: int32 (N, 4).

  The map is resampled once onto the original pixels inside the window; an empty mask
  gives the whole visible block (the whole image for a whole-image window).
  """
  full_HW, (ox, oy) = windows.map_to_original(map_hw, window_4, orig_hw)
  offset = np.array([ox, oy, ox, oy], np.int32)
  return np.stack([boxes_lib.paper_box(full_HW, t) + offset for t in thresholds])


def score_paper(classes_k: np.ndarray, label: int, maps_Thw: np.ndarray, gt_M4: np.ndarray,
                window_4: np.ndarray, orig_hw: tuple[int, int], params: BoxParams
                ) -> dict[str, float]:
  """The paper's protocol for one image (Sec. 3.2, Tables 2-3).

  `maps_Thw` holds the maps of the first T - 1 of the top k classes `classes_k` (best
  first; T - 1 may be less than k) and, last, of the label, covering `window_4` of the
  `orig_hw` image; `gt_M4` the ground-truth boxes
  in the original's grid (inclusive corners).

  Returns 0/1 counts `loc_top1`, `loc_topk` (a top-k class is the label and its box has
  IoU >= `iou_threshold` with some ground-truth box), `loc_heuristic` (the test
  heuristic: a tight and a loose box for each of the top 2 classes, a loose one for the
  3rd; correct when one of those five guesses is), `gt_known` (the label's map's box),
  and `gt_known_iou`.
  """
  classes_k = np.asarray(classes_k)
  gt_t = len(maps_Thw) - 1
  ranks = np.flatnonzero(classes_k == label)
  rank = int(ranks[0]) if len(ranks) else None
  # The map of the label at its rank is the label's map (a map is a function of the class
  # alone): box it once. Maps of the top classes may stop short of the label's rank
  # (evaluation computes the top-1 map only); the label's own map stands for it then.
  rank_t = rank
  if rank is not None and (rank >= gt_t or np.array_equal(maps_Thw[rank], maps_Thw[gt_t])):
    rank_t = gt_t
  tight, loose = params.heuristic_thresholds
  needed: dict[int, set[float]] = collections.defaultdict(set)
  needed[gt_t].add(params.cam_threshold)
  if rank is not None:
    needed[rank_t].add(params.cam_threshold)
    needed[rank_t].update([tight, loose] if rank < 2 else [loose] if rank == 2 else [])
  ious: dict[tuple[int, float], float] = {}
  for t, thresholds in needed.items():
    thresholds = tuple(sorted(thresholds))
    boxes_N4 = paper_boxes_on_original(maps_Thw[t], window_4, orig_hw, thresholds)
    for threshold, box in zip(thresholds, boxes_N4):
      ious[t, threshold] = boxes_lib.max_iou(box, gt_M4)

  def hit(t: int | None, threshold: float) -> bool:
    return t is not None and ious[t, threshold] >= params.iou_threshold

  guesses = {0: (tight, loose), 1: (tight, loose), 2: (loose,)}.get(rank, ())
  return {
      'loc_top1': float(rank == 0 and hit(rank_t, params.cam_threshold)),
      'loc_topk': float(hit(rank_t, params.cam_threshold)),
      'loc_heuristic': float(any(hit(rank_t, t) for t in guesses)),
      'gt_known': float(hit(gt_t, params.cam_threshold)),
      'gt_known_iou': ious[gt_t, params.cam_threshold],
  }


def on_input_grid(map_hw: np.ndarray, size: int) -> np.ndarray:
  """A map covering the whole input, resized to S×S (bilinear, half-pixel centres, as
  `jax.image.resize` without antialiasing); float32."""
  if map_hw.shape == (size, size):
    return np.asarray(map_hw, np.float32)
  return windows.map_to_original(map_hw, windows.whole_window((size, size)), (size, size))[0]


class WsolScores:
  """MaxBoxAcc, MaxBoxAccV2 and PxAP of the label's maps (`cam_jax.metrics`), streamed:
  counts per threshold are accumulated, so no map outlives its call."""

  def __init__(self, box_threshold_step: float, pxap_threshold_step: float, with_masks: bool):
    self.thresholds_T = metrics_lib.threshold_grid(box_threshold_step)
    self.box_acc = metrics_lib.BoxAccuracy(self.thresholds_T, iou_thresholds=(0.5,))
    self.box_acc_v2 = metrics_lib.BoxAccuracy(self.thresholds_T)
    self.pxap = (metrics_lib.PixelAP(metrics_lib.threshold_grid(pxap_threshold_step))
                 if with_masks else None)

  def add(self, map_SS: np.ndarray, gt_M4: np.ndarray, window_4: np.ndarray,
          orig_hw: tuple[int, int], mask_SS: np.ndarray | None = None,
          ignore_SS: np.ndarray | None = None) -> None:
    """One image: its label's map on the S×S input grid (which shows `window_4` of the
    original), ground-truth boxes in the original grid, mask and ignore on the input."""
    if map_SS.ndim != 2 or map_SS.shape[0] != map_SS.shape[1]:
      raise ValueError(f'map_SS must be the square S×S input grid, got shape {map_SS.shape}')
    norm_SS = boxes_lib.normalize_map(map_SS)
    if len(gt_M4):
      sweep = box_sweep.sweep_boxes(norm_SS, self.thresholds_T)
      size = map_SS.shape[-1]
      largest_T4 = windows.boxes_to_original(sweep.largest_T4, window_4, size, orig_hw)
      self.box_acc.update(boxes_lib.iou(largest_T4, gt_M4).max(1)[None])
      # Every component's box at every τ in one mapping and one IoU, then the best per τ.
      counts_T = [len(c) for c in sweep.components]
      all_N4 = windows.boxes_to_original(np.concatenate(sweep.components), window_4, size,
                                         orig_hw)
      best_N = boxes_lib.iou(all_N4, gt_M4).max(1)
      starts_T = np.concatenate([[0], np.cumsum(counts_T)[:-1]])
      self.box_acc_v2.update(np.maximum.reduceat(best_N, starts_T)[None])
    if self.pxap is not None and mask_SS is not None and mask_SS.any():
      self.pxap.update(norm_SS, mask_SS, ignore_SS)

  def state(self) -> dict[str, np.ndarray]:
    """Every counter as `<accumulator>/<name>`, flat, for one sum across processes."""
    parts = {'box': self.box_acc, 'box_v2': self.box_acc_v2, 'pxap': self.pxap}
    return {f'{part}/{k}': v for part, acc in parts.items() if acc is not None
            for k, v in acc.state().items()}

  def result(self, summed_state: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics from the state summed over chunks and processes."""
    def part(name):
      return {k.split('/', 1)[1]: v for k, v in summed_state.items()
              if k.split('/', 1)[0] == name}
    out = {}
    if summed_state['box/num_images']:
      box = metrics_lib.BoxAccuracy.from_state(part('box'), self.thresholds_T, (0.5,)).result()
      v2 = metrics_lib.BoxAccuracy.from_state(part('box_v2'), self.thresholds_T).result()
      out.update({'max_box_acc': box['max_box_acc'],
                  'max_box_acc_threshold': float(box['best_threshold_D'][0]),
                  'max_box_acc_v2': v2['max_box_acc_v2']})
    if self.pxap is not None and summed_state['pxap/num_images']:
      out['pxap'] = metrics_lib.PixelAP.from_state(part('pxap'),
                                                   self.pxap.thresholds_T).result()['pxap']
    return out


PAPER_KEYS = ('loc_top1', 'loc_topk', 'loc_heuristic', 'gt_known', 'gt_known_iou')
# Sums of fractions (IoUs, relative box sizes) are kept as integers in units of 2**-32:
# integer sums are exact and do not depend on the order of addition, so the totals are
# the same however the images are split over chunks, workers and processes. Each value
# moves by at most 2**-33 (a mean IoU by less than 1e-9).
FIXED_POINT_ONE = 2**32


def to_fixed(fraction: float | np.ndarray) -> int:
  """The integer count of 2**-32 units nearest a fraction (or the sum of an array's)."""
  return int(np.round(np.asarray(fraction, np.float64) * FIXED_POINT_ONE).astype(np.int64).sum())


def from_fixed(count: int) -> float:
  return count / FIXED_POINT_ONE


# Per-class counts (`params.num_classes > 0`): images with boxes, and the paper's top-1
# and GT-known hits among them.
CLASS_KEYS = ('num_images_with_boxes', 'loc_top1', 'gt_known')


class Scores:
  """Every localization count of a set of images: the paper's and the WSOL metrics',
  all integers (`paper/gt_known_iou` in units of 2**-32); per class with
  `params.num_classes`, and each image's record with `params.records` (a list, which
  sums by concatenation)."""

  def __init__(self, params: BoxParams):
    self.params = params
    self.paper = dict.fromkeys(PAPER_KEYS, 0)
    self.per_class = {k: np.zeros(params.num_classes, np.int64) for k in CLASS_KEYS
                      } if params.num_classes else {}
    self.records: list[dict[str, Any]] = []
    self.wsol = WsolScores(params.box_threshold_step, params.pxap_threshold_step,
                           params.with_masks)

  def add(self, classes_k: np.ndarray, label: int, maps_Thw: np.ndarray, gt_M4: np.ndarray,
          window_4: np.ndarray, orig_hw: tuple[int, int], mask_SS: np.ndarray | None = None,
          ignore_SS: np.ndarray | None = None, record: dict[str, Any] | None = None
          ) -> None:
    """One image (arguments as `score_paper`'s; mask and ignore on the S×S input).
    `record` (with `params.records`): what is known of the image already (index, scores),
    to which its boxes and hits are added."""
    hits = {}
    if len(gt_M4):
      hits = score_paper(classes_k, label, maps_Thw, gt_M4, window_4, orig_hw, self.params)
      for key, value in hits.items():
        self.paper[key] += to_fixed(value) if key == 'gt_known_iou' else int(value)
      if self.per_class:
        self.per_class['num_images_with_boxes'][label] += 1
        self.per_class['loc_top1'][label] += int(hits['loc_top1'])
        self.per_class['gt_known'][label] += int(hits['gt_known'])
    self.wsol.add(on_input_grid(maps_Thw[-1], self.params.input_size), gt_M4, window_4,
                  orig_hw, mask_SS, ignore_SS)
    if self.params.records:
      self.records.append(image_record(classes_k, label, maps_Thw, window_4, orig_hw,
                                       self.params, hits, record or {}))

  def state(self) -> dict[str, Any]:
    state = {**{f'paper/{k}': v for k, v in self.paper.items()}, **self.wsol.state(),
             **{f'class/{k}': v for k, v in self.per_class.items()}}
    if self.params.records:
      state['records'] = list(self.records)
    return state

  def result(self, summed_state: Mapping[str, Any]) -> dict[str, Any]:
    """The WSOL metrics and the paper's counts (`paper/<key>`, sums over images)."""
    out = self.wsol.result(summed_state)
    out.update({f'paper/{k}': float(summed_state[f'paper/{k}']) for k in PAPER_KEYS})
    out['paper/gt_known_iou'] = from_fixed(summed_state['paper/gt_known_iou'])
    return out


def image_record(classes_k: np.ndarray, label: int, maps_Thw: np.ndarray,
                 window_4: np.ndarray, orig_hw: tuple[int, int], params: BoxParams,
                 hits: Mapping[str, float], known: Mapping[str, Any]) -> dict[str, Any]:
  """One image's line of predictions.jsonl: `known` (index, scores), the label, the top-k
  classes, the box of each class whose map was computed (`boxes`, the first T - 1 of
  the top k) and the label's box (`gt_known_box`), at `cam_threshold` on the original
  image as `[x0, y0, x1, y1]` (inclusive), and the image's hits (0/1; none without
  ground-truth boxes)."""
  box_of = lambda m: paper_boxes_on_original(m, window_4, orig_hw,
                                             (params.cam_threshold,))[0].tolist()
  record = {**known, 'label': int(label), 'height': int(orig_hw[0]),
            'width': int(orig_hw[1]), 'top_k': [int(c) for c in classes_k],
            'boxes': [box_of(m) for m in maps_Thw[:-1]], 'gt_known_box': box_of(maps_Thw[-1])}
  record.update({k: (float(v) if k == 'gt_known_iou' else int(v)) for k, v in hits.items()})
  return record


def score_chunk(params: BoxParams, images: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """`Scores.state()` of a chunk of images: arrays over the images of `classes_Bk`,
  `label`, `maps_BThw`, `boxes` (padded; `num_boxes` real rows), `window`, `orig_hw`, and
  with masks `mask` and `ignore` (S×S); with `params.records`, `index` and `scores_Bk`
  (the top-k classes' probabilities) for the records. The task a worker runs."""
  scores = Scores(params)
  for i in range(len(images['label'])):
    known = ({'index': int(images['index'][i]),
              'scores': [float(p) for p in images['scores_Bk'][i]]}
             if params.records else None)
    scores.add(images['classes_Bk'][i], int(images['label'][i]), images['maps_BThw'][i],
               images['boxes'][i, :images['num_boxes'][i]], images['window'][i],
               tuple(int(v) for v in images['orig_hw'][i]),
               images['mask'][i] if 'mask' in images else None,
               images['ignore'][i] if 'ignore' in images else None, known)
  return scores.state()


# ---------------------------------------------------------------------------
# All cores
# ---------------------------------------------------------------------------

def host_cores() -> int:
  """The cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS, Windows
    return os.cpu_count() or 1


_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def shutdown_pools() -> None:
  """Stops the worker processes of every pool (at exit, or before a fork)."""
  while _POOLS:
    _, pool = _POOLS.popitem()
    pool.shutdown(wait=True, cancel_futures=True)


# Idle workers would otherwise outlive an interrupted interpreter shutdown.
atexit.register(shutdown_pools)


# Each worker runs one BLAS thread: its matrices are small (resizing a map is two thin
# products), and many workers with a thread per core each would fight over the cores: on
# 2 busy cores a 14×14 -> 375×500 resize took 1 ms with OpenBLAS's threads, 0.13 ms without.
_WORKER_ENV = {'OPENBLAS_NUM_THREADS': '1', 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """A process pool kept for the life of this process (evaluations during training reuse
  it). Workers are forked from a fork server that imported only this module: forking the
  main process, which runs jax's threads, can deadlock; spawn where there is no fork
  server (Windows)."""
  if workers not in _POOLS:
    if 'forkserver' in multiprocessing.get_all_start_methods():
      context = multiprocessing.get_context('forkserver')
      context.set_forkserver_preload([__name__])
      # The fork server passes the environment it starts with to every worker; start it
      # now, with single-threaded BLAS, and leave this process's environment as it was.
      saved = {k: os.environ.get(k) for k in _WORKER_ENV}
      os.environ.update(_WORKER_ENV)
      try:
        multiprocessing.forkserver.ensure_running()
      finally:
        for key, value in saved.items():
          if value is None:
            os.environ.pop(key)
          else:
            os.environ[key] = value
    else:
      context = multiprocessing.get_context('spawn')
    _POOLS[workers] = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
  return _POOLS[workers]


class BoxStage:
  """Scores images in chunks on `workers` processes (-1: one per host core; 0: in this
  process), overlapping with whatever the caller does next; `finish()` gives the summed
  `Scores.state()`. Results are summed in submission order: the totals are the same for
  any number of workers.

  If the worker processes die (killed, out of memory, or unable to start: a script
  without the `if __name__ == '__main__':` guard), the chunks they held are scored here
  and the rest of the run stays in this process, with a warning: the totals are the same.
  An error raised while scoring (a map with nan) reaches the caller.
  """

  def __init__(self, params: BoxParams, workers: int = -1):
    self.params = params
    self.workers = host_cores() if workers < 0 else int(workers)
    self._pool = _pool(self.workers) if self.workers > 0 else None
    # (future, chunk): the chunk is kept until its result is in, to be scored here if
    # the pool breaks.
    self._pending: collections.deque[tuple[concurrent.futures.Future, dict]] = (
        collections.deque())
    self._total = Scores(params).state()  # zeros of every counter

  def _add(self, state: Mapping[str, Any]) -> None:
    for key, value in state.items():
      self._total[key] = self._total[key] + value

  def submit(self, images: Mapping[str, np.ndarray]) -> None:
    """Queues the images (arrays as `score_chunk` takes); blocks only while more than two
    chunks per worker are waiting, so that maps do not pile up in memory."""
    n = len(images['label'])
    for start in range(0, n, CHUNK_SIZE):
      chunk = {k: np.asarray(v[start:start + CHUNK_SIZE]) for k, v in images.items()}
      if self._pool is None:
        self._add(score_chunk(self.params, chunk))
        continue
      try:
        future = self._pool.submit(score_chunk, self.params, chunk)
      except concurrent.futures.process.BrokenProcessPool as e:
        self._fall_back(e)
        self._add(score_chunk(self.params, chunk))
        continue
      self._pending.append((future, chunk))
      while len(self._pending) > 2 * self.workers:
        self._add_oldest()

  def finish(self) -> dict[str, Any]:
    """Waits for every chunk; the summed counts."""
    while self._pending:
      self._add_oldest()
    return dict(self._total)

  def _add_oldest(self) -> None:
    future, chunk = self._pending.popleft()
    try:
      state = future.result()
    except concurrent.futures.process.BrokenProcessPool as e:
      self._add(score_chunk(self.params, chunk))  # this chunk first: the order of the sums
      self._fall_back(e)
      return
    self._add(state)

  def _fall_back(self, error: Exception) -> None:
    """The pool is broken: score everything from now on in this process, in order."""
    if self._pool is None:
      return
    logging.warning('The %d box-stage worker processes died (%s); scoring in the main '
                    'process from here on (same results, slower).', self.workers, error)
    _POOLS.pop(self.workers, None)
    self._pool = None
    # Futures of a broken pool all fail: score their chunks here, oldest first.
    for future, _ in self._pending:
      future.cancel()
    pending, self._pending = list(self._pending), collections.deque()
    for _, chunk in pending:
      self._add(score_chunk(self.params, chunk))

  def cancel(self) -> None:
    """Drops the chunks not started (after an error elsewhere)."""
    while self._pending:
      self._pending.popleft()[0].cancel()

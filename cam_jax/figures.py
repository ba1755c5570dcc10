"""The paper's figures from an evaluation run, as PNG files in workdir/figures/.

- `class_cams.png` (Fig. 3): for the classes with the most images among the first
  `config.figures.num_examples` of the eval split, the images of each class that the
  network scores highest for it, with that class's CAM over them; one row per class.
- `cam_vs_backprop.png` (Fig. 5): image | CAM of the label | backprop saliency of the
  label (Simonyan et al., gray), one row per image.
- `boxes.png` (Fig. 6a): the top-1 class's CAM over the image, with the ground-truth boxes
  in green and that CAM's paper box in red (as scored: `box_stage.paper_boxes_on_original`).

Every map is shown on the original image through the eval window's inverse
(`windows.map_to_original`), as the boxes are scored; pixels the network did not see (a
centre crop's sides) show the plain image. Boxes are `(x0, y0, x1, y1)`, inclusive
integer corners in the original image's grid, until `_fit_tile` maps
them onto the tile.
"""

from __future__ import annotations

import collections
import heapq
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from scipy import special

from cam_jax import box_stage
from cam_jax import data as data_lib
from cam_jax import evaluate
from cam_jax import models
from cam_jax import sharding
from cam_jax import viz
from cam_jax import windows
from cam_jax.data import pipeline

# Long side of a figure's tile in pixels: larger images are shrunk to it (capped by
# config.viz.max_side), smaller ones upscaled by an integer factor towards it, so that a
# 64×64 synthetic image is visible and a figure of 24 photos stays a few hundred KB.
TILE_SIDE = 160


class TopPerClass:
  """The `per_class` highest-scoring items of every class, streamed: one small min-heap
  per class, so nothing but the kept items' payloads (a map) is held."""

  def __init__(self, per_class: int):
    if per_class < 1:
      raise ValueError(f'per_class must be >= 1, got {per_class}')
    self.per_class = per_class
    self.counts: collections.Counter[int] = collections.Counter()
    self._heaps: dict[int, list[tuple[float, int, Any]]] = collections.defaultdict(list)

  def add(self, label: int, score: float, index: int, payload: Any = None) -> None:
    """One image of class `label`; `index` (its position in the split) breaks ties: the
    earlier image is kept."""
    self.counts[label] += 1
    # The heap's root is the item to drop first: lowest score, then the latest index.
    # Indices are unique, so the payload is never compared.
    item = (float(score), -int(index), payload)
    heap = self._heaps[label]
    if len(heap) < self.per_class:
      heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
      heapq.heapreplace(heap, item)

  def select(self, num_classes: int) -> list[tuple[int, list[tuple[float, int, Any]]]]:
    """`[(class, [(score, index, payload), ...]), ...]`: the `num_classes` classes with the
    most images (ties: the lower class id first), each with its kept items, best first
    (ties: the earlier index first)."""
    classes = sorted(self.counts, key=lambda c: (-self.counts[c], c))[:num_classes]
    return [(c, [(score, -neg_index, payload) for score, neg_index, payload
                 in sorted(self._heaps[c], key=lambda item: (-item[0], -item[1]))])
            for c in classes]


def _fit_tile(image_HW3: np.ndarray, side: int
              ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
  """The image with its long side near `side` (`viz.fit`), and the map of inclusive boxes
  onto it."""
  tile_HW3, scale = viz.fit(image_HW3, side, side)
  return tile_HW3, lambda b: viz.scale_boxes(b, scale, tile_HW3.shape[:2])


def write_evaluation_figures(config: ml_collections.ConfigDict, model: nnx.Module,
                             mesh: jax.sharding.Mesh, workdir: str) -> list[str]:
  """Writes Figs. 3, 5 and 6a (module docstring) in workdir/figures/; returns the paths.

  Every process runs the same jitted calls over its share of the split; only process 0
  draws and writes, from its own share (all of it on one host). Fig. 5's backprop maps
  come from the first batch only, so it has at most `eval.batch_size` rows (per process).
  Networks without a CAM head get no figures (a warning says so).
  """
  fig = config.figures
  if not fig.get('enabled', True):
    return []
  if models.cam_weights(model) is None:
    logging.warning('%s has no GAP/GMP head: CAM does not apply, so no figures are written',
                    type(model).__name__)
    return []
  source, info = data_lib.load_source(config.data, config.data.eval_split)
  names = list(info.class_names)
  graphdef, state = nnx.split(model)
  predict_cam = evaluate.make_predict_fn(graphdef, mesh, top_k=1, saliency='cam')
  predict_backprop = evaluate.make_predict_fn(graphdef, mesh, top_k=1, saliency='backprop')
  process_batch = sharding.check_batch_size(config.eval.batch_size, mesh, 'eval.batch_size')
  local_devices = len(mesh.local_devices)
  writer = jax.process_index() == 0

  best = TopPerClass(fig.per_class)
  firsts = []  # the first num_images images: everything Figs. 5 and 6a draw
  batches = pipeline.eval_batches(source, process_batch_size=process_batch,
                                  num_examples=fig.num_examples,
                                  **pipeline.eval_settings(config.data))
  try:
    for b, (batch, n) in enumerate(batches):
      arrays = sharding.shard_batch({'image': batch['image'], 'label': batch['label']}, mesh)
      out = sharding.to_host(predict_cam(state, arrays['image'], arrays['label']), mesh)
      backprop_BThw = None
      if b == 0:
        # Only the rows Fig. 5 draws (rounded up to whole shards): a backward pass over the
        # whole eval batch would hold its activations for nothing (0.7 GB more at 128×64²).
        rows = min(process_batch, -(-fig.num_images // local_devices) * local_devices)
        first = sharding.shard_batch({'image': batch['image'][:rows],
                                      'label': batch['label'][:rows]}, mesh)
        backprop = predict_backprop(state, first['image'], first['label'])
        backprop_BThw = sharding.to_host(backprop, mesh)['maps_BThw']
      if not writer:
        continue
      probs_BC = special.softmax(out['logits_BC'].astype(np.float64), axis=-1)
      for i in range(n):
        label, index = int(batch['label'][i]), int(batch['index'][i])
        # Copies: a view would keep the whole batch alive as long as the item.
        where = (batch['window'][i].copy(), tuple(int(v) for v in batch['orig_hw'][i]))
        best.add(label, probs_BC[i, label], index, (out['maps_BThw'][i, -1].copy(), *where))
        if len(firsts) < fig.num_images:
          top1 = int(out['classes_Bk'][i, 0])
          firsts.append({
              'index': index, 'label': label, 'top1': top1, 'prob': probs_BC[i, top1],
              'cam_top1': out['maps_BThw'][i, 0].copy(),
              'cam_label': out['maps_BThw'][i, -1].copy(),
              'backprop': None if backprop_BThw is None else backprop_BThw[i, -1].copy(),
              'gt_M4': batch['boxes'][i, :batch['num_boxes'][i]].copy(),
              'window': where[0], 'orig_hw': where[1]})
  finally:
    batches.close()  # its reader threads and workers stop, whatever ends the loop
  if not writer:
    return []

  side = min(TILE_SIDE, config.viz.max_side)
  style = dict(colormap=config.viz.colormap, heat_weight=config.viz.heat_weight,
               image_weight=config.viz.image_weight)

  def image_of(index: int) -> np.ndarray:
    return pipeline.decode(source[index], index)

  def cam_tile(image_HW3, map_hw, window_4, orig_hw, title, boxes=()):
    map_HW, valid_HW = windows.map_on_image(map_hw, window_4, orig_hw)
    tile_HW3, to_tile = _fit_tile(viz.overlay(image_HW3, map_HW, valid_HW=valid_HW, **style),
                                  side)
    for boxes_N4, color in boxes:
      tile_HW3 = viz.draw_boxes(tile_HW3, to_tile(boxes_N4), color, viz.box_width((side, side)))
    return viz.titled(tile_HW3, title)

  figures = {}
  rows = []
  for label, items in best.select(fig.num_classes):
    rows.append(viz.grid([cam_tile(image_of(index), map_hw, window_4, orig_hw,
                                   f'{names[label]} {prob:.2f}')
                          for prob, index, (map_hw, window_4, orig_hw) in items],
                         columns=fig.per_class))
  if rows:
    figures['class_cams.png'] = viz.grid(rows, columns=1, pad=6)

  rows = []
  for f in firsts:
    if f['backprop'] is None:
      continue
    image_HW3 = image_of(f['index'])
    cam = cam_tile(image_HW3, f['cam_label'], f['window'], f['orig_hw'], 'CAM')
    saliency_HW, valid_HW = windows.map_on_image(f['backprop'], f['window'], f['orig_hw'])
    saliency_HW3 = viz.overlay(image_HW3, saliency_HW, heat_weight=1.0, image_weight=0.0,
                               colormap='gray', valid_HW=valid_HW)
    rows += [viz.titled(_fit_tile(image_HW3, side)[0], names[f['label']]), cam,
             viz.titled(_fit_tile(saliency_HW3, side)[0], 'backprop')]
  if rows:
    figures['cam_vs_backprop.png'] = viz.grid(rows, columns=3)

  tiles = []
  for f in firsts:
    box_4 = box_stage.paper_boxes_on_original(f['cam_top1'], f['window'], f['orig_hw'],
                                              (config.eval.cam_threshold,))
    tiles.append(cam_tile(image_of(f['index']), f['cam_top1'], f['window'], f['orig_hw'],
                          f'{names[f["top1"]]} {f["prob"]:.2f}',
                          boxes=[(f['gt_M4'], viz.GT_COLOR), (box_4, viz.PRED_COLOR)]))
  if tiles:
    figures['boxes.png'] = viz.grid(tiles, columns=min(4, len(tiles)))

  paths = []
  for name, figure_HW3 in figures.items():
    path = os.path.join(workdir, 'figures', name)
    viz.save_png(path, figure_HW3)
    paths.append(path)
  logging.info('Wrote %s', ', '.join(paths))
  return paths

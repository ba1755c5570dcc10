"""`--mode=units`: class-specific units (paper Sec. 5, Fig. 13).

  python -m cam_jax.main --config=configs/synthetic_gap.py --workdir=runs/synthetic --mode=units

In a GAP network logit c is `sum_k w[k, c] * mean_hw(f_k) + b_c`, so the head's weights
rank the units k of the last conv layer (the CAM layer) by how much they count for class
c: the class-specific units. For the classes of `config.units` (`classes`, or the first
`num_classes`), this module takes the `top_units` units of largest weight (`rank_units`)
and, as the paper does after Zhou et al. (ICLR 2015) and network dissection (Bau et al.,
CVPR 2017), shows what each detects:

- one pass over `units.split` (default `data.eval_split`; its first `units.num_examples`
  images) keeps, for the selected units only, each image's peak activation (the max of
  the unit's h×w map) and the unit's activations at every position of every image;
- `T_k`, the `units.quantile` quantile of unit k's activations over the split
  (P(a_k > T_k) = 1 - quantile; 0.995 as in network dissection), exact: numpy's 'linear'
  quantile (`np.quantile` of the activations as float64), from the only values it reads,
  the largest (about `(1 - quantile) n + 1`) of the n = images × h × w activations, which a
  partition keeps as the batches stream by (`TopValues`): a few thousand values a unit
  instead of n, one pass, exact whatever the split's size;
- the `top_images` images of highest peak (ties: the lower index), each shown with the
  region where the unit's map, resized to the image as CAMs are (bilinear, through the
  eval window's inverse, `windows.map_on_image`), exceeds `T_k`: the rest of the image
  darkened, the region outlined (`viz.highlight_region`).

Written atomically under WORKDIR/units/ (process 0):
- `units.json`: per class, its name and top units, and per unit its weight, `T_k` and top
  images (split index, label, peak activation);
- `units.md`: the same as a Markdown table;
- `class_<id>_<name>.png`: one row per unit (weight and `T_k` in its title), its top
  images' regions;
- `units.png`: a summary of the first `SUMMARY_CLASSES` classes (each unit's first
  `SUMMARY_IMAGES` images), for the README.

With several processes each reads its share of the split (`pipeline.eval_batches`) and
the devices of all compute together; the kept values and top images (fixed-shape arrays)
are gathered once at the end, so every process holds the split's exact result.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from cam_jax import data as data_lib
from cam_jax import io_utils
from cam_jax import models
from cam_jax import restore
from cam_jax import sharding
from cam_jax import viz
from cam_jax import windows
from cam_jax.data import pipeline

# Long side of an image's tile (capped by config.viz.max_side): 64×64 synthetic images
# are upscaled ×2, photos shrunk.
TILE_SIDE = 128
# units.png: the first classes, each unit with its first images.
SUMMARY_CLASSES = 4
SUMMARY_IMAGES = 2


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------

def rank_units(kernel_KC: Any, class_index: int, top: int) -> tuple[np.ndarray, np.ndarray]:
  """`(unit_ids, weights)`: the `top` units of largest head weight for class
  `class_index`, by descending weight, ties by the lower unit index; int64 and float32."""
  w_K = np.asarray(kernel_KC, np.float32)[:, class_index]
  if top < 1:
    raise ValueError(f'top must be >= 1, got {top}')
  unit_ids = np.argsort(-w_K, kind='stable')[:top]
  return unit_ids.astype(np.int64), w_K[unit_ids]


def cam_kernel(model: nnx.Module) -> np.ndarray:
  """The `kernel_KC` that weighs the units of the CAM layer (`models.cam_weights`);
  raises for a network without a GAP/GMP head."""
  weights = models.cam_weights(model)
  if weights is None:
    raise ValueError(f'{type(model).__name__} has no GAP/GMP head (a fully connected '
                     'classifier): its units have no class weights to rank, so '
                     '--mode=units does not apply')
  if getattr(model, 'features_are_class_maps', False):
    logging.warning('%s has no linear head: its last conv gives one map per class, so the '
                    'top unit of class c is the class map c itself (weight 1).',
                    type(model).__name__)
  return np.asarray(weights[0], np.float32)


def selected_classes(units_config: ml_collections.ConfigDict, num_classes: int) -> list[int]:
  """`units.classes`, or the first `units.num_classes` classes; raises on an id out of
  range."""
  classes = [int(c) for c in units_config.classes] or list(
      range(min(units_config.num_classes, num_classes)))
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad or not classes:
    raise ValueError(f'config.units.classes={tuple(units_config.classes)}: expected class ids '
                     f'in [0, {num_classes}) (the network has {num_classes} classes)')
  return list(dict.fromkeys(classes))


# ---------------------------------------------------------------------------
# The quantile, exactly, from the largest values
# ---------------------------------------------------------------------------

def _virtual_index(n: int, q: float) -> float:
  # Where numpy's 'linear' method (Hyndman & Fan type 7) reads the sorted values, computed
  # as numpy computes it.
  return (n - 1) * float(q)


def num_top_values(n: int, q: float) -> int:
  """How many of the largest of n values the q quantile reads (1 <= m <= n)."""
  if not 0 <= q <= 1:
    raise ValueError(f'config.units.quantile={q}: expected a value in [0, 1]')
  index = _virtual_index(n, q)
  if index >= n - 1:
    return 1
  return int(n - max(0, math.floor(index)))


def quantile_from_top(top_m: np.ndarray, n: int, q: float) -> float:
  """`np.quantile(values.astype(np.float64), q)` of n values, from their largest m
  (`num_top_values(n, q)` or more; any order): numpy's linear interpolation between the
  two order statistics around `(n - 1) q`, to the bit."""
  top_m = np.sort(np.asarray(top_m, np.float64))
  m = len(top_m)
  if m < num_top_values(n, q) or m > n:
    raise ValueError(f'{m} values given; the {q} quantile of {n} values needs the largest '
                     f'{num_top_values(n, q)}')
  stat = lambda i: top_m[i - (n - m)]  # pylint: disable=unnecessary-lambda-assignment
  index = _virtual_index(n, q)
  if index >= n - 1:
    return float(stat(n - 1))
  if index < 0:
    return float(stat(0))
  below = math.floor(index)
  t = index - below
  a, b = stat(below), stat(below + 1)
  diff = b - a
  return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)


class TopValues:
  """The m largest values of each of U units, streamed: a partition per batch keeps them."""

  def __init__(self, num_units: int, m: int):
    self.m = m
    self.values_UR = np.zeros((num_units, 0), np.float32)

  def add(self, values_UX: np.ndarray) -> None:
    values_UR = np.concatenate([self.values_UR, values_UX.astype(np.float32)], axis=1)
    extra = values_UR.shape[1] - self.m
    self.values_UR = np.partition(values_UR, extra, axis=1)[:, extra:] if extra > 0 else values_UR

  def padded(self) -> np.ndarray:
    """`U×m`, -inf where fewer than m values came (a fixed shape to gather)."""
    pad = self.m - self.values_UR.shape[1]
    return np.pad(self.values_UR, ((0, 0), (0, pad)), constant_values=-np.inf)


# ---------------------------------------------------------------------------
# Top images
# ---------------------------------------------------------------------------

# Per unit and kept image: peak activation, index in the split, label, the unit's h×w map,
# the eval window and the original size (where the map lies on the image).
_IMAGE_KEYS = ('peak', 'index', 'label', 'map', 'window', 'orig_hw')


class TopImages:
  """The `top` images of highest peak activation of each of U units (ties: the lower
  index), with what drawing them needs; fixed-shape arrays `U×top×...` (empty slots: peak
  -inf, index -1), so that processes can gather and merge them."""

  def __init__(self, num_units: int, top: int, map_hw: tuple[int, int]):
    self.top = top
    shape = (num_units, top)
    self.arrays = {'peak': np.full(shape, -np.inf, np.float32),
                   'index': np.full(shape, -1, np.int32),
                   'label': np.full(shape, -1, np.int32),
                   'map': np.zeros((*shape, *map_hw), np.float32),
                   'window': np.zeros((*shape, 4), np.float32),
                   'orig_hw': np.zeros((*shape, 2), np.int32)}

  def add(self, maps_NhwU: np.ndarray, index_N: np.ndarray, label_N: np.ndarray,
          window_N4: np.ndarray, orig_hw_N2: np.ndarray) -> None:
    num_units = maps_NhwU.shape[-1]
    maps_UNhw = maps_NhwU.transpose(3, 0, 1, 2)
    per_image = {'index': (index_N, np.int32), 'label': (label_N, np.int32),
                 'window': (window_N4, np.float32), 'orig_hw': (orig_hw_N2, np.int32)}
    # What describes an image is the same for every unit.
    new = {k: np.broadcast_to(np.asarray(x, dtype), (num_units, *np.shape(x)))
           for k, (x, dtype) in per_image.items()}
    new.update(peak=maps_UNhw.max(axis=(2, 3)), map=maps_UNhw)
    self.arrays = best_images({k: np.concatenate([self.arrays[k], new[k]], axis=1)
                               for k in _IMAGE_KEYS}, self.top)


def best_images(arrays: dict[str, np.ndarray], top: int) -> dict[str, np.ndarray]:
  """The `top` candidates (axis 1) of each unit (axis 0) by peak, then the lower index."""
  peak_UR, index_UR = arrays['peak'], arrays['index']
  # -inf peaks (empty slots) sort last.
  order_UT = np.lexsort((index_UR, -peak_UR), axis=-1)[:, :top]
  return {k: np.take_along_axis(v, order_UT.reshape(order_UT.shape + (1,) * (v.ndim - 2)),
                                axis=1)
          for k, v in arrays.items()}


def _gather(tree: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every process's arrays, stacked on a new leading axis (int32 and float32 only: they
  cross processes unchanged)."""
  if jax.process_count() == 1:
    return {k: v[None] for k, v in tree.items()}
  return {k: np.asarray(v) for k, v in multihost_utils.process_allgather(tree).items()}


# ---------------------------------------------------------------------------
# The pass over the split
# ---------------------------------------------------------------------------

def make_units_fn(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh,
                  unit_ids: Sequence[int]) -> Callable:
  """`units(state, images_BHWC) -> maps_BhwU`: the selected units of `aux['features']`,
  float32, jitted over the mesh."""
  units_U = np.asarray(unit_ids, np.int32)

  def units(state, images_BHWC):
    model = nnx.merge(graphdef, state)
    _, aux = model(images_BHWC, train=False)
    return jnp.take(aux['features'], units_U, axis=-1).astype(jnp.float32)

  batch = sharding.batch_sharding(mesh)
  return jax.jit(units, in_shardings=(sharding.replicated(mesh), batch), out_shardings=batch)


def unit_statistics(config: ml_collections.ConfigDict, model: nnx.Module,
                    mesh: jax.sharding.Mesh, unit_ids: Sequence[int], *, split: str,
                    num_examples: int | None, top_images: int, quantile: float
                    ) -> dict[str, Any]:
  """One pass over `split` (its first `num_examples` images): for each of `unit_ids`, its
  `quantile` threshold and top images (module docstring). A collective: every process
  calls it and gets the whole split's result.

  Returns `num_images`, `map_hw`, `thresholds_U` (float64) and `images`: `TopImages`
  arrays `U×top_images×...`, best first (slots past the split's size: index -1).
  """
  source, _ = data_lib.load_source(config.data, split)
  total = len(source) if num_examples is None else min(num_examples, len(source))
  if total == 0:
    raise ValueError(f'split {split!r} of {config.data.name!r} is empty')
  graphdef, state = nnx.split(model)
  units_fn = make_units_fn(graphdef, mesh, unit_ids)
  process_batch = sharding.check_batch_size(config.eval.batch_size, mesh, 'eval.batch_size')
  batches = pipeline.eval_batches(source, process_batch_size=process_batch,
                                  num_examples=num_examples,
                                  **pipeline.eval_settings(config.data))
  values = images = None
  count = 0
  try:
    for batch, n in batches:
      images_BHWC = sharding.shard_batch({'image': batch['image']}, mesh)['image']
      maps_BhwU = sharding.to_host(units_fn(state, images_BHWC), mesh)
      if values is None:  # the map's size is known from the first batch
        _, h, w, num_units = maps_BhwU.shape
        values = TopValues(num_units, num_top_values(total * h * w, quantile))
        images = TopImages(num_units, top_images, (h, w))
      if n == 0:
        continue
      maps_NhwU = maps_BhwU[:n]
      values.add(maps_NhwU.reshape(-1, maps_NhwU.shape[-1]).T)
      images.add(maps_NhwU, batch['index'][:n], batch['label'][:n], batch['window'][:n],
                 batch['orig_hw'][:n])
      count += n
  finally:
    batches.close()  # its reader threads and workers stop, however the loop ends
  count = sharding.sum_across_processes({'images': count})['images']
  if count != total:
    raise RuntimeError(f'the pass over {split!r} read {count} images, expected {total}')
  h, w = images.arrays['map'].shape[2:]
  gathered = _gather({'values': values.padded(),
                      **{f'image/{k}': v for k, v in images.arrays.items()}})
  thresholds_U, best = merge_processes(gathered, total * h * w, quantile, top_images)
  return {'num_images': total, 'map_hw': (h, w), 'thresholds_U': thresholds_U,
          'images': best}


def merge_processes(gathered: dict[str, np.ndarray], n: int, quantile: float, top: int
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """`(thresholds_U, best images)` of the whole split from every process's `values`
  (`P×U×m`, `TopValues.padded`) and `image/<key>` (`P×U×top×...`, `TopImages.arrays`),
  n the number of activations of a unit over the split: the union's largest m values
  and best images are the split's."""
  # Processes side by side on the candidate axis.
  merged = {k: np.concatenate(list(v), axis=1) for k, v in gathered.items()}
  m = gathered['values'].shape[2]
  top_Um = -np.partition(-merged['values'], m - 1, axis=1)[:, :m]
  thresholds_U = np.array([quantile_from_top(top_m, n, quantile) for top_m in top_Um])
  return thresholds_U, best_images({k: merged[f'image/{k}'] for k in _IMAGE_KEYS}, top)


# ---------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------

def region_tile(image_HW3: np.ndarray, map_hw: np.ndarray, window_4: np.ndarray,
                threshold: float, side: int) -> np.ndarray:
  """The image with its long side near `side` (`viz.fit`), darkened outside the region
  where `map_hw` (covering `window_4` of the image), resized bilinearly onto the tile's
  pixels, exceeds `threshold`; the region outlined. Pixels the network did not see (a
  centre crop's sides) are outside."""
  tile_HW3, _ = viz.fit(image_HW3, side, side)
  (height, width), (tile_h, tile_w) = image_HW3.shape[:2], tile_HW3.shape[:2]
  # The window in the tile's pixels: the map resampled at the tile's own pixel centres.
  scale_4 = np.array([tile_w / width, tile_h / height] * 2)
  map_HW, valid_HW = windows.map_on_image(map_hw, np.asarray(window_4) * scale_4,
                                          (tile_h, tile_w))
  return viz.highlight_region(tile_HW3, valid_HW & (map_HW > threshold))


def _file_name(class_id: int, name: str) -> str:
  slug = re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_.')[:40] or 'class'
  return f'class_{class_id}_{slug}.png'


def _class_figure(entry: dict[str, Any], tiles: dict[tuple[int, int], np.ndarray],
                  quantile: float) -> np.ndarray:
  rows = []
  for unit in entry['units']:
    cells = [viz.titled(tiles[unit['unit'], image['index']],
                        f'#{image["index"]} {image["label_name"]} {image["peak"]:.2f}')
             for image in unit['top_images']]
    rows.append(viz.titled(viz.grid(cells, columns=len(cells)),
                           f'unit {unit["unit"]}: weight {unit["weight"]:+.3f}, '
                           f'T = {unit["threshold"]:.3f} ({quantile} quantile)'))
  return viz.titled(viz.grid(rows, columns=1, pad=6),
                    f'class {entry["class"]} {entry["name"]}: top {len(rows)} units by '
                    'head weight')


def _summary_figure(entries: Sequence[dict[str, Any]],
                    tiles: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
  rows = []
  for entry in entries:
    blocks = []
    for unit in entry['units']:
      cells = [tiles[unit['unit'], image['index']]
               for image in unit['top_images'][:SUMMARY_IMAGES]]
      blocks.append(viz.titled(viz.grid(cells, columns=len(cells)),
                               f'unit {unit["unit"]}  w {unit["weight"]:+.2f}'))
    rows.append(viz.titled(viz.grid(blocks, columns=len(blocks), pad=10),
                           f'{entry["name"]} (class {entry["class"]})'))
  return viz.grid(rows, columns=1, pad=10)


def _markdown(report: dict[str, Any]) -> str:
  escape = lambda s: str(s).replace('|', '\\|')  # pylint: disable=unnecessary-lambda-assignment
  lines = [
      '# Class-specific units (CAM paper, Sec. 5)', '',
      f'Checkpoint `{report["checkpoint"]}`, split `{report["split"]}` '
      f'({report["num_images"]} images), {report["num_units"]} units on a '
      f'{report["map_hw"][0]}×{report["map_hw"][1]} map. For each class, the units of largest '
      'head weight; for each unit, its images of highest peak activation (index in the split: '
      f'label, peak) and T_k, the {report["quantile"]} quantile of its activations over the '
      'split, which outlines its region in the figures.', '',
      '| class | unit | weight | T_k | top images |', '|---|---:|---:|---:|---|']
  for entry in report['classes']:
    for unit in entry['units']:
      images = ', '.join(f'#{i["index"]}: {escape(i["label_name"])} {i["peak"]:.2f}'
                         for i in unit['top_images'])
      lines.append(f'| {entry["class"]} {escape(entry["name"])} | {unit["unit"]} | '
                   f'{unit["weight"]:+.3f} | {unit["threshold"]:.3f} | {images} |')
  lines += ['', 'Figures: ' + ', '.join(f'[{escape(e["name"])}]({e["figure"]})'
                                        for e in report['classes']) +
            ', summary: [units.png](units.png).', '']
  return '\n'.join(lines)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

def find_units(config: ml_collections.ConfigDict, model: nnx.Module, mesh: jax.sharding.Mesh,
               class_names: Sequence[str], output_dir: str, *,
               checkpoint: str = '') -> dict[str, Any]:
  """Ranks the units of `config.units`' classes, makes the pass over the split and
  (process 0) writes units.json, units.md and the figures in `output_dir`. Returns the
  report (units.json's content) with `output_dir` and `files` added. Raises ValueError
  for a network without a GAP/GMP head."""
  uc = config.units
  kernel_KC = cam_kernel(model)
  classes = selected_classes(uc, kernel_KC.shape[1])
  ranked = {c: rank_units(kernel_KC, c, min(uc.top_units, kernel_KC.shape[0]))
            for c in classes}
  unit_ids = sorted({int(k) for ids, _ in ranked.values() for k in ids})
  split = uc.split or config.data.eval_split
  logging.info('Units of %d classes (%d units of %d) on %s/%s', len(classes), len(unit_ids),
               kernel_KC.shape[0], config.data.name, split)
  stats = unit_statistics(config, model, mesh, unit_ids, split=split,
                          num_examples=uc.num_examples, top_images=uc.top_images,
                          quantile=uc.quantile)
  _, info = data_lib.load_source(config.data, split)
  label_names = list(info.class_names)
  best = stats['images']
  column = {k: u for u, k in enumerate(unit_ids)}

  def unit_entry(k: int, weight: float) -> dict[str, Any]:
    u = column[k]
    images = [{'index': int(best['index'][u, j]), 'label': int(best['label'][u, j]),
               'label_name': label_names[int(best['label'][u, j])],
               'peak': float(best['peak'][u, j])}
              for j in range(best['index'].shape[1]) if best['index'][u, j] >= 0]
    return {'unit': k, 'weight': float(weight), 'threshold': float(stats['thresholds_U'][u]),
            'top_images': images}

  entries = [{'class': c, 'name': class_names[c], 'figure': _file_name(c, class_names[c]),
              'units': [unit_entry(int(k), w) for k, w in zip(*ranked[c])]}
             for c in classes]
  report = {'checkpoint': checkpoint, 'model': config.model.name, 'dataset': config.data.name,
            'split': split, 'num_images': stats['num_images'],
            'map_hw': list(stats['map_hw']), 'num_units': int(kernel_KC.shape[0]),
            'quantile': float(uc.quantile), 'top_units': int(uc.top_units),
            'top_images': int(uc.top_images), 'classes': entries}
  files = ['units.json', 'units.md', 'units.png'] + [e['figure'] for e in entries]
  if jax.process_index() == 0:
    _write(report, stats, column, config, output_dir)
  return {**report, 'output_dir': output_dir, 'files': files}


def _write(report: dict[str, Any], stats: dict[str, Any], column: dict[int, int],
           config: ml_collections.ConfigDict, output_dir: str) -> None:
  source, _ = data_lib.load_source(config.data, report['split'])
  best = stats['images']
  side = min(TILE_SIDE, config.viz.max_side)
  tiles: dict[tuple[int, int], np.ndarray] = {}
  for entry in report['classes']:
    for unit in entry['units']:
      u = column[unit['unit']]
      for j, image in enumerate(unit['top_images']):
        key = (unit['unit'], image['index'])
        if key not in tiles:
          image_HW3 = pipeline.decode(source[image['index']], image['index'])
          tiles[key] = region_tile(image_HW3, best['map'][u, j], best['window'][u, j],
                                   unit['threshold'], side)
  for entry in report['classes']:
    viz.save_png(os.path.join(output_dir, entry['figure']),
                 _class_figure(entry, tiles, report['quantile']))
  viz.save_png(os.path.join(output_dir, 'units.png'),
               _summary_figure(report['classes'][:SUMMARY_CLASSES], tiles))
  io_utils.atomic_write_text(os.path.join(output_dir, 'units.md'), _markdown(report))
  # Last: a units.json on disk says the figures beside it are complete.
  io_utils.atomic_write_json(os.path.join(output_dir, 'units.json'), report)
  logging.info('Wrote units.json, units.md and %d figures in %s', len(report['classes']) + 1,
               output_dir)


def write_units(config: ml_collections.ConfigDict, workdir: str, *,
                checkpoint: str | None = None, output_dir: str | None = None
                ) -> dict[str, Any]:
  """`--mode=units`: the checkpoint at `checkpoint` (a workdir, its checkpoints/ or best/,
  a step folder; default the latest in `workdir`), its class-specific units, written to
  `output_dir` (default `workdir`/units). Returns `find_units`' report."""
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  mesh = sharding.make_mesh()
  model, meta, where, config = restore.restore_for_inference(config, checkpoint or workdir,
                                                             mesh)
  output_dir = os.path.abspath(output_dir or os.path.join(workdir, 'units'))
  return find_units(config, model, mesh, restore.class_names(config, meta), output_dir,
                    checkpoint=where)

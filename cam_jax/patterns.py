"""Pattern discovery (paper Sec. 4.2): the objects a class's CAM falls on.

"Discovering informative objects in the scenes" (Fig. 9) lists, for each scene category,
the objects that appear most often in its images ("frequent objects") and those that most
often overlap the high-activation region of the CAM of the predicted category
("informative objects"). The paper uses SUN's fully annotated scenes; here it is
`cam_synth`, whose generator knows every drawn object's exact pixels
(`synthetic.example_objects`): the labelled class's shape(s), named by the class, and
1-2 distractors, named `distractor:zigzag` or `distractor:cross`.

Definitions, over the images whose top-1 class is c (CAMs at the image's resolution):

- high-CAM region: the pixels of c's CAM `>= threshold * max` (`boxes.paper_mask`, the
  paper's box segmentation, threshold `eval.cam_threshold` = 0.2; non-strict; a map whose
  maximum is negative has none).
- an object overlaps it when at least `min_overlap` (default half) of the object's pixels
  lie in it: `inside >= min_overlap * area`, non-strict. A fraction of the object, not
  "one pixel": Fig. 9's dining rooms list wall as frequent (0.99) but not as informative;
  walls touch every large region, but a region rarely covers half a wall.
- `frequency[name]` = images with an object of that name / images predicted c.
- `informative[name]` = images where an object of that name overlaps / images with an
  object of that name: conditional on the object being there. Fig. 9's own numbers need
  this: "chandelier 0.80" is informative but not among the frequent objects, whose sixth
  is 0.73, so it cannot be a fraction of all the class's images.
- `overlap_rate[name]` = images where it overlaps / images predicted c (the
  unconditional rate, = frequency × informative), kept in the table beside them.

An image counts once per name, however many objects of that name it has (it overlaps if
one of them does). Both lists are ranked as in Fig. 9, top 6: frequent by frequency,
informative by informative (ties: more images first), then by name.

`write_informative_objects` runs a checkpoint over a cam_synth split and writes
WORKDIR/patterns/informative_objects.{json,md,png}:

  python -m cam_jax.main --config=configs/synthetic_gap.py --workdir=runs/synthetic \
      --mode=objects [--checkpoint=PATH]
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from scipy import special

from cam_jax import boxes as boxes_lib
from cam_jax import data as data_lib
from cam_jax import evaluate
from cam_jax import io_utils
from cam_jax import models
from cam_jax import restore
from cam_jax import sharding
from cam_jax import viz
from cam_jax import windows
from cam_jax.data import pipeline
from cam_jax.data import synthetic

MIN_OVERLAP = 0.5  # fraction of an object's pixels in the high-CAM region
TOP = 6  # objects per list (Fig. 9)
OUTPUT = 'patterns'  # under the workdir
TILE_SIDE = 160  # a figure tile's long side (cam_jax.figures uses the same)

Objects = Sequence[tuple[str, np.ndarray]]  # one image's (name, mask_HW bool)


# ---------------------------------------------------------------------------
# Counting (numpy)
# ---------------------------------------------------------------------------

def overlapping(cam_HW: np.ndarray, objects: Objects, *, threshold: float = 0.2,
                min_overlap: float = MIN_OVERLAP) -> list[bool]:
  """For each object, whether it overlaps the high-CAM region of `cam_HW` (module
  docstring): `inside >= min_overlap * area` of its pixels, the region `>= threshold *
  max`."""
  if not 0 < min_overlap <= 1:
    raise ValueError(f'min_overlap must be in (0, 1], got {min_overlap}')
  region_HW = boxes_lib.paper_mask(cam_HW, threshold)
  out = []
  for name, mask_HW in objects:
    mask_HW = np.asarray(mask_HW, bool)
    if mask_HW.shape != region_HW.shape:
      raise ValueError(f'object {name!r}: mask {mask_HW.shape}, CAM {region_HW.shape}; give '
                       'CAMs at the image resolution')
    area = int(mask_HW.sum())
    if area == 0:
      raise ValueError(f'object {name!r} has an empty mask')
    out.append(int(np.count_nonzero(region_HW & mask_HW)) >= min_overlap * area)
  return out


@dataclasses.dataclass
class ObjectCounts:
  """Image counts per predicted class c and object name v (`names`)."""
  names: tuple[str, ...]
  images_C: np.ndarray  # images predicted as c
  present_CV: np.ndarray  # ... with an object named v
  overlap_CV: np.ndarray  # ... where an object named v overlaps c's high-CAM region

  @classmethod
  def zeros(cls, names: Sequence[str], num_classes: int) -> ObjectCounts:
    names = tuple(names)
    return cls(names, np.zeros(num_classes, np.int64),
               np.zeros((num_classes, len(names)), np.int64),
               np.zeros((num_classes, len(names)), np.int64))

  def __add__(self, other: ObjectCounts) -> ObjectCounts:
    if self.names != other.names or self.images_C.shape != other.images_C.shape:
      raise ValueError('counts over different names or classes do not add up')
    return ObjectCounts(self.names, self.images_C + other.images_C,
                        self.present_CV + other.present_CV, self.overlap_CV + other.overlap_CV)


def count_objects(predicted_N: Sequence[int], cams_NHW: Sequence[np.ndarray],
                  objects: Sequence[Objects], *, num_classes: int,
                  names: Sequence[str] | None = None, threshold: float = 0.2,
                  min_overlap: float = MIN_OVERLAP) -> ObjectCounts:
  """The counts of N images: `predicted_N` their top-1 classes, `cams_NHW` the CAM of that
  class at each image's resolution, `objects` each image's `(name, mask_HW)`. `names`:
  every name counted (default: those seen, sorted); another name is an error."""
  predicted_N = np.asarray(predicted_N, np.int64).reshape(-1)
  if not len(predicted_N) == len(cams_NHW) == len(objects):
    raise ValueError(f'{len(predicted_N)} predictions, {len(cams_NHW)} CAMs and '
                     f'{len(objects)} object lists; give one of each per image')
  if len(predicted_N) and not (0 <= predicted_N.min() and predicted_N.max() < num_classes):
    raise ValueError(f'predicted classes must be in [0, {num_classes})')
  if names is None:
    names = sorted({name for image in objects for name, _ in image})
  counts = ObjectCounts.zeros(names, num_classes)
  column = {name: v for v, name in enumerate(counts.names)}
  for c, cam_HW, image in zip(predicted_N, cams_NHW, objects):
    unknown = sorted({name for name, _ in image} - column.keys())
    if unknown:
      raise ValueError(f'object names {unknown} are not among the names counted: '
                       f'{", ".join(counts.names)}')
    counts.images_C[c] += 1
    hits = overlapping(cam_HW, image, threshold=threshold, min_overlap=min_overlap)
    present = {column[name] for name, _ in image}
    overlap = {column[name] for (name, _), hit in zip(image, hits) if hit}
    counts.present_CV[c, sorted(present)] += 1
    counts.overlap_CV[c, sorted(overlap)] += 1
  return counts


def _ranked(values: dict[str, float], images: dict[str, int], top: int
            ) -> list[tuple[str, float]]:
  order = sorted(values, key=lambda name: (-values[name], -images[name], name))
  return [(name, values[name]) for name in order[:top]]


def table(counts: ObjectCounts, class_names: Sequence[str], *, top: int = TOP
          ) -> list[dict[str, Any]]:
  """One entry per class (JSON-ready): `class`, `name`, `num_images` (predicted as it),
  `objects` (`{name: {images, overlap_images, frequency, informative, overlap_rate}}`,
  names seen in its images only) and Fig. 9's ranked lists `frequent` and `informative`
  (`[[name, fraction], ...]`, `top` each; empty for a class no image is predicted as)."""
  if len(class_names) != len(counts.images_C):
    raise ValueError(f'{len(class_names)} class names for {len(counts.images_C)} classes')
  out = []
  for c, class_name in enumerate(class_names):
    n = int(counts.images_C[c])
    objects = {}
    for v, name in enumerate(counts.names):
      present, overlap = int(counts.present_CV[c, v]), int(counts.overlap_CV[c, v])
      if present:
        objects[name] = {'images': present, 'overlap_images': overlap,
                         'frequency': present / n, 'informative': overlap / present,
                         'overlap_rate': overlap / n}
    images = {name: o['images'] for name, o in objects.items()}
    out.append({
        'class': c, 'name': class_name, 'num_images': n, 'objects': objects,
        'frequent': _ranked({k: o['frequency'] for k, o in objects.items()}, images, top),
        'informative': _ranked({k: o['informative'] for k, o in objects.items()}, images,
                               top),
    })
  return out


def informative_objects(predicted_N: Sequence[int], cams_NHW: Sequence[np.ndarray],
                        objects: Sequence[Objects], *, num_classes: int,
                        class_names: Sequence[str] | None = None,
                        threshold: float = 0.2, min_overlap: float = MIN_OVERLAP,
                        top: int = TOP) -> list[dict[str, Any]]:
  """Fig. 9's table of N images (module docstring): `count_objects`, then `table`.
  `class_names` default: 'class <id>'."""
  counts = count_objects(predicted_N, cams_NHW, objects, num_classes=num_classes,
                         threshold=threshold, min_overlap=min_overlap)
  names = class_names or [f'class {c}' for c in range(num_classes)]
  return table(counts, names, top=top)


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------

def _listing(pairs: Sequence[tuple[str, float]]) -> list[str]:
  return [f'{name}:{value:.2f}' for name, value in pairs]


def format_markdown(result: dict[str, Any]) -> str:
  """Fig. 9's two lists per class, as Markdown."""
  lines = [
      f'# Informative objects (paper Fig. 9): {result["dataset"]} {result["split"]}',
      '',
      f'{result["num_images"]} images, checkpoint `{result["checkpoint"]}`. Over the images '
      'predicted as a class: "Frequent object" is the fraction of them that hold an object '
      'of that name; "Informative object" the fraction of those holding it in which it '
      f'overlaps the high-CAM region (the predicted class\'s CAM >= {result["threshold"]:g} '
      f'× its max): at least {result["min_overlap"]:g} of the object\'s pixels in it.',
  ]
  for entry in result['classes']:
    lines += ['', f'## {entry["name"]} ({entry["num_images"]} images predicted)', '']
    if not entry['num_images']:
      lines.append('No image is predicted as this class.')
      continue
    frequent, informative = _listing(entry['frequent']), _listing(entry['informative'])
    lines += ['| Frequent object | Informative object |', '|---|---|']
    for i in range(max(len(frequent), len(informative))):
      cells = [items[i] if i < len(items) else '' for items in (frequent, informative)]
      lines.append(f'| {cells[0]} | {cells[1]} |')
  return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------

def _text_tile(lines: Sequence[str], width: int, height: int) -> np.ndarray:
  font = ImageFont.load_default()
  step = font.getbbox('Ag')[3] + 2
  tile = Image.new('RGB', (width, max(height, step * len(lines) + 4)), (255, 255, 255))
  draw = ImageDraw.Draw(tile)
  for i, line in enumerate(lines):
    draw.text((3, 2 + step * i), line, fill=(0, 0, 0), font=font)
  return np.asarray(tile)


def _short(name: str) -> str:
  return name.split(':', 1)[-1]


def example_tile(image_HW3: np.ndarray, cam_HW: np.ndarray, objects: Objects,
                 hits: Sequence[bool], title: str, *, side: int = TILE_SIDE,
                 style: dict[str, Any] | None = None) -> np.ndarray:
  """The CAM over the image, each object outlined (white: it overlaps the high-CAM
  region; black: it does not), below `title`."""
  tile_HW3, _ = viz.fit(viz.overlay(image_HW3, cam_HW, **(style or {})), side, side)
  tile = tile_HW3.copy()
  for (_, mask_HW), hit in zip(objects, hits):
    big = np.asarray(Image.fromarray(np.asarray(mask_HW, np.uint8) * 255).resize(
        (tile.shape[1], tile.shape[0]), Image.NEAREST)) > 0
    outline = big & ~ndimage.binary_erosion(big, iterations=2)
    tile[outline] = (255, 255, 255) if hit else (0, 0, 0)
  return viz.titled(tile, title)


def class_row(entry: dict[str, Any], examples: Sequence[np.ndarray], side: int = TILE_SIDE
              ) -> np.ndarray:
  """One class: its two lists as a text tile, then its example tiles."""
  height = max([e.shape[0] for e in examples] or [side])
  lines = ([f'{entry["name"]} ({entry["num_images"]} images)', 'Frequent object:']
           + ['  ' + s for s in _listing(entry['frequent'])] + ['Informative object:']
           + ['  ' + s for s in _listing(entry['informative'])])
  return viz.grid([_text_tile(lines, side, height), *examples], columns=1 + len(examples))


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

def _check_synthetic(config: ml_collections.ConfigDict) -> None:
  if config.data.name != 'cam_synth':
    raise ValueError(
        f'config.data.name={config.data.name!r}: informative objects need the mask of every '
        "object in an image, which only the synthetic dataset has; expected 'cam_synth' "
        '(e.g. --config=configs/synthetic_gap.py)')


def _stored(data_config: ml_collections.ConfigDict, split: str, source: Any
            ) -> tuple[str, np.ndarray]:
  """The split and indices of the drawn examples behind `source` (the held-out part of
  the train split is a subset of it)."""
  if isinstance(source, data_lib.Subset):
    return data_config.train_split, source.indices
  return split, np.arange(len(source))


def write_informative_objects(config: ml_collections.ConfigDict, workdir: str, *,
                              checkpoint: str | None = None, split: str | None = None,
                              num_examples: int | None = None,
                              min_overlap: float = MIN_OVERLAP,
                              top: int = TOP) -> dict[str, Any]:
  """Fig. 9 for a trained network on cam_synth: the table (module docstring) of the
  first `num_examples` images (default all) of `split` (default `data.eval_split`), with
  the CAM threshold `eval.cam_threshold`, written to WORKDIR/patterns/ as
  informative_objects.json, .md and .png (`config.figures.num_classes` classes with the
  most images, the first `config.figures.per_class` of each), atomically. Returns what
  the JSON holds.

  `checkpoint`: a workdir, its checkpoints/ or best/ folder, or a step folder (default
  the latest in WORKDIR/checkpoints). Raises ValueError for a dataset other than
  cam_synth (`config.data.name`, or the checkpoint's), a network without a CAM, or a
  stored image that its seed no longer draws (the dataset was prepared by another version
  of the generator): every image is checked against its regenerated objects' image.
  """
  _check_synthetic(config)
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  split = split or config.data.eval_split
  mesh = sharding.make_mesh()
  model, meta, where, config = restore.restore_for_inference(
      config, restore.checkpoint_path(workdir, checkpoint), mesh)
  if meta.get('dataset') != 'cam_synth':
    raise ValueError(f'{where} was trained on {meta.get("dataset")!r}: its classes are not '
                     "cam_synth's")
  if models.cam_weights(model) is None:
    raise ValueError(f'{type(model).__name__} has no GAP/GMP head: it has no CAM')
  source, info = data_lib.load_source(config.data, split)
  if int(meta['num_classes']) != info.num_classes:
    raise ValueError(f'{where} has {meta["num_classes"]} classes, cam_synth/'
                     f'{config.data.get("builder_config") or "default"} {info.num_classes}')
  builder_config = config.data.get('builder_config')
  stored_split, stored_index = _stored(config.data, split, source)
  names = synthetic.object_names(info.num_classes)
  threshold = float(config.eval.cam_threshold)
  fig = config.figures
  style = dict(colormap=config.viz.colormap, heat_weight=config.viz.heat_weight,
               image_weight=config.viz.image_weight)
  writer = jax.process_index() == 0

  graphdef, state = nnx.split(model)
  predict = evaluate.make_predict_fn(graphdef, mesh, top_k=1)
  batches = pipeline.eval_batches(
      source, process_batch_size=sharding.check_batch_size(config.eval.batch_size, mesh,
                                                           'eval.batch_size'),
      num_examples=num_examples, **pipeline.eval_settings(config.data))
  counts = ObjectCounts.zeros(names, info.num_classes)
  examples: dict[int, list[dict[str, Any]]] = {}  # process 0: the first of each class
  try:
    for batch, n in batches:
      arrays = sharding.shard_batch({'image': batch['image'], 'label': batch['label']}, mesh)
      out = sharding.to_host(predict(state, arrays['image'], arrays['label']), mesh)
      predicted_N = out['classes_Bk'][:n, 0]
      probs_N = special.softmax(out['logits_BC'][:n].astype(np.float64), -1)[
          np.arange(n), predicted_N]
      cams, objects = [], []
      for i in range(n):
        position = int(batch['index'][i])
        ex = synthetic.regenerate_example(builder_config, stored_split,
                                          int(stored_index[position]))
        image_HW3 = pipeline.decode(source[position], position)
        if not np.array_equal(image_HW3, ex['image']):
          raise ValueError(
              f'cam_synth {stored_split} example {stored_index[position]} is not the image '
              'its seed draws: the dataset was prepared by another version of the generator;'
              ' prepare it again (data_dir ' f'{config.data.get("data_dir") or "default"})')
        cam_HW, _ = windows.map_on_image(out['maps_BThw'][i, 0], batch['window'][i],
                                         image_HW3.shape[:2])
        cams.append(cam_HW)
        objects.append(ex['objects'])
        c = int(predicted_N[i])
        if writer and len(examples.setdefault(c, [])) < fig.per_class:
          examples[c].append({'index': int(stored_index[position]), 'image': image_HW3,
                              'cam': cam_HW, 'objects': ex['objects'],
                              'prob': float(probs_N[i])})
      counts += count_objects(predicted_N, cams, objects, num_classes=info.num_classes,
                              names=names, threshold=threshold, min_overlap=min_overlap)
  finally:
    batches.close()  # its reader threads and workers stop, whatever ends the loop

  totals = sharding.sum_across_processes({'images_C': counts.images_C,
                                          'present_CV': counts.present_CV,
                                          'overlap_CV': counts.overlap_CV})
  counts = ObjectCounts(names, **totals)
  class_names = list(info.class_names)
  result = {
      'dataset': f'cam_synth/{builder_config or "default"}', 'split': split,
      'checkpoint': where, 'num_images': int(counts.images_C.sum()),
      'threshold': threshold, 'min_overlap': min_overlap, 'top': top,
      'classes': table(counts, class_names, top=top),
  }
  if not writer:
    return result

  out_dir = os.path.join(workdir, OUTPUT)
  io_utils.atomic_write_json(os.path.join(out_dir, 'informative_objects.json'), result)
  io_utils.atomic_write_text(os.path.join(out_dir, 'informative_objects.md'),
                             format_markdown(result))
  shown = sorted(examples, key=lambda c: (-int(counts.images_C[c]), c))[:fig.num_classes]
  rows = []
  for c in sorted(shown):
    tiles = []
    for e in examples[c]:
      hits = overlapping(e['cam'], e['objects'], threshold=threshold, min_overlap=min_overlap)
      on = ', '.join(dict.fromkeys(_short(name) for (name, _), hit
                                   in zip(e['objects'], hits) if hit))
      tiles.append(example_tile(e['image'], e['cam'], e['objects'], hits,
                                f'#{e["index"]} {e["prob"]:.2f} on: {on or "-"}',
                                style=style))
    rows.append(class_row(result['classes'][c], tiles))
  if rows:
    viz.save_png(os.path.join(out_dir, 'informative_objects.png'),
                 viz.grid(rows, columns=1, pad=6))
  logging.info('Wrote informative_objects.json, .md and .png (%d images, %d classes shown) '
               'in %s', result['num_images'], len(rows), out_dir)
  return result

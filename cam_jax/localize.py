"""`--mode=localize`: CAMs, boxes and pictures for image files, from a trained checkpoint.

  python -m cam_jax.main --config=CONFIG --workdir=DIR --mode=localize --images=PATH_OR_GLOB

`--images` is one file, a folder (its files, sorted, not recursive; hidden files left out,
as a glob's `*` does) or a glob. Each image, of any size and colour mode, goes through the
eval transform of the config (`data.eval_crop`), in batches of `eval.batch_size`; the
device gives the top-k classes (`eval.top_k`) and their maps, and the host writes, in
the output folder (default DIR/localize/):

- `<name>.overlay.png`: the top-1 class's map over the image (`config.viz`), its box red;
- `<name>.top5.png`: the paper's Fig. 4 layout, one overlay per top-k class with its
  name, softmax score and box;
- `predictions.jsonl`: one line per image, `{"file", "height", "width", "top_k":
  [{"class", "name", "score", "box"}, ...], "overlay", "figure"}`, written atomically.

`<name>` is the file's stem, with `-2`, `-3`, ... added when stems collide. Boxes are the
paper's (`eval.cam_threshold` of each map's max, largest component), `(x0, y0, x1, y1)`
with inclusive integer corners in the ORIGINAL image's pixel grid,
whatever the network saw. Pictures of images longer than `viz.max_side` are shrunk,
those shorter than `PICTURE_MIN_SIDE` upscaled by an integer factor.

Images are turned upright as their EXIF Orientation tag says (a phone's photo, as a
viewer shows it); boxes are in that upright grid. Files that cannot be used (not an
image, truncated, unreadable, not a regular file) are skipped with a warning naming
each; `main` then exits with status `EXIT_SKIPPED` (3).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from scipy import special

from cam_jax import box_stage
from cam_jax import checkpoints
from cam_jax import data as data_lib
from cam_jax import evaluate as evaluate_lib
from cam_jax import io_utils
from cam_jax import models
from cam_jax import sharding
from cam_jax import train
from cam_jax import viz
from cam_jax import windows
from cam_jax.data import conventions
from cam_jax.data import images as images_lib
from cam_jax.data import pipeline

EXIT_SKIPPED = 3  # main's exit status when some file was skipped
PREDICTIONS = 'predictions.jsonl'
# Pictures of small images (cam_synth's 64×64) are upscaled by an integer factor to about
# this long side, so that the maps and boxes are visible.
PICTURE_MIN_SIDE = 192


@dataclasses.dataclass
class Summary:
  """What `localize` did: images written (by every process), and `(path, why)` of each
  file skipped (all of them in process 0, its own elsewhere; `num_skipped` counts all)."""
  output_dir: str
  checkpoint: str
  written: int
  skipped: list[tuple[str, str]]
  num_skipped: int = 0


@dataclasses.dataclass
class _Image:
  """One decoded image, reduced to what the batch and the pictures need."""
  path: str
  name: str  # stem of its output files
  orig_hw: tuple[int, int]
  window_4: np.ndarray  # what the network saw, in the original's continuous coordinates
  input_SS3: np.ndarray | None  # normalised network input; None once batched
  picture_HW3: np.ndarray  # shrunk to viz.max_side (or upscaled if small): originals are not kept
  scale: float  # picture long side / original long side


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

def list_images(spec: str) -> list[str]:
  """The paths `--images` names: a file, a folder's entries (sorted, not recursive, no
  hidden ones), or a glob's matches (sorted). Raises FileNotFoundError if none."""
  if os.path.isdir(spec):
    paths = sorted(os.path.join(spec, n) for n in os.listdir(spec) if not n.startswith('.'))
    if not paths:
      raise FileNotFoundError(f'--images={spec!r}: the folder holds no file')
    return paths
  if os.path.lexists(spec):
    return [spec]
  paths = sorted(glob.glob(spec))
  if not paths:
    raise FileNotFoundError(f'--images={spec!r} matches no file (expected an image file, a '
                            'folder of images or a glob such as "photos/*.jpg")')
  return paths


def output_names(paths: list[str]) -> list[str]:
  """Unique output stems: each file's stem, then `-2`, `-3`, ... for stems seen before.

  Compared case-insensitively, so that 'A.png' and 'a.jpg' do not overwrite each other's
  pictures on macOS or Windows file systems.
  """
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  taken = {s.casefold() for s in stems}
  seen: collections.Counter[str] = collections.Counter()
  names = []
  for stem in stems:
    key = stem.casefold()
    seen[key] += 1
    name = stem
    if seen[key] > 1:
      n = seen[key]
      while f'{stem}-{n}'.casefold() in taken:
        n += 1
      name = f'{stem}-{n}'
      taken.add(name.casefold())
    names.append(name)
  return names


def _read(path: str, name: str, preprocess: pipeline.EvalPreprocess, max_side: int) -> _Image:
  """Decodes and transforms one file; raises images.BadImageError naming it."""
  if not os.path.isfile(path):  # also keeps a FIFO from blocking the read
    raise images_lib.BadImageError(f'{path}: not a regular file')
  try:
    with open(path, 'rb') as f:
      encoded = f.read()
  except OSError as e:
    raise images_lib.BadImageError(f'{path}: unreadable ({e.strerror or e})') from e
  image_HW3 = images_lib.decode_image(encoded, path, exif_orientation=True)
  orig_hw = image_HW3.shape[:2]
  window_4 = preprocess.window(orig_hw)
  input_SS3 = pipeline.normalize(pipeline.crop_resize(image_HW3, window_4, preprocess.image_size),
                                 preprocess.convention)
  picture_HW3, scale = viz.fit(image_HW3, max_side, PICTURE_MIN_SIDE)
  return _Image(path, name, orig_hw, window_4, input_SS3, picture_HW3, scale)


def _batches(paths: list[str], names: list[str], preprocess: pipeline.EvalPreprocess,
             max_side: int, batch_size: int, skipped: list[tuple[str, str]]
             ) -> Iterator[list[_Image]]:
  """Lists of up to `batch_size` decoded images, read one batch at a time; bad files are
  logged and appended to `skipped`."""
  batch = []
  for path, name in zip(paths, names):
    try:
      batch.append(_read(path, name, preprocess, max_side))
    except images_lib.BadImageError as e:
      logging.warning('skipped: %s', e)
      skipped.append((path, str(e)))
      continue
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch


# ---------------------------------------------------------------------------
# Checkpoint and class names
# ---------------------------------------------------------------------------

def restore_for_inference(config: ml_collections.ConfigDict, path: str,
                          mesh: jax.sharding.Mesh
                          ) -> tuple[nnx.Module, dict[str, Any], str, ml_collections.ConfigDict]:
  """`(model, meta, step folder, config)` of the checkpoint at `path`
  (`checkpoints.checkpoint_location`): the checkpoint's own network and number of classes
  (a converted checkpoint works with any config), and the config with its input convention
  resolved (`conventions.resolve`)."""
  directory, step = checkpoints.checkpoint_location(path)
  try:
    model, step, meta = train.restore_model_at(config, directory, mesh, step=step,
                                               model_from_meta=True)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{e} Or pass --checkpoint.') from e
  where = os.path.join(directory, str(step))
  config = conventions.resolve(config, checkpoints.input_convention(meta), where)
  return model, meta, where, config


def class_names(config: ml_collections.ConfigDict, meta: dict[str, Any]) -> list[str]:
  """The checkpoint's class names; else the dataset's (never prepared for this); else
  'class <id>', with a warning."""
  num_classes = int(meta['num_classes'])
  names = list(meta.get('class_names') or ())
  if len(names) == num_classes:
    return names
  data_config = config.data.copy_and_resolve_references()
  data_config.prepare = False  # names alone are not worth preparing a dataset
  try:
    _, info = data_lib.load_source(data_config, data_config.eval_split)
    if len(info.class_names) == num_classes:
      return list(info.class_names)
    why = f'the dataset has {len(info.class_names)} class names'
  except Exception as e:  # pylint: disable=broad-except
    # Missing or unprepared data, an unreadable names file...: names only label pictures.
    why = f'the dataset could not be read ({type(e).__name__}: {e})'
  logging.warning('The checkpoint holds no class names and %s: classes are named '
                  '"class <id>".', why)
  return [f'class {i}' for i in range(num_classes)]


# ---------------------------------------------------------------------------
# Host side: boxes, pictures, JSON
# ---------------------------------------------------------------------------

def _maps_on_picture(maps_khw: np.ndarray, image: _Image
                     ) -> tuple[list[np.ndarray], np.ndarray]:
  """Each map resampled through the window onto the picture's pixels, and the pixels the
  network saw.

  The picture is the original resized, so the window is resized with it (per axis, as the
  picture was rounded to whole pixels): the same resampling as onto the original, without
  ever building an original-sized map for a picture.
  """
  pic_h, pic_w = image.picture_HW3.shape[:2]
  sx, sy = pic_w / image.orig_hw[1], pic_h / image.orig_hw[0]
  window_4 = np.asarray(image.window_4, np.float64) * [sx, sy, sx, sy]
  placed = [windows.map_on_image(m, window_4, (pic_h, pic_w)) for m in maps_khw]
  return [map_HW for map_HW, _ in placed], placed[0][1]


def _write_image(image: _Image, logits_C: np.ndarray, classes_k: np.ndarray,
                 maps_khw: np.ndarray, names: list[str], config: ml_collections.ConfigDict,
                 output_dir: str) -> dict[str, Any]:
  """Writes the two pictures of one image; returns its JSON record."""
  probs_C = special.softmax(logits_C.astype(np.float64))
  boxes_k4 = np.concatenate([
      box_stage.paper_boxes_on_original(m, image.window_4, image.orig_hw,
                                        (config.eval.cam_threshold,)) for m in maps_khw])
  top_k = [{'class': int(c), 'name': names[c], 'score': float(probs_C[c]),
            'box': [int(v) for v in box]} for c, box in zip(classes_k, boxes_k4)]

  pic_hw = image.picture_HW3.shape[:2]
  pic_maps, valid_HW = _maps_on_picture(maps_khw, image)
  pic_boxes_k4 = viz.scale_boxes(boxes_k4, image.scale, pic_hw)
  style = dict(colormap=config.viz.colormap, heat_weight=config.viz.heat_weight,
               image_weight=config.viz.image_weight, valid_HW=valid_HW)
  overlay = viz.overlay(image.picture_HW3, pic_maps[0], **style)
  overlay = viz.draw_boxes(overlay, pic_boxes_k4[:1], viz.PRED_COLOR, viz.box_width(pic_hw))
  figure = viz.top_k_figure(image.picture_HW3, pic_maps,
                            [f'{p["name"]} {p["score"]:.2f}' for p in top_k],
                            list(pic_boxes_k4), image_title=os.path.basename(image.path),
                            **style)
  files = {'overlay': f'{image.name}.overlay.png', 'figure': f'{image.name}.top5.png'}
  viz.save_png(os.path.join(output_dir, files['overlay']), overlay)
  viz.save_png(os.path.join(output_dir, files['figure']), figure)
  return {'file': image.path, 'height': int(image.orig_hw[0]),
          'width': int(image.orig_hw[1]), 'top_k': top_k, **files}


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

def _predict_batches(predict: Callable, state: Any, mesh: jax.sharding.Mesh,
                     batches: Iterator[list[_Image]], batch_size: int, image_size: int
                     ) -> Iterator[tuple[list[_Image], dict[str, np.ndarray]]]:
  """`(images, host outputs)` per batch; a short last batch is padded by repeating its
  last image (one compiled shape), the padding's outputs dropped.

  The next batch is dispatched before the previous one's outputs are fetched, so that
  the device works while the host decodes and draws. With several processes every
  process makes the same (collective) calls: one whose files are done feeds blank
  batches until every process is done.
  """
  blank = np.zeros((image_size, image_size, 3), np.float32)
  pending = None
  while True:
    batch = next(batches, None)
    if jax.process_count() > 1:
      if not sharding.sum_across_processes({'left': int(batch is not None)})['left']:
        break
    elif batch is None:
      break
    batch = batch or []
    inputs = [im.input_SS3 for im in batch] or [blank]
    inputs += [inputs[-1]] * (batch_size - len(inputs))
    for im in batch:
      im.input_SS3 = None  # in the device batch now
    arrays = sharding.shard_batch({'image': np.stack(inputs),
                                   'label': np.zeros(batch_size, np.int32)}, mesh)
    out = predict(state, arrays['image'], arrays['label'])
    if pending is not None:
      yield pending[0], sharding.to_host(pending[1], mesh)
    pending = (batch, out)
  if pending is not None:
    yield pending[0], sharding.to_host(pending[1], mesh)


def _part_path(output_dir: str, index: int, count: int) -> str:
  return os.path.join(output_dir, f'.{PREDICTIONS}.part-{index}-of-{count}.tmp')


def _merge_parts(output_dir: str, count: int) -> list[tuple[str, str]]:
  """Process 0: every process's part, in file order, into predictions.jsonl (atomic);
  the parts are removed. Returns every `(path, why)` skipped."""
  entries = []
  for index in range(count):
    part = _part_path(output_dir, index, count)
    if not os.path.exists(part):
      raise FileNotFoundError(f'{part} (the predictions of process {index}) is missing: '
                              '--output_dir must be a folder every process sees')
    with open(part, encoding='utf-8') as f:
      entries += [json.loads(line) for line in f]
  entries.sort(key=lambda e: e['position'])
  io_utils.atomic_write_text(
      os.path.join(output_dir, PREDICTIONS),
      ''.join(json.dumps(e['record']) + '\n' for e in entries if 'record' in e))
  for index in range(count):
    os.remove(_part_path(output_dir, index, count))
  return [(e['skipped'], e['why']) for e in entries if 'skipped' in e]


def localize(config: ml_collections.ConfigDict, workdir: str, images: str, *,
             checkpoint: str | None = None, output_dir: str | None = None) -> Summary:
  """Localizes the top-k classes of every image `images` names (module docstring).

  `checkpoint`: a workdir, its checkpoints/ or best/ folder, or a step folder (default:
  the latest in `workdir`/checkpoints). `output_dir` default: `workdir`/localize.
  Raises FileNotFoundError if `images` names no file or there is no checkpoint; bad
  files are skipped and listed in the summary.

  With several processes (a multi-host run), each process reads and draws every P-th
  file, the devices of all of them compute together, and process 0 writes
  predictions.jsonl; `images` and `output_dir` must be paths every process sees.
  """
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  paths = list_images(images)
  names = output_names(paths)
  if checkpoint is None:
    checkpoint = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(checkpoint):
      raise FileNotFoundError(f'No checkpoint in {os.path.abspath(checkpoint)}: train first '
                              '(--mode=train_and_evaluate), or pass --checkpoint')
  mesh = sharding.make_mesh()
  model, meta, where, config = restore_for_inference(config, checkpoint, mesh)
  method = config.eval.get('saliency', 'cam')
  if method == 'cam' and models.cam_weights(model) is None:
    raise ValueError(f'{type(model).__name__} (checkpoint {where}) has a fully connected '
                     "classifier: CAM does not apply; set --config.eval.saliency='gradcam'")
  labels = class_names(config, meta)
  top_k = min(config.eval.top_k, len(labels))
  graphdef, state = nnx.split(model)
  predict = evaluate_lib.make_predict_fn(graphdef, mesh, top_k=top_k, saliency=method)
  batch_size = sharding.check_batch_size(config.eval.batch_size, mesh, 'eval.batch_size')
  preprocess = pipeline.EvalPreprocess(config.data.image_size, config.data.max_boxes,
                                       crop=config.data.eval_crop,
                                       resize_shorter=config.data.eval_resize_shorter,
                                       convention=conventions.from_config(config.data))
  output_dir = os.path.abspath(output_dir or os.path.join(workdir, 'localize'))
  os.makedirs(output_dir, exist_ok=True)
  count, index = jax.process_count(), jax.process_index()
  positions = list(range(index, len(paths), count))  # this process's files
  logging.info('Localizing %d files (%d in this process) with %s (%d classes, top %d, %s) '
               'into %s', len(paths), len(positions), where, len(labels), top_k, method,
               output_dir)

  skipped: list[tuple[str, str]] = []
  written = 0
  position_of = {paths[i]: i for i in positions}
  # Lines go to a part file as they come (no batch's records wait in memory); process 0
  # merges the parts into predictions.jsonl at the end, atomically: a reader never sees
  # a half-written one.
  part = _part_path(output_dir, index, count)
  try:
    with open(part, 'w', encoding='utf-8') as f:
      batches = _batches([paths[i] for i in positions], [names[i] for i in positions],
                         preprocess, config.viz.max_side, batch_size, skipped)
      for batch, out in _predict_batches(predict, state, mesh, batches, batch_size,
                                         config.data.image_size):
        for i, image in enumerate(batch):
          record = _write_image(image, out['logits_BC'][i], out['classes_Bk'][i],
                                out['maps_BThw'][i, :top_k], labels, config, output_dir)
          f.write(json.dumps({'position': position_of[image.path], 'record': record}) + '\n')
        written += len(batch)
        f.flush()
        logging.info('%d/%d files: %d localized, %d skipped', written + len(skipped),
                     len(positions), written, len(skipped))
      for path, why in skipped:
        f.write(json.dumps({'position': position_of[path], 'skipped': path, 'why': why}) + '\n')
      f.flush()
      os.fsync(f.fileno())
    # A collective: once every process is here, every part is complete.
    totals = sharding.sum_across_processes({'written': written, 'skipped': len(skipped)})
    if index == 0:
      skipped = _merge_parts(output_dir, count)
  except BaseException:
    if os.path.exists(part):
      os.unlink(part)
    raise

  logging.info('Localized %d of %d files: pictures and %s in %s', totals['written'],
               len(paths), PREDICTIONS, output_dir)
  if skipped:
    logging.warning('Skipped %d bad file(s): %s', len(skipped),
                    ', '.join(path for path, _ in skipped))
  return Summary(output_dir=output_dir, checkpoint=where, written=totals['written'],
                 skipped=skipped, num_skipped=totals['skipped'])

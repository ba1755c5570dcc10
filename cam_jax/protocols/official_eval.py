"""The `cam_official` evaluator: zhoubolei/CAM's released ILSVRC pipeline end to end.

Per image (ILSVRC_generate_heatmap.m, ILSVRC_evaluate_bbox.m, simpleEvaluation.m):

1. The image resized to the square frame (256×256 for the 224/227 crops; MATLAB
   `imresize(..., 'bilinear')`, antialiased), its ten crops (`cam_official.ten_crops`),
   each normalised by the weights' input convention.
2. One device pass over the crops: class probabilities averaged over the ten give the
   top 5 (and classification top-1/top-5); each crop's CAM of those five classes at the
   map resolution.
3. Per class, the 8-bit heat map (`cam_official.heat_map`: bicubic to the crop, the ten
   merged into the frame, bicubic to the original image, divided by its maximum) and the
   released box generator (`cam_official.dt_boxes`).
4. Scoring as simpleEvaluation.m: top-k localization error with each class's first box
   (Table 2), with its second box, and with the five-box heuristic (Table 3); a guess is
   correct when its class is the label and its box overlaps a ground-truth box by
   >= 0.5. Rates divide by the images that have boxes.

Differences from the release, named: the frame is `round(crop · 256 / 224)` for crops
other than 224 and 227 (the small networks here); a mean image is the weights' centre
crop subtracted from each crop (theirs subtracts the 256×256 mean before cropping); the
ILSVRC blacklist of simpleEvaluation.m applies only when given (`blacklist_file`: the
devkit's ILSVRC2014_clsloc_validation_blacklist.txt, 1-based positions in the split's
order; those images count for classification only); MATLAB's single-precision arithmetic
is float64 here.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cam_jax import cam as cam_lib
from cam_jax import data as data_lib
from cam_jax import models
from cam_jax import sharding
from cam_jax.data import conventions
from cam_jax.data import pipeline
from cam_jax.protocols import cam_official

TOP = 5  # the release keeps five classes per image


def frame_size(crop: int) -> int:
  """The square the ten crops come from: 256 for the released 224 and 227 crops."""
  return cam_official.SQUARE if crop in (224, 227) else int(round(crop * 256 / 224))


def crop_inputs(image_HW3: np.ndarray, crop: int,
                convention: conventions.InputConvention) -> np.ndarray:
  """The ten normalised crops of one image, `10×crop×crop×3` float32."""
  square = frame_size(crop)
  frame = cam_official.imresize(image_HW3.astype(np.float64), (square, square), 'bilinear')
  frame = np.clip(np.floor(frame + 0.5), 0, 255).astype(np.uint8)  # back to pixels
  return np.stack([convention.normalize(c) for c in cam_official.ten_crops(frame, crop)])


def make_ten_crop_fn(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, top: int = TOP):
  """`f(state, crops_N10SS3) -> (probs_NC averaged over the crops, the `top` classes,
  CAMs N×10×top×h×w)`, jitted over the mesh."""

  def fn(state, crops):
    model = nnx.merge(graphdef, state)
    n = crops.shape[0]
    logits, aux = model(crops.reshape(n * 10, *crops.shape[2:]), train=False)
    probs = jax.nn.softmax(logits.astype(jnp.float32)).reshape(n, 10, -1).mean(1)
    classes = cam_lib.top_k_classes(probs, top)
    kernel, _ = models.cam_weights(model)
    ids = jnp.repeat(classes, 10, axis=0)  # each crop's maps of its image's top 5
    cams = cam_lib.class_activation_maps(aux['features'], kernel, ids)
    return probs, classes, cams.reshape(n, 10, top, *cams.shape[2:])

  batch = sharding.batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(sharding.replicated(mesh), batch), out_shardings=batch)


def score_image(classes_5: np.ndarray, cams_10_5_hw: np.ndarray,
                orig_hw: tuple[int, int], crop: int, label: int, gt_M4: np.ndarray,
                threshold_sets: Sequence[tuple[int, int, int]],
                jpeg_quality: int | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Errors of one image: `cls` (top-1..5), and, if it has boxes, per threshold set s
  `first/s`, `second/s` and `combined/s` (top-1..5 localization errors, 0 or 1 each); and
  per threshold set the guesses (class, first and second box corners) for predictions.
  Each class's heat map is made once for every threshold set."""
  out: dict[str, Any] = {
      'cls': np.asarray([int(label not in classes_5[:k]) for k in range(1, TOP + 1)])}
  classes = [int(c) for c in classes_5]
  heats = [cam_official.heat_map(cams_10_5_hw[:, j], orig_hw, crop, jpeg_quality,
                                 frame_size(crop)) for j in range(len(classes))]
  guesses = []
  for s, thresholds in enumerate(threshold_sets):
    pairs = [cam_official.first_two(cam_official.dt_boxes(h, thresholds), orig_hw)
             for h in heats]
    firsts, seconds = [p[0] for p in pairs], [p[1] for p in pairs]
    guesses.append({'classes': classes, 'first_boxes': [f.tolist() for f in firsts],
                    'second_boxes': [b.tolist() for b in seconds]})
    if len(gt_M4) == 0:
      continue
    out[f'first/{s}'] = cam_official.localization_errors(list(zip(classes, firsts)), label,
                                                         gt_M4)
    out[f'second/{s}'] = cam_official.localization_errors(list(zip(classes, seconds)), label,
                                                          gt_M4)
    out[f'combined/{s}'] = cam_official.localization_errors(
        cam_official.combined_guesses(classes, firsts, seconds), label, gt_M4)
  return out, guesses


def read_blacklist(path: str) -> set[int]:
  """0-based positions from a file of 1-based image numbers, one per line."""
  with open(path, encoding='utf-8') as f:
    try:
      return {int(line) - 1 for line in f if line.strip()}
    except ValueError as e:
      raise ValueError(f'{path}: expected one image number per line ({e})') from e


def model_num_classes(model: nnx.Module) -> int:
  """The number of classes of a CAM network (its CAM kernel's columns)."""
  return int(models.cam_weights(model)[0].shape[1])


def _split_counts(config: ml_collections.ConfigDict, model: nnx.Module,
                  mesh: jax.sharding.Mesh, split: str, num_examples: int | None,
                  threshold_sets: Sequence[tuple[int, int, int]], jpeg_quality: int | None,
                  batch_size: int, blacklist: set[int],
                  predictions_file: str | None) -> dict[str, int]:
  """The counts of `evaluate_official` on `split` for every threshold set (keys
  `<kind>_<k>/<set>`), summed over processes; with `predictions_file`, one JSON line per
  image (the first threshold set's boxes), written by process 0 from every process's
  part once all are done."""
  source, _ = data_lib.load_source(config.data, split)
  crop = config.data.image_size
  convention = conventions.from_config(config.data)
  graphdef, state = nnx.split(model)
  fn = make_ten_crop_fn(graphdef, mesh, min(TOP, int(model_num_classes(model))))
  batch = sharding.check_batch_size(batch_size, mesh, 'evals.<cam_official>.batch_size')
  total = len(source) if num_examples is None else min(num_examples, len(source))
  count, index = jax.process_count(), jax.process_index()
  mine = list(range(index, total, count))
  longest_share = -(-total // count)
  num_batches = -(-longest_share // batch)  # every process makes the same (collective) calls
  counts = {'num_images': 0, 'num_images_with_boxes': 0}
  counts.update({f'cls_{k}': 0 for k in range(1, TOP + 1)})
  for kind in ('first', 'second', 'combined'):
    counts.update({f'{kind}_{k}/{s}': 0 for k in range(1, TOP + 1)
                   for s in range(len(threshold_sets))})
  lines = []
  for b in range(num_batches):
    rows = mine[b * batch:(b + 1) * batch]
    examples = [source[i] for i in rows]
    images = [pipeline.decode(ex, i) for ex, i in zip(examples, rows)]
    crops = [crop_inputs(im, crop, convention) for im in images]
    blank = np.zeros((10, crop, crop, 3), np.float32)
    crops += [crops[-1] if crops else blank] * (batch - len(crops))
    arrays = sharding.shard_batch({'crops': np.stack(crops)}, mesh)
    probs, classes, cams = sharding.to_host(fn(state, arrays['crops']), mesh)
    for r, (ex, image) in enumerate(zip(examples, images)):
      gt = np.asarray(ex['boxes'], np.int64).reshape(-1, 4)
      if rows[r] in blacklist:
        gt = gt[:0]  # classification only
      errors, guesses = score_image(classes[r], cams[r], image.shape[:2], crop,
                                    int(ex['label']), gt, threshold_sets, jpeg_quality)
      counts['num_images'] += 1
      counts['num_images_with_boxes'] += int(len(gt) > 0)
      for key, values in errors.items():
        kind, _, s = key.partition('/')
        for k, v in enumerate(values, 1):
          counts[f'{kind}_{k}/{s}' if s else f'{kind}_{k}'] += int(v)
      if predictions_file:
        lines.append({'index': rows[r], 'file': pipeline.example_name(ex, rows[r]),
                      'label': int(ex['label']), 'height': int(image.shape[0]),
                      'width': int(image.shape[1]),
                      'scores': [float(probs[r][c]) for c in guesses[0]['classes']],
                      **guesses[0]})
  totals = sharding.sum_across_processes(counts)
  if predictions_file:
    sharding.write_jsonl_from_processes(predictions_file, lines)
  return totals


def evaluate_official(config: ml_collections.ConfigDict, model: nnx.Module,
                      mesh: jax.sharding.Mesh, *, split: str | None = None,
                      num_examples: int | None = None,
                      thresholds: tuple[int, int, int] = cam_official.DEFAULT_THRESHOLDS,
                      jpeg_quality: int | None = None,
                      batch_size: int = 16,
                      blacklist_file: str | None = None,
                      select_split: str | None = None,
                      threshold_choices: Sequence[tuple[int, int, int]] = (),
                      predictions_file: str | None = None) -> dict[str, Any]:
  """The released protocol's numbers on `split` (default `config.data.eval_split`):
  `cls_top{1,5}_error` (ten crops), `loc_top{1..5}_error` (first box, Table 2),
  `loc_top{1..5}_error_second_box`, `loc_top{1..5}_error_heuristic` (Table 3), fractions;
  `num_images`, `num_images_with_boxes`. Summed over processes exactly.

  `batch_size`: images per device pass (global; ten crops each). `blacklist_file`: images
  (1-based positions in the split) left out of localization, as simpleEvaluation.m does.
  `select_split` with `threshold_choices` (dt_box threshold triples): the triple with the
  lowest top-1 localization error on that split (which must not be the reported one) is
  used, and named (`selected_thresholds`, `selected_on`); otherwise `thresholds`, the
  released 20, 100, 110. `predictions_file`: one JSON line per image (classes, scores,
  first and second boxes as corners), for scoring offline.
  """
  if models.cam_weights(model) is None:
    raise ValueError(f'{type(model).__name__} has a fully connected classifier: the '
                     'cam_official protocol needs CAMs')
  split = split or config.data.eval_split
  blacklist = read_blacklist(blacklist_file) if blacklist_file else set()
  chosen = tuple(int(t) for t in thresholds)
  results: dict[str, Any] = {'protocol': 'cam_official', 'split': split}
  if select_split:
    if select_split == split:
      raise ValueError(f'select_split={select_split!r} is the reported split: choose the '
                       'thresholds on another one')
    choices = [tuple(int(t) for t in c) for c in (threshold_choices or (thresholds,))]
    sel = _split_counts(config, model, mesh, select_split, num_examples, choices,
                        jpeg_quality, batch_size, set(), None)
    errors = [sel[f'first_1/{s}'] for s in range(len(choices))]
    chosen = choices[int(np.argmin(errors))]  # the first of equals: the order given
    results.update(selected_thresholds=list(chosen), selected_on=select_split,
                   threshold_choices=[list(c) for c in choices])
  counts = _split_counts(config, model, mesh, split, num_examples, [chosen], jpeg_quality,
                         batch_size, blacklist, predictions_file)
  n, nb = counts['num_images'], counts['num_images_with_boxes']
  results.update({'num_images': n, 'num_images_with_boxes': nb, 'thresholds': list(chosen),
                  'jpeg_quality': jpeg_quality, 'num_blacklisted': len(blacklist)})
  for k in range(1, TOP + 1):
    results[f'cls_top{k}_error'] = counts[f'cls_{k}'] / max(n, 1)
    if nb:
      results[f'loc_top{k}_error'] = counts[f'first_{k}/0'] / nb
      results[f'loc_top{k}_error_second_box'] = counts[f'second_{k}/0'] / nb
      results[f'loc_top{k}_error_heuristic'] = counts[f'combined_{k}/0'] / nb
  return results

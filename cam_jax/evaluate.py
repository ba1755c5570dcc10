"""Classification and localization metrics over a dataset split.

Device side (one jitted pass per batch, `make_predict_fn`): logits, the top-k classes and
the maps of the top-1 class (for pictures) and of the label, at the maps' own resolution
(a CAM's h×w feature grid); the label's map is the one every box metric scores. Host
side (`cam_jax.box_stage`, on every host core, while the device runs the next batch):
the boxes, on the original image through the eval window's inverse, and the counts. The
centre baseline and classification are counted here.

Metrics (fractions in [0, 1]):
- `cls_top{1,5}_error`: the label is not among the top 1 / 5 classes;
  `per_class_cls_top1_accuracy`: top-1 accuracy of each class's images (a list; None for
  a class the split does not have), `per_class_num_images` their counts.
- `loc_top{1,5}_error`: the paper's protocol: an image is correct at top-k if one of its
  top k classes is the label and that class's box (its map resized to the original
  image, `>= cam_threshold * max`, largest component) has IoU >= `iou_threshold` with
  some ground-truth box. `loc_top5_error_heuristic`: the same with the paper's five-box
  test heuristic (tight and loose boxes, `eval.heuristic_thresholds`).
- `gt_known_loc_accuracy`: the box of the ground-truth class's map has IoU >= threshold.
- `center_baseline_loc_accuracy`: a box of the split's mean ground-truth size (relative
  to the image), centred in the image, has IoU >= threshold; class-agnostic.
- `max_box_acc`, `max_box_acc_v2` (Choe et al., CVPR 2020; `cam_jax.metrics`): the
  ground-truth class's map on the network's input grid, min-max normalised, thresholded
  at every τ of a grid (step `eval.box_threshold_step`); MaxBoxAcc scores the largest
  component's box at IoU 0.5, MaxBoxAccV2 the best of every component's box at IoU 0.3,
  0.5 and 0.7, each at its own best τ. Boxes come from `box_sweep` (one pass per map,
  identical to labelling at each τ) and are scored in the original image.
- Per class (lists over the classes; None for a class without images with boxes):
  `per_class_loc_top1_accuracy`, `per_class_gt_known_loc_accuracy`,
  `per_class_num_images_with_boxes`.
- `pxap` (datasets with masks): average precision of the normalised map's pixels against
  the foreground mask on the network's input grid, ignore pixels left out.

With `predictions_file` (`evaluators.evaluate_and_report` passes `eval.predictions_file`
for the main evaluation only), one JSON line per image goes there (`box_stage.image_record`:
index in the split, label, size, top-k classes with their probabilities, each top-k
class's box and the label's box on the original image, the image's hits), for re-scoring
or inspection offline.

The maps are CAMs by default; `eval.saliency` picks backprop saliency or Grad-CAM
instead (`cam_jax.saliency`), through the same box stage, for any network.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from scipy import special

from cam_jax import box_stage
from cam_jax import boxes as boxes_lib
from cam_jax import cam as cam_lib
from cam_jax import data as data_lib
from cam_jax import models
from cam_jax import saliency as saliency_lib
from cam_jax import sharding
from cam_jax import viz
from cam_jax import windows
from cam_jax.data import conventions
from cam_jax.data import pipeline


def make_predict_fn(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, *, top_k: int,
                    saliency: str | None = 'cam', map_hw: tuple[int, int] | None = None,
                    map_top: int | None = None) -> Callable:
  """`predict(state, images_BHWC, labels_B) -> dict`, jitted over the mesh.

  The dict holds `logits_BC`, `classes_Bk` (top k, best first) and, unless `saliency` is
  None (classification only), `maps_BThw` for T = m + 1 classes: the top m (`map_top`,
  default k), then the label (for GT-known localization): CAMs, or the maps of
  `saliency` ('backprop', 'gradcam'), at `map_hw` (default: their own resolution;
  bilinear). A class's map does not depend on its rank, so scoring needs only the
  label's: evaluation asks for m = 1 (the top-1 map, for pictures), which spares the
  saliency baselines k - 1 backward passes.
  """
  maps_method = saliency_lib.get_saliency(saliency) if saliency else None
  map_top = top_k if map_top is None else min(map_top, top_k)

  def predict(state, images_BHWC, labels_B):
    model = nnx.merge(graphdef, state)
    if maps_method is None:
      logits_BC, _ = model(images_BHWC, train=False)
    else:
      logits_BC, maps_fn = maps_method(model, images_BHWC, map_hw)
    classes_Bk = cam_lib.top_k_classes(logits_BC, top_k)
    out = {'logits_BC': logits_BC.astype(jnp.float32), 'classes_Bk': classes_Bk}
    if maps_method is not None:
      class_ids_BT = jnp.concatenate(
          [classes_Bk[:, :map_top], labels_B[:, None].astype(jnp.int32)], 1)
      out['maps_BThw'] = maps_fn(class_ids_BT).astype(jnp.float32)
    return out

  batch = sharding.batch_sharding(mesh)
  return jax.jit(predict, in_shardings=(sharding.replicated(mesh), batch, batch),
                 out_shardings=batch)


def evaluate(config: ml_collections.ConfigDict, model: nnx.Module, mesh: jax.sharding.Mesh,
             *, localization: bool = True, num_examples: int | None = None,
             num_pictures: int = 0, split: str | None = None,
             predictions_file: str | None = None) -> dict[str, Any]:
  """Metrics of `model` on `split` (default `config.data.eval_split`; see the module
  docstring). The result names the split.

  With `num_pictures`, the result holds under `'pictures'` that many figures (uint8
  arrays) of the first images: the image, the map of the predicted class as an overlay,
  ground truth boxes in green and the predicted box in red.
  """
  ev = config.eval
  split = split or config.data.eval_split
  source, info = data_lib.load_source(config.data, split)
  names = list(info.class_names)
  top_k = min(ev.top_k, info.num_classes)
  size = config.data.image_size
  method = ev.get('saliency', 'cam')
  if localization and method == 'cam' and models.cam_weights(model) is None:
    logging.warning("%s has a fully connected classifier: CAM does not apply, so only "
                    "classification is evaluated (eval.saliency='gradcam' or 'backprop' "
                    "localize with it).", type(model).__name__)
    localization = False
  graphdef, state = nnx.split(model)
  records = localization and bool(predictions_file)
  # The records hold every top-k class's box, so they need every top-k class's map.
  predict = make_predict_fn(graphdef, mesh, top_k=top_k,
                            saliency=method if localization else None,
                            map_top=top_k if records else 1)
  with_masks = localization and info.has_masks
  params = box_stage.BoxParams.from_config(ev, size, with_masks,
                                           num_classes=info.num_classes, records=records)
  stage = box_stage.BoxStage(params, ev.get('box_workers', -1)) if localization else None
  process_batch = sharding.check_batch_size(ev.batch_size, mesh, 'eval.batch_size')
  # What the box stage reads of a batch, besides the device's outputs.
  keys = ['label', 'boxes', 'num_boxes', 'window', 'orig_hw'] + (
      ['mask', 'ignore'] if with_masks else [])

  # Integers only (relative sizes in fixed point), so that the sums over processes are
  # exact and do not depend on how the images were split.
  counts = dict.fromkeys(['num_images', 'num_with_boxes', 'cls_top1', 'cls_top5', 'rel_h',
                          'rel_w', 'num_gt'], 0)
  # Per class: images, and top-1 hits (eval.json's per-class accuracy).
  class_images = np.zeros(info.num_classes, np.int64)
  class_hits = np.zeros(info.num_classes, np.int64)
  gt = []  # (orig_hw, boxes) per image, for the centre baseline once the mean size is known
  pictures = []
  settings = pipeline.eval_settings(config.data)
  convention = settings['convention']  # the pictures' denormalisation too
  batches = pipeline.eval_batches(source, process_batch_size=process_batch,
                                  num_examples=num_examples, with_masks=with_masks, **settings)
  try:
    for batch, n in batches:
      arrays = sharding.shard_batch({'image': batch['image'], 'label': batch['label']}, mesh)
      out = sharding.to_host(predict(state, arrays['image'], arrays['label']), mesh)
      labels_B = batch['label'][:n]
      hit_Bk = out['classes_Bk'][:n] == labels_B[:, None]
      counts['num_images'] += n
      counts['cls_top1'] += int(hit_Bk[:, 0].sum())
      counts['cls_top5'] += int(hit_Bk.any(1).sum())
      np.add.at(class_images, labels_B, 1)
      np.add.at(class_hits, labels_B, hit_Bk[:, 0].astype(np.int64))
      if not localization:
        continue
      # The host's share: boxes and counts in worker processes, while the loop goes on
      # to the next batch.
      chunk = {'classes_Bk': out['classes_Bk'][:n], 'maps_BThw': out['maps_BThw'][:n],
               **{k: batch[k][:n] for k in keys}}
      if records:
        probs_BC = special.softmax(out['logits_BC'][:n].astype(np.float64), axis=-1)
        chunk.update(index=batch['index'][:n],
                     scores_Bk=np.take_along_axis(probs_BC, out['classes_Bk'][:n], 1))
      stage.submit(chunk)
      for i in range(n):
        orig_hw = tuple(int(v) for v in batch['orig_hw'][i])
        gt_M4 = batch['boxes'][i, :batch['num_boxes'][i]]
        if len(gt_M4):
          gt.append((orig_hw, gt_M4))
          counts['num_with_boxes'] += 1
          counts['rel_h'] += box_stage.to_fixed((gt_M4[:, 3] - gt_M4[:, 1] + 1) / orig_hw[0])
          counts['rel_w'] += box_stage.to_fixed((gt_M4[:, 2] - gt_M4[:, 0] + 1) / orig_hw[1])
          counts['num_gt'] += len(gt_M4)
        if len(pictures) < num_pictures and jax.process_index() == 0:
          pictures.append(_picture(batch, i, out, names, params, convention))
    loc_state = stage.finish() if localization else {}
  finally:
    # The input pipeline's threads and workers stop, and queued chunks are dropped,
    # however the loop ends.
    batches.close()
    if stage is not None:
      stage.cancel()

  image_records = loc_state.pop('records', [])
  # One exchange for every counter (the box stage's are named `<part>/<name>`).
  totals = sharding.sum_across_processes({**counts, **loc_state, 'class_images': class_images,
                                          'class_hits': class_hits})
  counts = {k: totals[k] for k in counts}
  class_images = [int(v) for v in totals['class_images']]
  class_hits = [int(v) for v in totals['class_hits']]
  loc_state = {k: totals[k] for k in loc_state}
  n = counts['num_images']
  if n == 0:
    raise ValueError(f'split {split!r} of {config.data.name!r} is empty')
  results: dict[str, Any] = {
      'num_images': n,
      'split': split,
      # (n - hits) / n, not 1 - hits / n: 7 errors in 1000 images read 0.007 exactly.
      'cls_top1_error': (n - counts['cls_top1']) / n,
      'cls_top5_error': (n - counts['cls_top5']) / n,
      # Top-1 accuracy of each class's images (None for a class with none in the split).
      'per_class_cls_top1_accuracy': [h / m if m else None
                                      for h, m in zip(class_hits, class_images)],
      'per_class_num_images': class_images,
  }
  if localization:
    loc = box_stage.Scores(params).result(loc_state)
    # PxAP even where there are no boxes.
    results.update({k: v for k, v in loc.items() if not k.startswith('paper/')})
    results['saliency'] = method
    # Top-1 and GT-known localization accuracy of each class's images with boxes (None
    # for a class with none).
    boxed_C = loc_state['class/num_images_with_boxes']
    for key, name in (('loc_top1', 'per_class_loc_top1_accuracy'),
                      ('gt_known', 'per_class_gt_known_loc_accuracy')):
      results[name] = [int(h) / int(m) if m else None
                       for h, m in zip(loc_state[f'class/{key}'], boxed_C)]
    results['per_class_num_images_with_boxes'] = [int(m) for m in boxed_C]
    if records:
      sharding.write_jsonl_from_processes(predictions_file, image_records)
      results['predictions_file'] = predictions_file
  n_boxed = counts['num_with_boxes']
  if localization and n_boxed == 0:
    # OpenImages in the WSOL layout has masks, not boxes; a train split may have neither.
    logging.warning('split %r of %r has no ground-truth boxes: box localization is not '
                    'scored', split, config.data.name)
    localization = False
  if localization:
    # Box metrics count the images that have ground-truth boxes (58 % of ILSVRC train
    # have none); the others are reported apart.
    results['num_images_without_boxes'] = n - n_boxed
    mean_hw = (box_stage.from_fixed(counts['rel_h']) / counts['num_gt'],
               box_stage.from_fixed(counts['rel_w']) / counts['num_gt'])
    center_hits = sum(
        int(boxes_lib.max_iou(boxes_lib.center_box(hw, (mean_hw[0] * hw[0],
                                                        mean_hw[1] * hw[1])), gt_M4)
            >= ev.iou_threshold) for hw, gt_M4 in gt)
    center_hits = sharding.sum_across_processes({'c': center_hits})['c']
    results.update({
        'num_images_with_boxes': n_boxed,
        'loc_top1_error': (n_boxed - loc['paper/loc_top1']) / n_boxed,
        'loc_top5_error': (n_boxed - loc['paper/loc_topk']) / n_boxed,
        'loc_top5_error_heuristic': (n_boxed - loc['paper/loc_heuristic']) / n_boxed,
        'gt_known_loc_accuracy': loc['paper/gt_known'] / n_boxed,
        'gt_known_mean_iou': loc['paper/gt_known_iou'] / n_boxed,
        'center_baseline_loc_accuracy': center_hits / n_boxed,
        'top_k': top_k,
        'cam_threshold': ev.cam_threshold,
        'iou_threshold': ev.iou_threshold,
    })
    results['pictures'] = pictures
  return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in results.items()}


def _picture(batch: dict[str, np.ndarray], i: int, out: dict[str, np.ndarray],
             names: list[str], params: box_stage.BoxParams,
             convention: conventions.InputConvention) -> np.ndarray:
  """Image | map of the predicted class; GT boxes green, predicted box red (input grid)."""
  size = params.input_size
  image = pipeline.denormalize(batch['image'][i], convention)
  window_4 = batch['window'][i]
  orig_hw = tuple(int(v) for v in batch['orig_hw'][i])
  to_input = lambda b: windows.boxes_to_input(b, window_4, size)
  gt_M4 = to_input(batch['boxes'][i, :batch['num_boxes'][i]])
  map_hw = out['maps_BThw'][i, 0]
  # The box as scored: on the original image, then drawn on the input.
  box_4 = box_stage.paper_boxes_on_original(map_hw, window_4, orig_hw,
                                            (params.cam_threshold,))
  pred = int(out['classes_Bk'][i, 0])
  label = int(batch['label'][i])
  prob = special.softmax(out['logits_BC'][i].astype(np.float64))[pred]
  title = f'#{int(batch["index"][i])} {names[label]} -> {names[pred]} {prob:.2f}'
  return viz.cam_figure(image, box_stage.on_input_grid(map_hw, size), gt_M4,
                        to_input(box_4)[0], factor=max(1, 256 // size), title=title)


_ROWS = [('cls_top1_error', 'classification top-1 error'),
         ('cls_top5_error', 'classification top-5 error'),
         ('loc_top1_error', 'localization top-1 error'),
         ('loc_top5_error', 'localization top-5 error'),
         ('loc_top5_error_heuristic', 'localization top-5 error, test heuristic (5 boxes)'),
         ('gt_known_loc_accuracy', 'GT-known localization accuracy'),
         ('center_baseline_loc_accuracy', 'centre-box baseline accuracy'),
         ('gt_known_mean_iou', 'GT-known mean IoU'),
         ('max_box_acc', 'MaxBoxAcc (IoU 0.5)'),
         ('max_box_acc_v2', 'MaxBoxAccV2 (IoU 0.3, 0.5, 0.7)'),
         ('pxap', 'PxAP')]


# The paper's ILSVRC-2012 validation numbers (its Tables 1 and 2), as fractions:
# classification top-1/top-5 error, then localization top-1/top-5 error (CAM boxes; the
# "Backprop" rows are the saliency baseline through the same box stage).
PAPER_ROWS: dict[str, dict[str, float]] = {
    'GoogLeNet-GAP': dict(cls=(0.350, 0.132), loc=(0.5640, 0.4300)),
    'VGGnet-GAP': dict(cls=(0.334, 0.122), loc=(0.5720, 0.4514)),
    'AlexNet*-GAP': dict(cls=(0.449, 0.209), loc=(0.6375, 0.4953)),
    'AlexNet-GAP': dict(cls=(0.511, 0.263), loc=(0.6719, 0.5216)),
    'GoogLeNet-GMP': dict(cls=(0.356, 0.139), loc=(0.5778, 0.4526)),
    'NIN': dict(cls=(0.419, 0.196), loc=(0.6547, 0.5419)),
    'GoogLeNet': dict(cls=(0.319, 0.113), loc=(0.6009, 0.4934)),
    'VGGnet': dict(cls=(0.312, 0.114)),
    'AlexNet': dict(cls=(0.426, 0.195)),
    'Backprop on GoogLeNet': dict(loc=(0.6131, 0.5055)),
    'Backprop on VGGnet': dict(loc=(0.6112, 0.5146)),
    'Backprop on AlexNet': dict(loc=(0.6517, 0.5264)),
}


# The paper's Table 3: top-5 localization error on the ILSVRC *test* set (the released
# protocol; "heuristics" is its five-box combination). Printed as a note beside
# cam_official's validation numbers, never as their column.
PAPER_TABLE3: dict[str, dict[str, float]] = {
    'GoogLeNet-GAP': {'loc_top5_error_heuristic': 0.371, 'loc_top5_error': 0.429},
    'Backprop on GoogLeNet': {'loc_top5_error': 0.464},
}


# Choe et al. (CVPR 2020), Table 2: MaxBoxAccV2 of CAM (as fractions), printed beside the
# wsolevaluation evaluator's number when it names a row (`choe_row`).
CHOE_ROWS: dict[str, dict[str, float]] = {
    'ImageNet VGG': {'max_box_acc_v2': 0.600}, 'ImageNet Inception': {'max_box_acc_v2': 0.634},
    'ImageNet ResNet50': {'max_box_acc_v2': 0.637}, 'CUB VGG': {'max_box_acc_v2': 0.637},
    'CUB Inception': {'max_box_acc_v2': 0.567}, 'CUB ResNet50': {'max_box_acc_v2': 0.630},
}


def paper_numbers(row: str | None) -> dict[str, float]:
  """`{metric key: value}` of a paper row; raises listing the rows if unknown."""
  if not row:
    return {}
  if row not in PAPER_ROWS:
    raise ValueError(f'config.eval.paper_row={row!r}; known rows: {", ".join(PAPER_ROWS)}')
  numbers = {}
  for kind, keys in (('cls', ('cls_top1_error', 'cls_top5_error')),
                     ('loc', ('loc_top1_error', 'loc_top5_error'))):
    numbers.update(zip(keys, PAPER_ROWS[row].get(kind, ())))
  return numbers


# What a saliency baseline adds to eval.json, as `<method>/<key>`: its localization.
BASELINE_KEYS = ('loc_top1_error', 'loc_top5_error', 'gt_known_loc_accuracy', 'max_box_acc',
                 'max_box_acc_v2', 'pxap')


def format_table(results: dict[str, Any], paper_row: str | None = None) -> str:
  """A small Markdown table of the metrics, in percent; with `paper_row`, the paper's
  number beside ours where it reports one."""
  paper = paper_numbers(paper_row)
  head = f'| metric ({results["num_images"]} images) | % |'
  if paper:
    head += f' paper ({paper_row}) |'
  lines = [head, '|---|---:|' + ('---:|' if paper else '')]
  # The saliency baselines' rows; evaluators' numbers (`NAME/metric`) get tables of their own.
  methods = sorted({k.split('/')[0] for k in results
                    if '/' in k and k.split('/')[0] in saliency_lib.SALIENCY})
  rows = list(_ROWS) + [(f'{m}/{key}', f'{m}: {label}') for m in methods
                        for key, label in _ROWS if key in BASELINE_KEYS]
  for key, label in rows:
    if key in results:
      line = f'| {label} | {100 * results[key]:.2f} |'
      if paper:
        line += f' {100 * paper[key]:.2f} |' if key in paper else ' |'
      lines.append(line)
  return '\n'.join(lines)


def format_protocol_table(numbers: dict[str, Any], paper_row: str | None = None) -> str:
  """An evaluator's numbers in percent; for `cam_official`, the paper's row beside them
  (Table 2: classification and localization top-1/top-5 error)."""
  paper, source = {}, ''
  if numbers.get('protocol') == 'cam_official':
    paper, source = paper_numbers(paper_row), f'paper ({paper_row})'
  elif numbers.get('protocol') == 'wsolevaluation' and numbers.get('choe_row'):
    row = numbers['choe_row']
    if row not in CHOE_ROWS:
      raise ValueError(f'choe_row={row!r}; known rows: {", ".join(CHOE_ROWS)}')
    paper, source = CHOE_ROWS[row], f'Choe et al. ({row})'
  head = f'| metric ({numbers.get("num_images")} images) | % |' + (
      f' {source} |' if paper else '')
  lines = [head, '|---|---:|' + ('---:|' if paper else '')]
  for key, value in numbers.items():
    if not isinstance(value, float) or key in ('cam_curve_interval',):
      continue
    # Thresholds are values, not rates (`*_at_selected_tau` is a rate at a threshold).
    is_tau = key.endswith('_tau') and not key.endswith('_at_selected_tau')
    shown = f'τ = {value:.3f}' if is_tau else f'{100 * value:.2f}'
    line = f'| {key} | {shown} |'
    if paper:
      line += f' {100 * paper[key]:.2f} |' if key in paper else ' |'
    lines.append(line)
  table3 = PAPER_TABLE3.get(paper_row or '') if numbers.get('protocol') == 'cam_official' else None
  if table3:
    lines.append('Paper, Table 3 (ILSVRC test set, not comparable with a validation split): ' +
                 ', '.join(f'{k} {100 * v:.1f}' for k, v in table3.items()))
  return '\n'.join(lines)


def format_brief(results: dict[str, Any]) -> str:
  return '  '.join(f'{k} {100 * results[k]:.2f}%' for k, _ in _ROWS if k in results)

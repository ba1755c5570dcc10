"""Classification and localization metrics over a dataset split (DESIGN.md §5).

Device side (one jitted pass per batch): logits, the top-k classes and the CAMs of those
classes and of the ground-truth class at the network's input size. Host side: the paper
box of each CAM, mapped back to the original image's pixel grid, and IoU with every
ground-truth box there.

Metrics (fractions in [0, 1]):
- `cls_top{1,5}_error`: the label is not among the top 1 / 5 classes.
- `loc_top{1,5}_error`: the paper's protocol: an image is correct at top-k if one of its
  top k classes is the label and that class's box has IoU >= `iou_threshold` with some
  ground-truth box.
- `gt_known_loc_accuracy`: the box of the ground-truth class's CAM has IoU >= threshold.
- `center_baseline_loc_accuracy`: a box of the split's mean ground-truth size (relative
  to the image), centred in the image, has IoU >= threshold; class-agnostic.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from cam_jax import boxes as boxes_lib
from cam_jax import cam as cam_lib
from cam_jax import data as data_lib
from cam_jax import io_utils
from cam_jax import models
from cam_jax import sharding
from cam_jax import viz
from cam_jax.data import pipeline


def make_predict_fn(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, *, top_k: int,
                    cam_hw: tuple[int, int] | None) -> Callable:
  """`predict(state, images_BHWC, labels_B) -> dict`, jitted over the mesh.

  The dict holds `logits_BC`, `classes_Bk` (top k, best first) and, with `cam_hw`,
  `cams_BThw` for T = k + 1 classes: the top k, then the label (for GT-known localization).
  """

  def predict(state, images_BHWC, labels_B):
    model = nnx.merge(graphdef, state)
    logits_BC, aux = model(images_BHWC, train=False)
    classes_Bk = cam_lib.top_k_classes(logits_BC, top_k)
    out = {'logits_BC': logits_BC.astype(jnp.float32), 'classes_Bk': classes_Bk}
    if cam_hw is not None:
      class_ids_BT = jnp.concatenate([classes_Bk, labels_B[:, None].astype(jnp.int32)], 1)
      kernel_KC, _ = models.cam_weights(model)
      out['cams_BThw'] = cam_lib.class_activation_maps(aux['features'], kernel_KC,
                                                       class_ids_BT, cam_hw)
    return out

  batch = sharding.batch_sharding(mesh)
  return jax.jit(predict, in_shardings=(sharding.replicated(mesh), batch, batch),
                 out_shardings=batch)


def score_localization(classes_k: np.ndarray, label: int, cams_Thw: np.ndarray,
                       gt_M4: np.ndarray, orig_hw: tuple[int, int], *, cam_threshold: float,
                       iou_threshold: float,
                       window_4: np.ndarray | None = None
                       ) -> tuple[bool, bool, bool, float, np.ndarray]:
  """The paper's protocol for one image.

  `cams_Thw` holds the CAMs of the top k classes `classes_k` (best first) and, last, of
  the label, on the network's square input grid, which shows `window_4` of the original
  image (default: all of it). Each is turned into a paper box, mapped to the original
  `orig_hw` grid, and compared with the ground-truth boxes `gt_M4` there (boxes
  `(x0, y0, x1, y1)`, inclusive corners).

  Returns `(top1_correct, topk_correct, gt_known_correct, gt_known_iou, boxes_T4)`.
  """
  size = cams_Thw.shape[-1]
  if window_4 is None:
    window_4 = pipeline.whole_window(orig_hw)
  boxes_T4 = pipeline.boxes_to_original(boxes_lib.paper_boxes(cams_Thw, cam_threshold),
                                        window_4, size, orig_hw)
  ious_T = boxes_lib.iou(boxes_T4, gt_M4).max(1) if len(gt_M4) else np.zeros(len(boxes_T4))
  good_k = (np.asarray(classes_k) == label) & (ious_T[:-1] >= iou_threshold)
  return (bool(good_k[0]), bool(good_k.any()), bool(ious_T[-1] >= iou_threshold),
          float(ious_T[-1]), boxes_T4)


def evaluate(config: ml_collections.ConfigDict, model: nnx.Module, mesh: jax.sharding.Mesh,
             *, localization: bool = True, num_examples: int | None = None,
             num_pictures: int = 0) -> dict[str, Any]:
  """Metrics of `model` on `config.data.eval_split` (see the module docstring).

  With `num_pictures`, the result holds under `'pictures'` that many figures (uint8
  arrays) of the first images: the image, the CAM of the predicted class as an overlay,
  ground truth boxes in green and the predicted box in red.
  """
  ev = config.eval
  source, info = data_lib.load_source(config.data, config.data.eval_split)
  names = list(info.class_names)
  num_classes = info.num_classes
  top_k = min(ev.top_k, num_classes)
  size = config.data.image_size
  if localization and models.cam_weights(model) is None:
    logging.warning('%s has a fully connected classifier: CAM does not apply, so only '
                    'classification is evaluated.', type(model).__name__)
    localization = False
  graphdef, state = nnx.split(model)
  predict = make_predict_fn(graphdef, mesh, top_k=top_k,
                            cam_hw=(size, size) if localization else None)
  process_batch = sharding.check_batch_size(ev.batch_size, mesh, 'eval.batch_size')

  counts = dict.fromkeys(['num_images', 'cls_top1', 'cls_top5', 'loc_top1', 'loc_top5',
                          'gt_known', 'gt_known_iou', 'rel_h', 'rel_w', 'num_gt'], 0.0)
  gt = []  # (orig_hw, boxes) per image, for the centre baseline once the mean size is known
  pictures = []
  for batch, n in pipeline.eval_batches(source, image_size=size, process_batch_size=process_batch,
                                        max_boxes=config.data.max_boxes,
                                        num_examples=num_examples,
                                        crop=config.data.eval_crop,
                                        resize_shorter=config.data.eval_resize_shorter,
                                        num_threads=config.data.num_threads,
                                        num_workers=config.data.num_workers):
    arrays = sharding.shard_batch({'image': batch['image'], 'label': batch['label']}, mesh)
    out = sharding.to_host(predict(state, arrays['image'], arrays['label']), mesh)
    labels_B = batch['label'][:n]
    classes_Bk = out['classes_Bk'][:n]
    hit_Bk = classes_Bk == labels_B[:, None]
    counts['num_images'] += n
    counts['cls_top1'] += hit_Bk[:, 0].sum()
    counts['cls_top5'] += hit_Bk.any(1).sum()
    if not localization:
      continue
    for i in range(n):
      orig_hw = tuple(int(v) for v in batch['orig_hw'][i])
      gt_M4 = batch['boxes'][i, :batch['num_boxes'][i]]
      gt.append((orig_hw, gt_M4))
      counts['rel_h'] += ((gt_M4[:, 3] - gt_M4[:, 1] + 1) / orig_hw[0]).sum()
      counts['rel_w'] += ((gt_M4[:, 2] - gt_M4[:, 0] + 1) / orig_hw[1]).sum()
      counts['num_gt'] += len(gt_M4)
      top1, topk, gt_known, gt_iou, boxes_T4 = score_localization(
          classes_Bk[i], labels_B[i], out['cams_BThw'][i], gt_M4, orig_hw,
          cam_threshold=ev.cam_threshold, iou_threshold=ev.iou_threshold,
          window_4=batch['window'][i])
      counts['loc_top1'] += top1
      counts['loc_top5'] += topk
      counts['gt_known'] += gt_known
      counts['gt_known_iou'] += gt_iou
      if len(pictures) < num_pictures and jax.process_index() == 0:
        pictures.append(_picture(batch, i, out, boxes_T4, names, size))

  counts = sharding.sum_across_processes(counts)
  n = counts['num_images']
  if n == 0:
    raise ValueError(f'split {config.data.eval_split!r} of {config.data.name!r} is empty')
  results: dict[str, Any] = {
      'num_images': int(n),
      # (n - hits) / n, not 1 - hits / n: 7 errors in 1000 images read 0.007 exactly.
      'cls_top1_error': (n - counts['cls_top1']) / n,
      'cls_top5_error': (n - counts['cls_top5']) / n,
  }
  if localization and counts['num_gt'] == 0:
    # OpenImages in the WSOL layout has masks, not boxes; a train split may have neither.
    logging.warning('split %r of %r has no ground-truth boxes: box localization is not '
                    'scored', config.data.eval_split, config.data.name)
    localization = False
  if localization:
    mean_hw = (counts['rel_h'] / counts['num_gt'], counts['rel_w'] / counts['num_gt'])
    center_hits = sum(
        boxes_lib.max_iou(boxes_lib.center_box(hw, (mean_hw[0] * hw[0], mean_hw[1] * hw[1])),
                          gt_M4) >= ev.iou_threshold for hw, gt_M4 in gt)
    center_hits = sharding.sum_across_processes({'c': float(center_hits)})['c']
    results.update({
        'loc_top1_error': (n - counts['loc_top1']) / n,
        'loc_top5_error': (n - counts['loc_top5']) / n,
        'gt_known_loc_accuracy': counts['gt_known'] / n,
        'gt_known_mean_iou': counts['gt_known_iou'] / n,
        'center_baseline_loc_accuracy': center_hits / n,
        'top_k': top_k,
        'cam_threshold': ev.cam_threshold,
        'iou_threshold': ev.iou_threshold,
    })
    results['pictures'] = pictures
  return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in results.items()}


def _picture(batch: dict[str, np.ndarray], i: int, out: dict[str, np.ndarray],
             boxes_T4: np.ndarray, names: list[str], size: int) -> np.ndarray:
  """Image | CAM of the predicted class; GT boxes green, predicted box red (input grid)."""
  image = pipeline.denormalize(batch['image'][i])
  to_input = lambda b: pipeline.boxes_to_input(b, batch['window'][i], size)
  gt_M4 = to_input(batch['boxes'][i, :batch['num_boxes'][i]])
  pred = int(out['classes_Bk'][i, 0])
  label = int(batch['label'][i])
  logits_C = out['logits_BC'][i].astype(np.float64)
  prob = 1.0 / np.exp(logits_C - logits_C[pred]).sum()  # softmax of the predicted class
  title = f'#{int(batch["index"][i])} {names[label]} -> {names[pred]} {prob:.2f}'
  return viz.cam_figure(image, out['cams_BThw'][i, 0], gt_M4, to_input(boxes_T4[:1])[0],
                        factor=max(1, 256 // size), title=title)


_ROWS = [('cls_top1_error', 'classification top-1 error'),
         ('cls_top5_error', 'classification top-5 error'),
         ('loc_top1_error', 'localization top-1 error'),
         ('loc_top5_error', 'localization top-5 error'),
         ('gt_known_loc_accuracy', 'GT-known localization accuracy'),
         ('center_baseline_loc_accuracy', 'centre-box baseline accuracy'),
         ('gt_known_mean_iou', 'GT-known mean IoU')]


def format_table(results: dict[str, Any]) -> str:
  """A small Markdown table of the metrics, in percent."""
  lines = [f'| metric ({results["num_images"]} images) | % |', '|---|---:|']
  lines += [f'| {label} | {100 * results[key]:.2f} |' for key, label in _ROWS if key in results]
  return '\n'.join(lines)


def format_brief(results: dict[str, Any]) -> str:
  return '  '.join(f'{k} {100 * results[k]:.2f}%' for k, _ in _ROWS if k in results)


def evaluate_and_report(config: ml_collections.ConfigDict, model: nnx.Module,
                        mesh: jax.sharding.Mesh, workdir: str, *, step: int) -> dict[str, Any]:
  """Full evaluation: eval.json, the printed table and the CAM pictures in workdir/cams/."""
  results = evaluate(config, model, mesh, localization=True,
                     num_examples=config.eval.get('num_examples'),
                     num_pictures=config.eval.num_pictures)
  pictures = results.pop('pictures', [])
  results['step'] = step
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(workdir, 'eval.json'), results)
    for j, picture in enumerate(pictures):
      viz.save_png(os.path.join(workdir, 'cams', f'{j:02d}.png'), picture)
    table = format_table(results)
    print(f'\nEvaluation of {config.model.name} on {config.data.name}/'
          f'{config.data.eval_split} at step {step}:\n{table}\n', flush=True)
    logging.info('Wrote %s and %d pictures in %s', os.path.join(workdir, 'eval.json'),
                 len(pictures), os.path.join(workdir, 'cams'))
  return results

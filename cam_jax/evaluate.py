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
- `max_box_acc`, `max_box_acc_v2` (Choe et al., CVPR 2020; `cam_jax.metrics`): the
  ground-truth class's map, min-max normalised, thresholded at every τ of a grid (step
  `eval.box_threshold_step`); MaxBoxAcc scores the largest component's box at IoU 0.5,
  MaxBoxAccV2 the best of every component's box at IoU 0.3, 0.5 and 0.7, each at its own
  best τ. Boxes come from `box_sweep` (one pass per map, identical to labelling at each τ).
- `pxap` (datasets with masks): average precision of the normalised map's pixels against
  the foreground mask on the network's input grid, ignore pixels left out.

The maps are CAMs by default; `eval.saliency` picks backprop saliency or Grad-CAM
instead (`cam_jax.saliency`), through the same box stage, for any network.
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

from cam_jax import box_sweep
from cam_jax import boxes as boxes_lib
from cam_jax import cam as cam_lib
from cam_jax import data as data_lib
from cam_jax import io_utils
from cam_jax import metrics as metrics_lib
from cam_jax import models
from cam_jax import saliency as saliency_lib
from cam_jax import sharding
from cam_jax import viz
from cam_jax.data import pipeline


def make_predict_fn(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, *, top_k: int,
                    cam_hw: tuple[int, int] | None, saliency: str = 'cam') -> Callable:
  """`predict(state, images_BHWC, labels_B) -> dict`, jitted over the mesh.

  The dict holds `logits_BC`, `classes_Bk` (top k, best first) and, with `cam_hw`,
  `cams_BThw` for T = k + 1 classes: the top k, then the label (for GT-known
  localization): CAMs, or the maps of `saliency` ('backprop', 'gradcam').
  """
  maps_method = saliency_lib.get_saliency(saliency)

  def predict(state, images_BHWC, labels_B):
    model = nnx.merge(graphdef, state)
    if cam_hw is None:
      logits_BC, _ = model(images_BHWC, train=False)
    else:
      logits_BC, maps_fn = maps_method(model, images_BHWC, cam_hw)
    classes_Bk = cam_lib.top_k_classes(logits_BC, top_k)
    out = {'logits_BC': logits_BC.astype(jnp.float32), 'classes_Bk': classes_Bk}
    if cam_hw is not None:
      class_ids_BT = jnp.concatenate([classes_Bk, labels_B[:, None].astype(jnp.int32)], 1)
      out['cams_BThw'] = maps_fn(class_ids_BT)
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


def heuristic_hit(classes_k: np.ndarray, label: int, cams_Thw: np.ndarray, gt_M4: np.ndarray,
                  orig_hw: tuple[int, int], window_4: np.ndarray, *, tight: float,
                  loose: float, iou_threshold: float) -> bool:
  """The paper's test heuristic (Sec. 3.2, Table 3): five guesses, a tight and a loose box
  for each of the top 2 classes and a loose box for the 3rd (thresholds: fractions of
  each CAM's max). Correct when a guess has the label and IoU >= `iou_threshold` with a
  ground-truth box. The paper does not give the two thresholds; they are configuration.
  """
  guesses = [(0, tight), (0, loose), (1, tight), (1, loose), (2, loose)]
  for rank, threshold in guesses:
    if rank >= len(classes_k) or classes_k[rank] != label:
      continue
    box = pipeline.boxes_to_original(boxes_lib.paper_box(cams_Thw[rank], threshold)[None],
                                     window_4, cams_Thw.shape[-1], orig_hw)
    if len(gt_M4) and boxes_lib.iou(box, gt_M4).max() >= iou_threshold:
      return True
  return False


class WsolScores:
  """MaxBoxAcc, MaxBoxAccV2 and PxAP of the ground-truth class's maps, streamed: counts
  per threshold are accumulated, so no map outlives its batch."""

  def __init__(self, box_threshold_step: float, pxap_threshold_step: float, with_masks: bool):
    self.thresholds_T = metrics_lib.threshold_grid(box_threshold_step)
    self.box_acc = metrics_lib.BoxAccuracy(self.thresholds_T, iou_thresholds=(0.5,))
    self.box_acc_v2 = metrics_lib.BoxAccuracy(self.thresholds_T)
    self.pxap = (metrics_lib.PixelAP(metrics_lib.threshold_grid(pxap_threshold_step))
                 if with_masks else None)

  def add(self, map_hw: np.ndarray, gt_M4: np.ndarray, window_4: np.ndarray,
          orig_hw: tuple[int, int], mask_hw: np.ndarray | None = None,
          ignore_hw: np.ndarray | None = None) -> None:
    """One image: its label's map on the input grid, ground truth in the original grid."""
    norm_hw = boxes_lib.normalize_map(map_hw)
    if len(gt_M4):
      sweep = box_sweep.sweep_boxes(norm_hw, self.thresholds_T)
      size = map_hw.shape[-1]
      to_orig = lambda b: pipeline.boxes_to_original(b, window_4, size, orig_hw)
      largest_T4 = to_orig(sweep.largest_T4)
      ious_T = boxes_lib.iou(largest_T4, gt_M4).max(1)
      ious_v2_T = np.array([boxes_lib.iou(to_orig(c), gt_M4).max() for c in sweep.components])
      self.box_acc.update(ious_T[None])
      self.box_acc_v2.update(ious_v2_T[None])
    if self.pxap is not None and mask_hw is not None and mask_hw.any():
      self.pxap.update(norm_hw, mask_hw, ignore_hw)

  def state(self) -> dict[str, Any]:
    """Every counter as `<accumulator>/<name>`, flat, for one sum across processes."""
    parts = {'box': self.box_acc, 'box_v2': self.box_acc_v2, 'pxap': self.pxap}
    return {f'{part}/{k}': v for part, acc in parts.items() if acc is not None
            for k, v in acc.state().items()}

  def result(self, summed_state: dict[str, Any]) -> dict[str, Any]:
    """The metrics from the state summed over processes."""
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
  method = ev.get('saliency', 'cam')
  if localization and method == 'cam' and models.cam_weights(model) is None:
    logging.warning("%s has a fully connected classifier: CAM does not apply, so only "
                    "classification is evaluated (eval.saliency='gradcam' or 'backprop' "
                    "localize with it).", type(model).__name__)
    localization = False
  graphdef, state = nnx.split(model)
  predict = make_predict_fn(graphdef, mesh, top_k=top_k,
                            cam_hw=(size, size) if localization else None, saliency=method)
  wsol = WsolScores(ev.get('box_threshold_step', 0.01), ev.get('pxap_threshold_step', 0.001),
                    info.has_masks) if localization else None
  process_batch = sharding.check_batch_size(ev.batch_size, mesh, 'eval.batch_size')

  counts = dict.fromkeys(['num_images', 'cls_top1', 'cls_top5', 'loc_top1', 'loc_top5',
                          'loc_heuristic', 'gt_known', 'gt_known_iou', 'rel_h', 'rel_w',
                          'num_gt'], 0.0)
  tight, loose = ev.get('heuristic_thresholds', (0.5, 0.2))
  gt = []  # (orig_hw, boxes) per image, for the centre baseline once the mean size is known
  pictures = []
  for batch, n in pipeline.eval_batches(source, image_size=size, process_batch_size=process_batch,
                                        max_boxes=config.data.max_boxes,
                                        num_examples=num_examples,
                                        crop=config.data.eval_crop,
                                        resize_shorter=config.data.eval_resize_shorter,
                                        with_masks=localization and info.has_masks,
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
      wsol.add(out['cams_BThw'][i, -1], gt_M4, batch['window'][i], orig_hw,
               batch['mask'][i] if 'mask' in batch else None,
               batch['ignore'][i] if 'ignore' in batch else None)
      counts['loc_top1'] += top1
      counts['loc_top5'] += topk
      counts['loc_heuristic'] += heuristic_hit(
          classes_Bk[i], labels_B[i], out['cams_BThw'][i], gt_M4, orig_hw, batch['window'][i],
          tight=tight, loose=loose, iou_threshold=ev.iou_threshold)
      counts['gt_known'] += gt_known
      counts['gt_known_iou'] += gt_iou
      if len(pictures) < num_pictures and jax.process_index() == 0:
        pictures.append(_picture(batch, i, out, boxes_T4, names, size))

  counts = sharding.sum_across_processes(counts)
  wsol_state = sharding.sum_across_processes(wsol.state()) if localization else {}
  n = counts['num_images']
  if n == 0:
    raise ValueError(f'split {config.data.eval_split!r} of {config.data.name!r} is empty')
  results: dict[str, Any] = {
      'num_images': int(n),
      # (n - hits) / n, not 1 - hits / n: 7 errors in 1000 images read 0.007 exactly.
      'cls_top1_error': (n - counts['cls_top1']) / n,
      'cls_top5_error': (n - counts['cls_top5']) / n,
  }
  if localization:
    results.update(wsol.result(wsol_state))  # PxAP even where there are no boxes
    results['saliency'] = method
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
        'loc_top5_error_heuristic': (n - counts['loc_heuristic']) / n,
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
         ('loc_top5_error_heuristic', 'localization top-5 error, test heuristic (5 boxes)'),
         ('gt_known_loc_accuracy', 'GT-known localization accuracy'),
         ('center_baseline_loc_accuracy', 'centre-box baseline accuracy'),
         ('gt_known_mean_iou', 'GT-known mean IoU'),
         ('max_box_acc', 'MaxBoxAcc (IoU 0.5)'),
         ('max_box_acc_v2', 'MaxBoxAccV2 (IoU 0.3, 0.5, 0.7)'),
         ('pxap', 'PxAP')]


# The paper's ILSVRC-2012 validation numbers (DESIGN.md §7; Tables 1 and 2), as fractions:
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
  methods = sorted({k.split('/')[0] for k in results if '/' in k})
  rows = list(_ROWS) + [(f'{m}/{key}', f'{m}: {label}') for m in methods
                        for key, label in _ROWS if key in BASELINE_KEYS]
  for key, label in rows:
    if key in results:
      line = f'| {label} | {100 * results[key]:.2f} |'
      if paper:
        line += f' {100 * paper[key]:.2f} |' if key in paper else ' |'
      lines.append(line)
  return '\n'.join(lines)


def format_brief(results: dict[str, Any]) -> str:
  return '  '.join(f'{k} {100 * results[k]:.2f}%' for k, _ in _ROWS if k in results)


def evaluate_and_report(config: ml_collections.ConfigDict, model: nnx.Module,
                        mesh: jax.sharding.Mesh, workdir: str, *, step: int,
                        baselines: tuple[str, ...] = ()) -> dict[str, Any]:
  """Full evaluation: eval.json, the printed table and the CAM pictures in workdir/cams/;
  with `baselines` (saliency methods), their localization rows beside CAM's."""
  results = evaluate(config, model, mesh, localization=True,
                     num_examples=config.eval.get('num_examples'),
                     num_pictures=config.eval.num_pictures)
  pictures = results.pop('pictures', [])
  results['step'] = step
  for method in baselines:
    # The same network, its maps from another method, through the same box stage.
    baseline_config = config.copy_and_resolve_references()
    baseline_config.eval.saliency = method
    baseline = evaluate(baseline_config, model, mesh, localization=True,
                        num_examples=config.eval.get('num_examples'))
    results.update({f'{method}/{k}': baseline[k] for k in BASELINE_KEYS if k in baseline})
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(workdir, 'eval.json'), results)
    for j, picture in enumerate(pictures):
      viz.save_png(os.path.join(workdir, 'cams', f'{j:02d}.png'), picture)
    table = format_table(results, config.eval.get('paper_row'))
    print(f'\nEvaluation of {config.model.name} on {config.data.name}/'
          f'{config.data.eval_split} at step {step}:\n{table}\n', flush=True)
    logging.info('Wrote %s and %d pictures in %s', os.path.join(workdir, 'eval.json'),
                 len(pictures), os.path.join(workdir, 'cams'))
  return results

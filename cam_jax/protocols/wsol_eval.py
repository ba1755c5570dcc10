"""The `wsolevaluation` evaluator: Choe et al.'s box metrics as their code computes them.

Per image (their inference.py and evaluation.py): the whole image resized to the input
(S×S; 224 in theirs), the CAM of the ground-truth class at the map resolution, resized to
S×S with `cv2.INTER_CUBIC` and min-max normalised (`wsolevaluation.normalize_scoremap`),
boxed at every τ of `np.arange(0, 1, cam_curve_interval)` (`scoremap_boxes`), and compared
with the ground-truth boxes resized to S×S (`resize_box`) by their IoU:

- `max_box_acc`: the largest contour's box, IoU >= 0.5, the best τ (MaxBoxAcc);
- `max_box_acc_v2`: every contour's box, the best IoU of each τ, at IoU 0.3, 0.5 and 0.7,
  each at its best τ, averaged (MaxBoxAccV2), with the three in
  `max_box_acc_v2_iou{30,50,70}` and their τ.

- `pxap` (datasets with masks): MaskEvaluator's average precision of the pixels, from
  histograms of the scores at foreground and background pixels (ignore pixels left out)
  over the bins `[τ_i, τ_i+1)` of `np.append(np.arange(0, 1, interval), [1, 2, 3])`,
  precision summed over the recall steps where `tp + fp > 0` (`pxap_from_histograms`).

Fractions in [0, 1] (theirs prints percent). Box rates divide by the images that have
boxes. Not here: the top-1 localization of WSOL papers' tables (wsolevaluation itself
reports MaxBoxAcc, which is GT-known localization at the best τ).
"""

from __future__ import annotations

import io
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cam_jax import cam as cam_lib
from cam_jax import data as data_lib
from cam_jax import io_utils
from cam_jax import models
from cam_jax import sharding
from cam_jax.data import conventions
from cam_jax.data import pipeline
from cam_jax.protocols import wsolevaluation as wsol


def make_label_cam_fn(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh):
  """`f(state, images, labels) -> (CAMs B×h×w of each image's label, top-1 class B)`,
  jitted."""

  def fn(state, images, labels):
    model = nnx.merge(graphdef, state)
    logits, aux = model(images, train=False)
    kernel, _ = models.cam_weights(model)
    cams = cam_lib.class_activation_maps(aux['features'], kernel,
                                         labels[:, None].astype(jnp.int32))[:, 0]
    return cams, jnp.argmax(logits, axis=-1).astype(jnp.int32)

  batch = sharding.batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(sharding.replicated(mesh), batch, batch),
                 out_shardings=batch)


def scoremap_of(cam_hw: np.ndarray, size: int) -> np.ndarray:
  """The map their evaluation reads: the CAM resized to size×size, min-max normalised."""
  return wsol.normalize_scoremap(wsol.resize_cam(cam_hw, size))


def image_ious(scoremap_SS: np.ndarray, gt_M4: np.ndarray, orig_hw: tuple[int, int],
               taus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`(single_T, multi_T)`: per τ, the IoU of the largest contour's box and the best IoU
  of every contour's box with the ground truth (resized to the map's grid), as
  BoxEvaluator.accumulate computes them from a `scoremap_of` map.

  A τ's boxes depend only on the integer threshold `int(τ · max)`, so each distinct one is
  boxed once.
  """
  size = scoremap_SS.shape[0]
  gt = np.asarray([wsol.resize_box(b, (orig_hw[1], orig_hw[0]), (size, size)) for b in gt_M4])
  peak = int(np.max((scoremap_SS * 255).astype(np.uint8)))
  single, multi = np.zeros(len(taus)), np.zeros(len(taus))
  done: dict[int, tuple[float, float]] = {}
  for t, tau in enumerate(taus):
    key = int(tau * peak)
    if key not in done:
      (one,) = wsol.scoremap_boxes(scoremap_SS, [tau])
      (every,) = wsol.scoremap_boxes(scoremap_SS, [tau], multi_contour=True)
      done[key] = (wsol.multiple_iou(one, gt).max(), wsol.multiple_iou(every, gt).max())
    single[t], multi[t] = done[key]
  return single, multi


def pxap_bins(interval: float) -> np.ndarray:
  """MaskEvaluator's histogram edges: the τ grid, then 1, 2 and 3."""
  return np.append(wsol.thresholds(interval), [1.0, 2.0, 3.0])


def pxap_curve(true_hist: np.ndarray, false_hist: np.ndarray) -> tuple[list, list]:
  """The precision and recall MaskEvaluator.compute integrates, highest score first
  (points where nothing is predicted foreground left out)."""
  tp = np.asarray(true_hist, np.float64)[::-1].cumsum()
  fp = np.asarray(false_hist, np.float64)[::-1].cumsum()
  keep = (tp + fp) != 0
  precision = tp[keep] / (tp[keep] + fp[keep])
  recall = tp[keep] / max(float(np.sum(true_hist)), 1.0)
  return [float(v) for v in precision], [float(v) for v in recall]


def pxap_from_histograms(true_hist: np.ndarray, false_hist: np.ndarray) -> float:
  """MaskEvaluator.compute, as a fraction: tp and fp counted from the highest bin down,
  precision `tp / (tp + fp)` summed over the recall steps where `tp + fp > 0`."""
  tp = np.asarray(true_hist, np.float64)[::-1].cumsum()
  fn = true_hist.sum() - tp
  fp = np.asarray(false_hist, np.float64)[::-1].cumsum()
  if ((tp + fn) <= 0).all():
    raise ValueError('PxAP: no foreground pixel in the evaluated images')
  if ((tp + fp) <= 0).all():
    raise ValueError('PxAP: no pixel predicted foreground')
  nonzero = (tp + fp) != 0
  with np.errstate(invalid='ignore', divide='ignore'):
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
  return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum())


def scoremap_path(directory: str, example: dict[str, Any], index: int) -> str:
  """Where a score map goes: `<directory>/<image file name>.npy` (wsolevaluation's
  `scoremaps/<image_id>.npy`), or `<index>.npy` for examples without a file name."""
  name = pipeline.example_name(example, index).replace('\\', '/').lstrip('/')
  if '..' in name.split('/'):
    name = str(index)
  return os.path.join(directory, name + '.npy')


def save_scoremap(path: str, scoremap_SS: np.ndarray) -> None:
  """`np.save`, atomically (a crash never leaves half a map a re-scoring would read)."""
  buffer = io.BytesIO()
  np.save(buffer, scoremap_SS)
  io_utils.atomic_write_bytes(path, buffer.getvalue())


def split_curves(config: ml_collections.ConfigDict, model: nnx.Module,
                 mesh: jax.sharding.Mesh, split: str, num_examples: int | None,
                 cam_curve_interval: float, iou_thresholds: tuple[int, ...],
                 scoremap_dir: str | None = None) -> dict[str, Any]:
  """Counts over `split`, summed over processes: `num_images`, `num_images_with_boxes`,
  `box_acc` (T: the largest contour, IoU >= 0.5), `box_acc_v2_iou{d}` (T: every contour),
  `true_hist`, `false_hist` (PxAP, mask datasets only). With `scoremap_dir`, every
  normalised S×S map is saved there (`scoremap_path`), as wsolevaluation saves them for
  re-scoring with its evaluation.py."""
  source, info = data_lib.load_source(config.data, split)
  size = config.data.image_size
  with_masks = bool(info.has_masks)
  taus = wsol.thresholds(cam_curve_interval)
  edges = pxap_bins(cam_curve_interval)
  true_hist = np.zeros(len(edges) - 1, np.int64)
  false_hist = np.zeros(len(edges) - 1, np.int64)
  graphdef, state = nnx.split(model)
  fn = make_label_cam_fn(graphdef, mesh)
  batch = sharding.check_batch_size(config.eval.batch_size, mesh, 'eval.batch_size')
  batches = pipeline.eval_batches(source, image_size=size, process_batch_size=batch,
                                  max_boxes=config.data.max_boxes, num_examples=num_examples,
                                  crop='resize', convention=conventions.from_config(config.data),
                                  with_masks=with_masks, num_threads=config.data.num_threads)
  # box_acc: the largest contour's box, IoU >= 0.5; top1_loc: that and a right top-1 class.
  correct = {'box_acc': np.zeros(len(taus), np.int64),
             'top1_loc': np.zeros(len(taus), np.int64)}
  correct.update({f'box_acc_v2_iou{d}': np.zeros(len(taus), np.int64) for d in iou_thresholds})
  counts = {'num_images': 0, 'num_images_with_boxes': 0}
  try:
    for b, n in batches:
      arrays = sharding.shard_batch({'image': b['image'], 'label': b['label']}, mesh)
      cams, top1 = sharding.to_host(fn(state, arrays['image'], arrays['label']), mesh)
      for i in range(n):
        counts['num_images'] += 1
        scoremap = scoremap_of(cams[i], size)
        if scoremap_dir:
          index = int(b['index'][i])
          save_scoremap(scoremap_path(scoremap_dir, source[index], index), scoremap)
        if with_masks:
          fg, ignore = b['mask'][i], b['ignore'][i]
          true_hist += np.histogram(scoremap[fg], bins=edges)[0]
          false_hist += np.histogram(scoremap[~fg & ~ignore], bins=edges)[0]
        gt = b['boxes'][i, :b['num_boxes'][i]]
        if len(gt) == 0:
          continue
        counts['num_images_with_boxes'] += 1
        single, multi = image_ious(scoremap, gt, tuple(b['orig_hw'][i]), taus)
        correct['box_acc'] += single >= 0.5
        correct['top1_loc'] += (single >= 0.5) & (top1[i] == b['label'][i])
        for d in iou_thresholds:
          correct[f'box_acc_v2_iou{d}'] += multi >= d / 100
  finally:
    batches.close()
  arrays_out = {**correct, 'true_hist': true_hist, 'false_hist': false_hist}
  flat = dict(counts)
  for key, values in arrays_out.items():
    flat.update({f'{key}/{j}': int(v) for j, v in enumerate(values)})
  totals = sharding.sum_across_processes(flat)
  out: dict[str, Any] = {k: totals[k] for k in counts}
  out['with_masks'] = with_masks
  for key, values in arrays_out.items():
    out[key] = np.asarray([totals[f'{key}/{j}'] for j in range(len(values))])
  return out


def evaluate_wsol(config: ml_collections.ConfigDict, model: nnx.Module,
                  mesh: jax.sharding.Mesh, *, split: str | None = None,
                  num_examples: int | None = None, cam_curve_interval: float = 0.001,
                  iou_thresholds: tuple[int, ...] = (30, 50, 70),
                  select_split: str | None = None,
                  scoremap_dir: str | None = None,
                  choe_row: str | None = None) -> dict[str, Any]:
  """MaxBoxAcc, MaxBoxAccV2 and PxAP on `split` (default `config.data.eval_split`), their
  way (module docstring); the whole image resized to `config.data.image_size`.

  The results keep the BoxAcc(τ) curves (`box_acc_curve`, `box_acc_v2_iou{d}_curve`) and
  the PxAP precision/recall. With `select_split` (a split that is not the reported one,
  e.g. 'validation' or 'holdout'), each operating τ is chosen there and the reported split
  is scored at it too (`*_at_selected_tau`, `selected_tau*`), beside the max over τ that
  Choe et al. report. `scoremap_dir`: also save the reported split's normalised maps there
  (`.npy`, one per image, as wsolevaluation does), to re-score them offline. `choe_row`
  (e.g. 'ImageNet VGG', `evaluate.CHOE_ROWS`): Choe et al.'s number printed beside ours.
  """
  if models.cam_weights(model) is None:
    raise ValueError(f'{type(model).__name__} has a fully connected classifier: the '
                     'wsolevaluation protocol needs CAMs')
  split = split or config.data.eval_split
  if select_split == split:
    raise ValueError(f'select_split={select_split!r} is the reported split: choose the '
                     'operating threshold on another one')
  taus = wsol.thresholds(cam_curve_interval)
  curves = split_curves(config, model, mesh, split, num_examples, cam_curve_interval,
                        iou_thresholds, scoremap_dir)
  selected = (split_curves(config, model, mesh, select_split, num_examples,
                           cam_curve_interval, iou_thresholds) if select_split else None)
  nb = curves['num_images_with_boxes']
  results: dict[str, Any] = {'protocol': 'wsolevaluation', 'split': split,
                             'num_images': curves['num_images'],
                             'num_images_with_boxes': nb,
                             'cam_curve_interval': cam_curve_interval}
  if choe_row:
    results['choe_row'] = choe_row
  if curves['with_masks']:
    results['pxap'] = pxap_from_histograms(curves['true_hist'], curves['false_hist'])
    precision, recall = pxap_curve(curves['true_hist'], curves['false_hist'])
    results['pxap_precision_curve'] = precision
    results['pxap_recall_curve'] = recall
  if not nb:
    return results
  v2, v2_selected = [], []
  for key in ['box_acc'] + [f'box_acc_v2_iou{d}' for d in iou_thresholds]:
    acc = curves[key] / nb
    name = 'max_box_acc' if key == 'box_acc' else f'max_{key}'
    results[name] = float(acc.max())
    results[f'{name}_tau'] = float(taus[int(acc.argmax())])
    results[f'{key}_curve'] = [float(v) for v in acc]
    if selected is not None and selected['num_images_with_boxes']:
      t = int(np.argmax(selected[key]))
      results[f'{key}_at_selected_tau'] = float(acc[t])
      results[f'{key}_selected_tau'] = float(taus[t])
      if key != 'box_acc':
        v2_selected.append(acc[t])
    if key != 'box_acc':
      v2.append(acc.max())
  results['max_box_acc_v2'] = float(np.mean(v2))
  # Top-1 localization as WSOL tables print it: at the τ of the best BoxAcc.
  best = int(np.argmax(curves['box_acc']))
  results['top1_loc'] = float(curves['top1_loc'][best] / nb)
  if v2_selected:
    results['box_acc_v2_at_selected_tau'] = float(np.mean(v2_selected))
    results['selected_on'] = select_split
  return results

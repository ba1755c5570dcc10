"""Generic localizable features (paper Sec. 4): `--mode=transfer`.

A trained or converted GAP network (`config.transfer.source`) is applied, frozen, to
another dataset (`config.data.*`): the output of its global pooling layer is the feature
of an image (cam_jax.features), a linear SVM is trained on it, and the SVM's weights
give the CAMs of the new classes, `M_c = sum_k w[k, c] f_k`, exactly as the softmax
weights do for the network's own classes (the SVM takes the place of the head, so that
the evaluation, its box stage and its figures apply unchanged).

The SVM, as the paper's (liblinear [5]): one-vs-rest, hinge loss, L2 regularisation,
scikit-learn's `LinearSVC` on the host. Its C is chosen on validation images
(`transfer.validation_split`, or `transfer.validation_fraction` of each class's training
images, held out), the largest validation accuracy winning and ties going to the
smaller C; the SVM is then refit with that C on all training images (train and
validation). The test split (`config.data.eval_split`) is never used for a choice.

Crops (Table 4, fine-grained birds): `transfer.crops` lists the image regions whose
features are classified: 'full' (the image), 'cam' (the box of the CAM of the full-image
SVM's top-1 class, threshold `eval.cam_threshold`, on training and test images alike)
and 'gt' (the box around the image's ground-truth boxes). Each crop gets its own SVM,
its C chosen as above. `cam_box_accuracy` is the fraction of test images whose CAM box
has IoU >= `eval.iou_threshold` with a ground-truth box (the paper's 41.0 % on CUB).

Results in WORKDIR/transfer/: eval.json (the evaluation of the full-image SVM's CAMs on
the test split, as eval.json of a trained network, and under `transfer` the SVMs,
their validation accuracies, test accuracies and the crops' numbers), the CAM pictures
in cams/, the paper's figures in figures/ (class_cams.png: the new classes' CAMs), and
the features cache in features/.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from cam_jax import box_stage
from cam_jax import boxes as boxes_lib
from cam_jax import data as data_lib
from cam_jax import evaluate as evaluate_lib
from cam_jax import evaluators
from cam_jax import features as features_lib
from cam_jax import figures
from cam_jax import io_utils
from cam_jax import restore
from cam_jax import sharding
from cam_jax.data import pipeline

CROPS = ('full', 'cam', 'gt')
# The paper's Table 4 (CUB-200-2011, GoogLeNet-GAP features, linear SVM), percent.
PAPER_CUB = {'full': 63.0, 'cam': 67.8, 'gt': 70.5, 'cam_box_accuracy': 41.0}


# ---------------------------------------------------------------------------
# The linear SVM
# ---------------------------------------------------------------------------

def fit_svm(x_NK: np.ndarray, y_N: np.ndarray, num_classes: int, c: float,
            max_iter: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
  """One-vs-rest linear SVM (hinge loss, L2) as `(kernel_KC, bias_C)`: the scores are
  `x @ kernel_KC + bias_C`, one column per class of `range(num_classes)`.

  A class with no training image gets zero weights and a bias of -1e6, so that it never
  wins; with two classes, liblinear's one binary SVM f gives the columns (-f, f).
  """
  from sklearn import svm  # pylint: disable=g-import-not-at-top
  from sklearn.exceptions import ConvergenceWarning  # pylint: disable=g-import-not-at-top
  present = np.unique(y_N)
  if len(present) < 2:
    raise ValueError(f'the training images have {len(present)} class(es): an SVM needs two')
  x_NK = np.asarray(x_NK, np.float64)
  # One scale for all features (their RMS norm), so that C means the same for any network
  # and liblinear's dual solver converges; the weights are scaled back, so the scores
  # (and the CAMs) are those of the SVM on the features as they are.
  scale = float(np.sqrt(np.mean(np.sum(x_NK**2, axis=1)))) or 1.0
  clf = svm.LinearSVC(C=c, loss='hinge', dual=True, max_iter=max_iter, random_state=0)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', ConvergenceWarning)
    clf.fit(x_NK / scale, y_N)
  if any(issubclass(w.category, ConvergenceWarning) for w in caught):
    logging.warning('LinearSVC (C=%g) did not converge in %d iterations: raise '
                    'config.transfer.max_iter', c, max_iter)
  coef = clf.coef_.astype(np.float64) / scale
  intercept = clf.intercept_.astype(np.float64)
  if len(present) == 2:
    coef, intercept = np.stack([-coef[0], coef[0]]), np.array([-intercept[0], intercept[0]])
  kernel_KC = np.zeros((x_NK.shape[1], num_classes), np.float64)
  bias_C = np.full(num_classes, -1e6)
  kernel_KC[:, present] = coef.T
  bias_C[present] = intercept
  return kernel_KC.astype(np.float32), bias_C.astype(np.float32)


def scores(x_NK: np.ndarray, kernel_KC: np.ndarray, bias_C: np.ndarray) -> np.ndarray:
  return np.asarray(x_NK, np.float64) @ kernel_KC.astype(np.float64) + bias_C


def accuracy(x_NK: np.ndarray, y_N: np.ndarray, kernel_KC: np.ndarray,
             bias_C: np.ndarray) -> float:
  return float(np.mean(scores(x_NK, kernel_KC, bias_C).argmax(1) == y_N))


def holdout_split(labels_N: np.ndarray, fraction: float, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Sorted `(train, validation)` positions: `fraction` of each class's images (rounded,
  at least one where the class has two or more) held out, a fixed random choice."""
  if not 0 < fraction < 1:
    raise ValueError(f'config.transfer.validation_fraction={fraction}: expected 0 < f < 1')
  held = []
  for c in np.unique(labels_N):
    members = np.flatnonzero(labels_N == c)
    k = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
    if k > 0:
      held.append(np.random.default_rng([seed, int(c)]).choice(members, k, replace=False))
  val = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
  return np.setdiff1d(np.arange(len(labels_N)), val), val


def choose_c(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
             num_classes: int, grid: tuple[float, ...], max_iter: int
             ) -> tuple[float, dict[str, float]]:
  """The C of `grid` with the best validation accuracy (ties: the smaller C), and every
  C's validation accuracy."""
  if not grid:
    raise ValueError('config.transfer.svm_c is empty: give at least one C')
  accuracies = {}
  for c in sorted(float(c) for c in grid):
    kernel, bias = fit_svm(*train, num_classes, c, max_iter)
    accuracies[repr(c)] = accuracy(*val, kernel, bias)
  best = max(accuracies.items(), key=lambda kv: (kv[1], -float(kv[0])))[0]
  return float(best), accuracies


def with_head(model: nnx.Module, kernel_KC: np.ndarray, bias_C: np.ndarray) -> nnx.Module:
  """A copy of `model` whose linear head is `(kernel_KC, bias_C)`: the SVM in the place of
  the softmax layer, so that its logits are the SVM's scores and its CAMs the SVM's."""
  features_lib.pooling_of(model)  # a GAP/GMP network with a linear head
  graphdef, state = nnx.split(model)
  copy = nnx.merge(graphdef, state)
  num_features, num_classes = kernel_KC.shape
  if copy.head.kernel.shape[0] != num_features:
    raise ValueError(f'the SVM has {num_features} weights per class; the network pools '
                     f'{copy.head.kernel.shape[0]} features')
  copy.head = nnx.Linear(num_features, num_classes, dtype=model.head.dtype,
                         param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  copy.head.kernel[...] = jnp.asarray(kernel_KC, jnp.float32)
  copy.head.bias[...] = jnp.asarray(bias_C, jnp.float32)
  if hasattr(copy, 'num_classes'):
    copy.num_classes = num_classes
  return copy


# ---------------------------------------------------------------------------
# Boxes of every image: the CAM crop, the ground-truth crop
# ---------------------------------------------------------------------------

def cam_boxes(config: ml_collections.ConfigDict, model: nnx.Module, mesh: jax.sharding.Mesh,
              source: Any, *, label: int | None = None) -> Iterator[dict[str, Any]]:
  """Per image of this process's share of `source`, in order: `index`, `top1` (the
  model's top class), `map_hw` (the CAM of `label`, None: of the top class, at the feature
  resolution) with the `window` and `orig_hw` it covers, `box` (that CAM's paper box at
  eval.cam_threshold, in the original image) and `gt_M4` (the ground-truth boxes). A
  collective: every process must run it to the end."""
  graphdef, state = nnx.split(model)
  predict = evaluate_lib.make_predict_fn(graphdef, mesh, top_k=1, saliency='cam', map_top=1)
  process_batch = sharding.check_batch_size(config.transfer.batch_size, mesh,
                                            'transfer.batch_size')
  batches = pipeline.eval_batches(source, process_batch_size=process_batch,
                                  **pipeline.eval_settings(config.data))
  try:
    for batch, n in batches:
      labels = batch['label'] if label is None else np.full_like(batch['label'], label)
      arrays = sharding.shard_batch({'image': batch['image'], 'label': labels}, mesh)
      out = sharding.to_host(predict(state, arrays['image'], arrays['label']), mesh)
      for i in range(n):
        orig_hw = tuple(int(v) for v in batch['orig_hw'][i])
        # Row 0: the top class's map; the last row: the label's.
        map_hw = out['maps_BThw'][i, 0 if label is None else -1].copy()
        box = box_stage.paper_boxes_on_original(map_hw, batch['window'][i], orig_hw,
                                                (config.eval.cam_threshold,))[0]
        yield {'index': int(batch['index'][i]), 'top1': int(out['classes_Bk'][i, 0]),
               'map_hw': map_hw, 'window': batch['window'][i].copy(), 'orig_hw': orig_hw,
               'box': [int(v) for v in box],
               'gt_M4': batch['boxes'][i, :batch['num_boxes'][i]].copy()}
  finally:
    batches.close()


def image_boxes(config: ml_collections.ConfigDict, model: nnx.Module, mesh: jax.sharding.Mesh,
                source: Any, path: str) -> dict[str, np.ndarray]:
  """For every image of `source`, in index order: `top1` (the model's top class),
  `cam_box` (its CAM's paper box at eval.cam_threshold, in the original image),
  `gt_box` (the box around its ground-truth boxes; -1s where it has none) and
  `cam_iou` (the CAM box's best IoU with a ground-truth box; -1 where none).

  A collective; every process gets every image's rows (through `path`, a JSON-lines
  file in a folder every process sees).
  """
  records = []
  for r in cam_boxes(config, model, mesh, source):
    gt_M4 = r['gt_M4']
    gt_box = ([int(gt_M4[:, 0].min()), int(gt_M4[:, 1].min()), int(gt_M4[:, 2].max()),
               int(gt_M4[:, 3].max())] if len(gt_M4) else [-1] * 4)
    records.append({'index': r['index'], 'top1': r['top1'], 'cam_box': r['box'],
                    'gt_box': gt_box,
                    'cam_iou': float(boxes_lib.max_iou(np.array(r['box']), gt_M4))
                               if len(gt_M4) else -1.0})
  sharding.write_jsonl_from_processes(path, records)
  sharding.barrier('transfer-boxes-written')
  with open(path, encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  return {'top1': np.array([r['top1'] for r in rows], np.int64),
          'cam_box': np.array([r['cam_box'] for r in rows], np.int64).reshape(-1, 4),
          'gt_box': np.array([r['gt_box'] for r in rows], np.int64).reshape(-1, 4),
          'cam_iou': np.array([r['cam_iou'] for r in rows], np.float64)}


# ---------------------------------------------------------------------------
# --mode=transfer
# ---------------------------------------------------------------------------

def _data_fingerprint(data_config: ml_collections.ConfigDict, split: str) -> dict[str, Any]:
  keys = ('name', 'builder_config', 'data_dir', 'folders', 'wsol', 'eval_crop',
          'eval_resize_shorter', 'image_size')
  out = {k: data_config.get(k) for k in keys}
  return json.loads(json.dumps({**out, 'split': split}, default=lambda o: o.to_dict()))


def _check_crops(crops: tuple[str, ...]) -> tuple[str, ...]:
  crops = tuple(crops)
  unknown = [c for c in crops if c not in CROPS]
  if unknown or not crops:
    raise ValueError(f'config.transfer.crops={crops!r}: expected some of {CROPS}')
  if 'full' not in crops:
    # The CAM crop needs the full-image SVM; the evaluation of CAMs is of it.
    crops = ('full',) + crops
  return crops


def run_transfer(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`--mode=transfer` (module docstring): features, SVMs, CAMs; WORKDIR/transfer/."""
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  tcfg = config.transfer
  if not tcfg.get('source'):
    raise ValueError('config.transfer.source is not set: a workdir, checkpoints/ or best/ '
                     'folder, step folder or converted checkpoint of the network whose '
                     'features are transferred (--config.transfer.source=PATH)')
  crops = _check_crops(tcfg.crops)
  mesh = sharding.make_mesh()
  model, meta, where, config = restore.restore_for_inference(config, tcfg.source, mesh)
  features_lib.pooling_of(model)
  config = config.copy_and_resolve_references()
  config.model.name = meta['model']
  out_dir = os.path.join(workdir, 'transfer')
  cache_root = os.path.join(out_dir, 'features')
  if not tcfg.get('cache', True) and jax.process_index() == 0:
    shutil.rmtree(cache_root, ignore_errors=True)
  sharding.barrier('transfer-cache-cleared')

  splits = {'train': config.data.train_split, 'test': config.data.eval_split}
  if tcfg.get('validation_split'):
    splits['validation'] = tcfg.validation_split
  sources, info = {}, None
  for role, split in splits.items():
    sources[role], split_info = data_lib.load_source(config.data, split)
    if info is not None and split_info.num_classes != info.num_classes:
      raise ValueError(f'split {split!r} has {split_info.num_classes} classes, '
                       f'{splits["train"]!r} {info.num_classes}')
    info = split_info
  num_classes = info.num_classes
  source_fingerprint = {'checkpoint': os.path.abspath(where), 'model': meta['model'],
                        'model_kwargs': meta.get('model_kwargs')}

  def extract(role: str, crop: str, crop_boxes: np.ndarray | None = None):
    split = splits[role]
    return features_lib.extract(
        model, mesh, sources[role], batch_size=tcfg.batch_size, crop_boxes=crop_boxes,
        cache_dir=os.path.join(cache_root, f'{role}-{split}-{crop}'),
        fingerprint={**source_fingerprint, 'data': _data_fingerprint(config.data, split)},
        **pipeline.eval_settings(config.data))

  def train_and_test(crop: str, feats: dict[str, features_lib.Features]) -> dict[str, Any]:
    train = (feats['train'].pooled_NK, feats['train'].labels_N)
    if 'validation' in feats:
      fit_part, val = train, (feats['validation'].pooled_NK, feats['validation'].labels_N)
      everything = tuple(np.concatenate([a, b]) for a, b in zip(train, val))
    else:
      kept, held = holdout_split(train[1], tcfg.validation_fraction)
      fit_part = (train[0][kept], train[1][kept])
      val = (train[0][held], train[1][held])
      everything = train
    c, val_accuracies = choose_c(fit_part, val, num_classes, tuple(tcfg.svm_c), tcfg.max_iter)
    kernel, bias = fit_svm(*everything, num_classes, c, tcfg.max_iter)
    test = feats['test']
    result = {'svm_c': c, 'validation_accuracy_by_c': val_accuracies,
              'train_accuracy': accuracy(*everything, kernel, bias),
              'test_accuracy': accuracy(test.pooled_NK, test.labels_N, kernel, bias),
              'num_train': len(everything[1]), 'num_validation': len(val[1]),
              'num_test': len(test)}
    logging.info('transfer, %s crop: C=%g, test accuracy %.4f', crop, c,
                 result['test_accuracy'])
    return {'numbers': result, 'kernel': kernel, 'bias': bias}

  roles = list(splits)
  full = {role: extract(role, 'full') for role in roles}
  per_crop = {'full': train_and_test('full', full)}
  svm_model = with_head(model, per_crop['full']['kernel'], per_crop['full']['bias'])

  boxes = {}
  if 'cam' in crops or 'gt' in crops:
    for role in roles:
      boxes[role] = image_boxes(config, svm_model, mesh, sources[role],
                                os.path.join(out_dir, f'boxes-{role}.jsonl'))
  for crop in crops[1:]:
    key = 'cam_box' if crop == 'cam' else 'gt_box'
    if crop == 'gt':
      for role in roles:
        missing = int((boxes[role]['gt_box'][:, 0] < 0).sum())
        if missing:
          raise ValueError(f"config.transfer.crops has 'gt' but {missing} image(s) of split "
                           f'{splits[role]!r} have no ground-truth box')
    feats = {role: extract(role, crop, boxes[role][key]) for role in roles}
    per_crop[crop] = train_and_test(crop, feats)

  transfer = {
      'source': os.path.abspath(where), 'source_model': meta['model'],
      'source_dataset': meta.get('dataset'), 'dataset': config.data.name,
      'splits': splits, 'num_classes': num_classes,
      'num_features': int(per_crop['full']['kernel'].shape[0]),
      'svm': {'loss': 'hinge', 'penalty': 'l2', 'multi_class': 'ovr',
              'c_grid': [float(c) for c in tcfg.svm_c], 'max_iter': tcfg.max_iter},
      'crops': {crop: per_crop[crop]['numbers'] for crop in crops},
  }
  if 'test' in boxes:
    ious = boxes['test']['cam_iou']
    boxed = ious >= 0
    if boxed.any():
      transfer['cam_box_accuracy'] = float(np.mean(ious[boxed] >= config.eval.iou_threshold))
      transfer['num_test_images_with_boxes'] = int(boxed.sum())

  results: dict[str, Any] = {}
  if tcfg.get('localization', True):
    results = evaluators.evaluate_and_report(config, svm_model, mesh, out_dir, step=0)
    figures.write_evaluation_figures(config, svm_model, mesh, out_dir)
  results['transfer'] = transfer
  results['svm_test_accuracy'] = per_crop['full']['numbers']['test_accuracy']
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(out_dir, 'eval.json'), results)
    io_utils.atomic_write_json(os.path.join(out_dir, 'svm.json'), {
        crop: {'kernel_KC': per_crop[crop]['kernel'], 'bias_C': per_crop[crop]['bias'],
               'class_names': list(info.class_names)} for crop in crops})
    print(format_table(transfer, config.transfer.get('paper', None)), flush=True)
  return results


def format_table(transfer: dict[str, Any], paper: dict[str, float] | None = None) -> str:
  """The crops' test accuracies (and the CAM boxes' accuracy), beside the paper's."""
  rows = [('crop', 'C', 'test accuracy %', 'paper %')]
  for crop, numbers in transfer['crops'].items():
    rows.append((crop, f'{numbers["svm_c"]:g}', f'{100 * numbers["test_accuracy"]:.1f}',
                 f'{paper[crop]:.1f}' if paper and crop in paper else ''))
  if 'cam_box_accuracy' in transfer:
    rows.append(('CAM box IoU>=0.5', '', f'{100 * transfer["cam_box_accuracy"]:.1f}',
                 f'{paper["cam_box_accuracy"]:.1f}' if paper and 'cam_box_accuracy' in paper
                 else ''))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  return '\n'.join('  '.join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)

"""Concept localization in weakly labelled images (paper Sec. 4.2, Fig. 10): `--mode=concept`.

A concept (a short phrase, "mirror in lake") is given by two sets of images, each one or
more folders (`concept.positives`, `concept.negatives`: comma-separated, read
recursively): positives, which show it (their captions contain the phrase), and
negatives, which do not. On the GAP
features of a network (`config.transfer.source`, cam_jax.features), a linear detector is
learned with hard-negative mining, as the paper does after Zhou et al. (ConceptLearner,
CVPR 2015): a linear SVM (hinge, L2, `concept.svm_c`) on the positives against
`concept.init_negatives` negatives drawn at random (a fixed choice); then, for up to
`concept.rounds` rounds, the negatives outside the training set that violate the margin
(detector score > -1) join it, the `concept.per_round` highest-scoring first, and the SVM
is refit; mining stops early when no negative violates the margin. Every image is used
(the paper has no train and test split here: the detector discovers a pattern, it is not
scored on new images).

The detector in the place of the network's head gives the concept's CAM,
`M = sum_k w_k f_k`: WORKDIR/concept/ gets concept.png (the `concept.num_pictures`
highest-scoring positives with the concept's CAM and its box), concept.json (the mining
rounds, the detector's average precision on the images it was mined from, the positives
ranked by score, the shown ones' boxes) and detector.json (the weights). With several
processes every one computes the same detector (the features are gathered through their
cache), but the pictures and their boxes are those of process 0's share of the best
positives.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from sklearn import metrics as sk_metrics

from cam_jax import features as features_lib
from cam_jax import io_utils
from cam_jax import restore
from cam_jax import sharding
from cam_jax import transfer
from cam_jax import viz
from cam_jax import windows
from cam_jax.data import folders
from cam_jax.data import pipeline

NEGATIVE, POSITIVE = 0, 1


def mine_detector(x_pos: np.ndarray, x_neg: np.ndarray, *, c: float, rounds: int,
                  init_negatives: int | None, per_round: int, max_iter: int = 100_000,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
  """The detector `(kernel_K2, bias_2)` (column 1 the concept's score) learned with hard-
  negative mining (module docstring), and the history: per fit, the negatives it was
  trained on (indices into `x_neg`) and those that joined after it."""
  if not len(x_pos) or not len(x_neg):
    raise ValueError(f'concept mining needs positives and negatives; got {len(x_pos)} and '
                     f'{len(x_neg)}')
  rng = np.random.default_rng(seed)
  first = len(x_pos) if init_negatives is None else init_negatives
  chosen = np.sort(rng.choice(len(x_neg), size=min(first, len(x_neg)), replace=False))
  history = []
  for r in range(rounds + 1):
    x = np.concatenate([x_pos, x_neg[chosen]])
    y = np.concatenate([np.full(len(x_pos), POSITIVE), np.full(len(chosen), NEGATIVE)])
    kernel, bias = transfer.fit_svm(x, y, 2, c, max_iter)
    score_N = transfer.scores(x_neg, kernel, bias)[:, POSITIVE]
    outside = np.setdiff1d(np.arange(len(x_neg)), chosen)
    violators = outside[score_N[outside] > -1]
    # The hardest first; ties by index, so that the choice is reproducible.
    hardest = violators[np.lexsort((violators, -score_N[violators]))][:per_round]
    entry = {'round': r, 'negatives': chosen.tolist(),
             'train_accuracy': transfer.accuracy(x, y, kernel, bias),
             'added': hardest.tolist() if r < rounds else []}
    history.append(entry)
    if r == rounds or not len(hardest):
      break
    chosen = np.sort(np.concatenate([chosen, hardest]))
  return kernel, bias, history


def _folder_source(spec: str, label: int, what: str) -> folders.FolderSource:
  """The images under the folders of `spec` (comma-separated), recursively, named by
  their paths as given."""
  if not spec:
    raise ValueError(f'config.concept.{what} is not set: a folder of images (or several, '
                     'comma-separated)')
  paths = []
  for folder in (f.strip() for f in spec.split(',') if f.strip()):
    full = os.path.expanduser(folder)
    if not os.path.isdir(full):
      raise FileNotFoundError(f'config.concept.{what}: {folder!r} is not a folder')
    files = folders.list_class_images(full)
    if not files:
      raise ValueError(f'config.concept.{what}: {folder!r} holds no image '
                       f'({", ".join(folders.IMAGE_EXTENSIONS)})')
    paths += [os.path.join(full, f) for f in files]
  # Paths as given (relative to the current folder, or absolute): root '' keeps them.
  return folders.FolderSource(root='', split=what, paths=paths,
                              labels=np.full(len(paths), label, np.int64), boxes={})


def _concept_maps(config: ml_collections.ConfigDict, model: nnx.Module, mesh, source,
                  indices: list[int]) -> list[dict[str, Any]]:
  """The concept's CAM (class 1 of `model`) and its box, on each image at `indices`."""
  subset = [source[i] for i in indices]
  return [{**r, 'index': indices[r['index']]}
          for r in transfer.cam_boxes(config, model, mesh, subset, label=POSITIVE)]


def run_concept(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`--mode=concept` (module docstring); WORKDIR/concept/."""
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  ccfg = config.concept
  if not config.transfer.get('source'):
    raise ValueError('config.transfer.source is not set: the network whose features learn '
                     'the concept (a workdir, checkpoint folder or converted checkpoint)')
  positives = _folder_source(ccfg.positives, POSITIVE, 'positives')
  negatives = _folder_source(ccfg.negatives, NEGATIVE, 'negatives')
  mesh = sharding.make_mesh()
  model, meta, where, config = restore.restore_for_inference(config, config.transfer.source,
                                                             mesh)
  out_dir = os.path.join(workdir, 'concept')
  feats = {}
  for name, source in (('positives', positives), ('negatives', negatives)):
    feats[name] = features_lib.extract(
        model, mesh, source, batch_size=config.transfer.batch_size,
        cache_dir=os.path.join(out_dir, 'features', name),
        fingerprint={'checkpoint': os.path.abspath(where), 'model': meta['model'],
                     'files': [os.path.abspath(p) for p in source.image_ids]},
        **pipeline.eval_settings(config.data))
  x_pos, x_neg = feats['positives'].pooled_NK, feats['negatives'].pooled_NK
  kernel, bias, history = mine_detector(
      x_pos, x_neg, c=ccfg.svm_c, rounds=ccfg.rounds, init_negatives=ccfg.init_negatives,
      per_round=ccfg.per_round, max_iter=config.transfer.max_iter)
  pos_scores = transfer.scores(x_pos, kernel, bias)[:, POSITIVE]
  neg_scores = transfer.scores(x_neg, kernel, bias)[:, POSITIVE]
  y = np.concatenate([np.ones(len(x_pos)), np.zeros(len(x_neg))])
  ap = float(sk_metrics.average_precision_score(y, np.concatenate([pos_scores, neg_scores])))
  detector = transfer.with_head(model, kernel, bias)
  top = [int(i) for i in np.lexsort((np.arange(len(pos_scores)), -pos_scores))]
  shown = _concept_maps(config, detector, mesh, positives, top[:ccfg.num_pictures])
  report = {
      'source': os.path.abspath(where), 'source_model': meta['model'],
      'positives': ccfg.positives, 'negatives': ccfg.negatives,
      'num_positives': len(x_pos), 'num_negatives': len(x_neg),
      'svm_c': float(ccfg.svm_c), 'rounds': [
          {'round': h['round'], 'num_negatives': len(h['negatives']),
           'num_added': len(h['added']), 'train_accuracy': h['train_accuracy']}
          for h in history],
      'average_precision': ap,
      # Best first: [image, score], and the CAM box of the first `num_pictures`.
      'positives_ranked': [[positives.image_ids[i], float(pos_scores[i])] for i in top],
      'boxes': [[positives.image_ids[s['index']], s['box']] for s in shown],
  }
  if jax.process_index() == 0:
    tiles = []
    for s in shown:
      image = pipeline.decode(positives[s['index']], s['index'])
      map_HW, valid_HW = windows.map_on_image(s['map_hw'], s['window'], s['orig_hw'])
      pic = viz.overlay(image, map_HW, config.viz.heat_weight, config.viz.image_weight,
                        config.viz.colormap, valid_HW=valid_HW)
      pic = viz.draw_boxes(pic, np.array([s['box']]), (255, 0, 0), viz.box_width(s['orig_hw']))
      pic, _ = viz.fit(pic, 160, 128)
      name = os.path.basename(positives.image_ids[s['index']])
      tiles.append(viz.titled(pic, f'{name} {pos_scores[s["index"]]:+.2f}'))
    if tiles:
      viz.save_png(os.path.join(out_dir, 'concept.png'), viz.grid(tiles, min(len(tiles), 4)))
    io_utils.atomic_write_json(os.path.join(out_dir, 'detector.json'),
                               {'kernel_K2': kernel, 'bias_2': bias,
                                'classes': ['negative', 'concept']})
    io_utils.atomic_write_json(os.path.join(out_dir, 'concept.json'), report)
    logging.info('concept detector: %d positives, %d negatives, %d round(s), AP %.3f; '
                 'wrote %s', len(x_pos), len(x_neg), len(history), ap, out_dir)
  return report

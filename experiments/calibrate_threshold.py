r"""GT-known localization accuracy of a trained workdir over a grid of CAM thresholds.

Choose `config.eval.cam_threshold` on held-out images (by default the config's
`data.select_split`), never on the split that reports it (Choe et al., CVPR 2020,
Sec. 4):

  python experiments/calibrate_threshold.py --config=configs/synthetic_gap.py \
      --workdir=runs/synthetic --num_examples=1000

Prints one line per threshold and the best one. Accuracies count the images that have
ground-truth boxes; the others (most ILSVRC training images) are left out and counted.
"""

import os
import sys
from typing import Any

from absl import app, flags
import jax
import ml_collections
import numpy as np
from flax import nnx
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from cam_jax import box_stage
from cam_jax import boxes as boxes_lib
from cam_jax import data as data_lib
from cam_jax import evaluate, restore, sharding
from cam_jax.data import conventions
from cam_jax.data import pipeline

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir.', required=True)
_SPLIT = flags.DEFINE_string('split', None, 'Split to calibrate on; default the config\'s '
                             'data.select_split (never the reported eval_split).')
_NUM = flags.DEFINE_integer('num_examples', 2000, 'Images used.')
_GRID = flags.DEFINE_list('thresholds', [f'{t:.2f}' for t in np.arange(0.1, 0.71, 0.05)],
                          'Fractions of the CAM maximum to try.')
config_flags.DEFINE_config_file('config', None, 'The config that trained the workdir.')


def gt_known_hits(config: ml_collections.ConfigDict, model: nnx.Module,
                  mesh: jax.sharding.Mesh, source: Any, num_examples: int | None,
                  thresholds: tuple[float, ...]) -> dict[str, Any]:
  """Summed over processes: `hits` (per threshold, images whose label's CAM box has IoU
  >= `eval.iou_threshold` with a ground-truth box), `with_boxes`, `without_boxes`."""
  graphdef, state = nnx.split(model)
  # The label's map alone (map_top=0): GT-known accuracy needs nothing else.
  predict = evaluate.make_predict_fn(graphdef, mesh, top_k=1, map_top=0)
  hits = np.zeros(len(thresholds), np.int64)
  with_boxes = without_boxes = 0
  batches = pipeline.eval_batches(
      source, image_size=config.data.image_size, max_boxes=config.data.max_boxes,
      num_examples=num_examples,
      process_batch_size=sharding.check_batch_size(config.eval.batch_size, mesh),
      crop=config.data.eval_crop, resize_shorter=config.data.eval_resize_shorter,
      convention=conventions.from_config(config.data))
  try:
    for batch, n in batches:
      arrays = sharding.shard_batch({'image': batch['image'], 'label': batch['label']}, mesh)
      maps_BThw = sharding.to_host(predict(state, arrays['image'], arrays['label']),
                                   mesh)['maps_BThw']
      for i in range(n):
        gt_M4 = batch['boxes'][i, :batch['num_boxes'][i]]
        if not len(gt_M4):  # nothing to score against
          without_boxes += 1
          continue
        with_boxes += 1
        orig_hw = tuple(int(v) for v in batch['orig_hw'][i])
        # The label's map on the original image, boxed at every threshold (box_stage).
        boxes_N4 = box_stage.paper_boxes_on_original(maps_BThw[i, -1], batch['window'][i],
                                                     orig_hw, thresholds)
        for j, box in enumerate(boxes_N4):
          hits[j] += boxes_lib.max_iou(box, gt_M4) >= config.eval.iou_threshold
  finally:
    batches.close()
  return sharding.sum_across_processes({'hits': hits, 'with_boxes': with_boxes,
                                        'without_boxes': without_boxes})


def main(argv):
  del argv
  config = flags.FLAGS.config
  sharding.maybe_initialize_distributed(config.get('distributed', False))
  split = _SPLIT.value or config.data.select_split
  mesh = sharding.make_mesh()
  source, info = data_lib.load_source(config.data, split)
  model, _, config = restore.restore_model(config, _WORKDIR.value, mesh, info.num_classes)
  thresholds = tuple(float(t) for t in _GRID.value)
  got = gt_known_hits(config, model, mesh, source, _NUM.value, thresholds)
  n = got['with_boxes']
  if not n:
    raise SystemExit(f'none of the images of {split!r} has a ground-truth box')
  if jax.process_index() == 0:
    for t, h in zip(thresholds, got['hits']):
      print(f'cam_threshold {t:.2f}: GT-known localization accuracy {100 * h / n:.2f} %')
    best = thresholds[int(np.argmax(got['hits']))]
    print(f'best on the {n} images of {split!r} with boxes ({got["without_boxes"]} without '
          f'were left out): cam_threshold={best:.2f}')


if __name__ == '__main__':
  app.run(main)

r"""GT-known localization accuracy of a trained workdir over a grid of CAM thresholds.

Choose `config.eval.cam_threshold` on training (or held-out) images, never on the test
split that reports it (Choe et al., CVPR 2020, Sec. 4):

  python experiments/calibrate_threshold.py --config=configs/synthetic_gap.py \
      --workdir=runs/synthetic --split=train --num_examples=2000

Prints one line per threshold and the best one.
"""

import os
import sys

from absl import app, flags
import numpy as np
from flax import nnx
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from cam_jax import box_stage
from cam_jax import boxes as boxes_lib
from cam_jax import data as data_lib
from cam_jax import evaluate, sharding, train
from cam_jax.data import pipeline

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir.', required=True)
_SPLIT = flags.DEFINE_string('split', 'train', 'Split to calibrate on (not the test split).')
_NUM = flags.DEFINE_integer('num_examples', 2000, 'Images used.')
_GRID = flags.DEFINE_list('thresholds', [f'{t:.2f}' for t in np.arange(0.1, 0.71, 0.05)],
                          'Fractions of the CAM maximum to try.')
config_flags.DEFINE_config_file('config', None, 'The config that trained the workdir.')


def main(argv):
  del argv
  config = flags.FLAGS.config
  mesh = sharding.make_mesh()
  source, info = data_lib.load_source(config.data, _SPLIT.value)
  model, _ = train.restore_model(config, _WORKDIR.value, mesh, info.num_classes)
  graphdef, state = nnx.split(model)
  size = config.data.image_size
  # The label's map alone (map_top=0): GT-known accuracy needs nothing else.
  predict = evaluate.make_predict_fn(graphdef, mesh, top_k=1, map_top=0)
  thresholds = tuple(float(t) for t in _GRID.value)
  hits = np.zeros(len(thresholds))
  n_total = 0
  for batch, n in pipeline.eval_batches(
      source, image_size=size, max_boxes=config.data.max_boxes, num_examples=_NUM.value,
      process_batch_size=sharding.check_batch_size(config.eval.batch_size, mesh),
      crop=config.data.eval_crop, resize_shorter=config.data.eval_resize_shorter):
    arrays = sharding.shard_batch({'image': batch['image'], 'label': batch['label']}, mesh)
    maps_BThw = sharding.to_host(predict(state, arrays['image'], arrays['label']),
                                 mesh)['maps_BThw']
    for i in range(n):
      gt_M4 = batch['boxes'][i, :batch['num_boxes'][i]]
      orig_hw = tuple(int(v) for v in batch['orig_hw'][i])
      # The label's map on the original image, boxed at every threshold (box_stage).
      boxes_N4 = box_stage.paper_boxes_on_original(maps_BThw[i, -1], batch['window'][i],
                                                   orig_hw, thresholds)
      for j, box in enumerate(boxes_N4):
        hits[j] += boxes_lib.max_iou(box, gt_M4) >= config.eval.iou_threshold
    n_total += n
  for t, h in zip(thresholds, hits):
    print(f'cam_threshold {t:.2f}: GT-known localization accuracy {100 * h / n_total:.2f} %')
  best = thresholds[int(np.argmax(hits))]
  print(f'best on {n_total} images of {_SPLIT.value!r}: cam_threshold={best:.2f}')


if __name__ == '__main__':
  app.run(main)

r"""How far float64 heat maps are from single-precision ones (MATLAB's arithmetic on
Caffe's single CAMs), in the `cam_official` protocol.

  python benchmarks/matlab_precision.py --config=configs/synthetic_gap.py \
      --workdir=runs/synthetic [--num_images=200]

For the first N images of the eval split: the ten-crop CAMs of the top-5 classes, the
8-bit heat map of each made in float64 (what `cam_official` does) and in float32, and
the released box generator's boxes of both. Prints how many heat-map pixels differ (and
by how much), and how many images' first boxes and top-1..5 localization outcomes
change. MATLAB's own order of operations is not reproduced, so float32 here stands for
"single precision", not for MATLAB's exact rounding: the numbers bound the effect.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from cam_jax import data as data_lib
from cam_jax import sharding
from cam_jax.data import conventions
from cam_jax.data import pipeline
from cam_jax.restore import restore_for_inference
from cam_jax.protocols import cam_official
from cam_jax.protocols import official_eval

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The workdir\'s config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'A trained workdir (or checkpoint folder).', required=True)
flags.DEFINE_integer('num_images', 200, 'Images of the eval split.')


def main(argv):
  del argv
  mesh = sharding.make_mesh()
  model, _, where, config = restore_for_inference(FLAGS.config, FLAGS.workdir, mesh)
  source, _ = data_lib.load_source(config.data, config.data.eval_split)
  crop = config.data.image_size
  convention = conventions.from_config(config.data)
  graphdef, state = nnx.split(model)
  top = min(official_eval.TOP, official_eval.model_num_classes(model))
  fn = official_eval.make_ten_crop_fn(graphdef, mesh, top)
  square = official_eval.frame_size(crop)
  n = min(FLAGS.num_images, len(source))
  batch = mesh.size
  pixels = differing = worst = box_changes = heat_changes = 0
  outcome_changes = np.zeros(top, np.int64)
  start = time.time()
  for b in range(0, n, batch):
    rows = list(range(b, min(b + batch, n)))
    examples = [source[i] for i in rows]
    images = [pipeline.decode(ex, i) for ex, i in zip(examples, rows)]
    crops = np.stack([official_eval.crop_inputs(im, crop, convention) for im in images]
                     + [np.zeros((10, crop, crop, 3), np.float32)] * (batch - len(rows)))
    arrays = sharding.shard_batch({'crops': crops}, mesh)
    _, classes, cams = sharding.to_host(fn(state, arrays['crops']), mesh)
    for r, (ex, image) in enumerate(zip(examples, images)):
      hw = image.shape[:2]
      gt = np.asarray(ex['boxes'], np.int64).reshape(-1, 4)
      firsts = {}
      for dtype in (np.float64, np.float32):
        heats = [cam_official.heat_map(cams[r][:, j], hw, crop, square=square, dtype=dtype)
                 for j in range(top)]
        firsts[dtype] = [cam_official.first_two(cam_official.dt_boxes(h), hw)[0]
                         for h in heats]
        if dtype == np.float64:
          heats64 = heats
      for h64, h32 in zip(heats64, heats):
        diff = np.abs(h64.astype(int) - h32.astype(int))
        pixels += diff.size
        differing += int((diff > 0).sum())
        worst = max(worst, int(diff.max()))
        heat_changes += int(diff.any())
      box_changes += int(any(not np.array_equal(a, c) for a, c in
                             zip(firsts[np.float64], firsts[np.float32])))
      if len(gt):
        errors = [cam_official.localization_errors(
            list(zip([int(c) for c in classes[r]], firsts[dtype])), int(ex['label']), gt, top)
                  for dtype in (np.float64, np.float32)]
        outcome_changes += np.asarray(errors[0]) != np.asarray(errors[1])
  print(f'\n{where}: {n} images of {config.data.name}/{config.data.eval_split}, top {top} '
        f'classes each ({time.time() - start:.0f} s, {platform.processor() or "cpu"})')
  print(f'heat-map pixels that differ between float64 and float32: {differing} of {pixels} '
        f'({100 * differing / pixels:.4f} %), by at most {worst}; heat maps with any '
        f'difference: {heat_changes} of {n * top}')
  print(f'images whose first box of some top-{top} class changes: {box_changes} of {n}')
  print('images whose top-k localization outcome changes, k = 1..%d: %s' % (
      top, ', '.join(str(int(v)) for v in outcome_changes)))


if __name__ == '__main__':
  app.run(main)

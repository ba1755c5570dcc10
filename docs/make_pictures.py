r"""Copies the README's pictures into docs/ from a trained default run (under 300 KB in all).

  python docs/make_pictures.py --write_pair=PAIR.png
  python -m cam_jax.main --config=configs/synthetic_gap.py --workdir=runs/synthetic
  python -m cam_jax.main --config=configs/synthetic_gap.py --workdir=runs/synthetic \
      --mode=localize --images=PAIR.png --output_dir=runs/synthetic/localize
  python docs/make_pictures.py --workdir=runs/synthetic \
      --localized=runs/synthetic/localize/PAIR.top5.png

PAIR.png (`--write_pair`): cam_synth test images 5 and 6 side by side (128×64), so that
the network sees a non-square image squashed to 64×64 and the boxes come back in the
128×64 grid.
Fig. 3 is cut to its first two rows (classes).
"""

import os
import sys

from absl import app, flags
import numpy as np
from PIL import Image

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run with figures/.')
_LOCALIZED = flags.DEFINE_string('localized', None, 'A --mode=localize top-5 picture.')
_WRITE_PAIR = flags.DEFINE_string('write_pair', None, 'Write the 128×64 test pair here, '
                                  'and nothing else.')
_ROWS = flags.DEFINE_integer('rows', 2, 'Rows (classes) of class_cams.png kept.')
_ROW_HEIGHT = 14 + 128 + 2  # title strip, 64 px image upscaled ×2, padding

DOCS = os.path.dirname(os.path.abspath(__file__))


def write_pair(path: str) -> None:
  sys.path.insert(0, os.path.dirname(DOCS))
  # pylint: disable=g-import-not-at-top
  from cam_jax import data as data_lib
  from cam_jax.data import pipeline
  from configs import synthetic_gap
  source, _ = data_lib.load_source(synthetic_gap.get_config().data, 'test')
  pair = [pipeline.decode(source[i], i) for i in (5, 6)]
  Image.fromarray(np.concatenate(pair, axis=1)).save(path)


def main(argv):
  del argv
  if _WRITE_PAIR.value:
    write_pair(_WRITE_PAIR.value)
    return
  if not (_WORKDIR.value and _LOCALIZED.value):
    raise app.UsageError('--workdir and --localized are needed (or --write_pair)')
  figures = os.path.join(_WORKDIR.value, 'figures')
  class_cams = np.asarray(Image.open(os.path.join(figures, 'class_cams.png')))
  pictures = {
      'class_cams.png': class_cams[:_ROWS.value * _ROW_HEIGHT - 2],
      'boxes.png': np.asarray(Image.open(os.path.join(figures, 'boxes.png'))),
      'localize_top5.png': np.asarray(Image.open(_LOCALIZED.value)),
  }
  total = 0
  for name, picture in pictures.items():
    path = os.path.join(DOCS, name)
    Image.fromarray(picture).save(path, optimize=True)
    total += os.path.getsize(path)
    print(f'{path}: {picture.shape[1]}×{picture.shape[0]}, {os.path.getsize(path):,} bytes')
  print(f'total {total:,} bytes')


if __name__ == '__main__':
  app.run(main)

r"""Images/s of preparing `ilsvrc2012_loc` from real-format archives of real-sized JPEGs.

  python benchmarks/prepare_ilsvrc.py [--synsets=10] [--per_synset=100] [--num_val=200]

Writes, in a temporary folder, a train tar of per-synset tars and a validation tar of
500×375 JPEGs (benchmarks/input_pipeline.py's photo-like scenes), the localization
release's CSVs, then times `python -m cam_jax.data.prepare`'s work: stream the tars,
check each image (a full decode at 1/8 scale), write ArrayRecord. Projects the full
ILSVRC-2012 (1,281,167 + 50,000 images) at that rate, on one core.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks.input_pipeline import scene_jpeg
from cam_jax import data

_SYNSETS = flags.DEFINE_integer('synsets', 10, 'Synsets in the fake train tar.')
_PER_SYNSET = flags.DEFINE_integer('per_synset', 100, 'Training images per synset.')
_NUM_VAL = flags.DEFINE_integer('num_val', 200, 'Validation images.')


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_archives(folder: str) -> int:
  """The manual files; returns their total size in bytes."""
  rng = np.random.default_rng(0)
  synsets = [f'n{10_000_000 + 37 * i:08d}' for i in range(_SYNSETS.value)]
  with tarfile.open(os.path.join(folder, 'ILSVRC2012_img_train.tar'), 'w') as outer:
    for synset in synsets:
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode='w') as inner:
        for j in range(_PER_SYNSET.value):
          _add(inner, f'{synset}_{j}.JPEG', scene_jpeg(rng))
      _add(outer, f'{synset}.tar', buf.getvalue())
  with open(os.path.join(folder, 'LOC_val_solution.csv'), 'w') as csv, \
      tarfile.open(os.path.join(folder, 'ILSVRC2012_img_val.tar'), 'w') as tar:
    csv.write('ImageId,PredictionString\n')
    for k in range(_NUM_VAL.value):
      name = f'ILSVRC2012_val_{k + 1:08d}'
      _add(tar, f'{name}.JPEG', scene_jpeg(rng))
      csv.write(f'{name},{synsets[k % len(synsets)]} 10 20 300 200 \n')
  with open(os.path.join(folder, 'LOC_synset_mapping.txt'), 'w') as f:
    f.writelines(f'{s} class {i}\n' for i, s in enumerate(synsets))
  return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    manual = os.path.join(tmp, 'manual')
    os.makedirs(manual)
    size = write_archives(manual)
    num = _SYNSETS.value * _PER_SYNSET.value + _NUM_VAL.value
    builder = data.get_builder('ilsvrc2012_loc', data_dir=os.path.join(tmp, 'tfds'))
    start = time.perf_counter()
    data.prepare(builder, manual)
    seconds = time.perf_counter() - start
    prepared = sum(os.path.getsize(os.path.join(builder.data_dir, n))
                   for n in os.listdir(builder.data_dir))
  rate = num / seconds
  full = 1_281_167 + 50_000
  print(f'{num} images ({size / 2**20:.0f} MiB of archives) prepared in {seconds:.1f} s: '
        f'{rate:.0f} images/s, {size / 2**20 / seconds:.0f} MiB/s; prepared size '
        f'{prepared / size:.2f}× the archives')
  print(f'projected full ILSVRC-2012 ({full:,} images): {full / rate / 3600:.1f} h on one core')


if __name__ == '__main__':
  app.run(main)

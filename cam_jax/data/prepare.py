"""Prepares a registered dataset as ArrayRecord, without TensorFlow.

  python -m cam_jax.data.prepare --dataset=cam_synth [--builder_config=tiny] [--data_dir=DIR]
  python -m cam_jax.data.prepare --dataset=ilsvrc2012_loc --manual_dir=FOLDER_WITH_THE_TARS
  python -m cam_jax.data.prepare --dataset=cub2011_loc --builder_config=segmentation \\
      --manual_dir=FOLDER_WITH_CUB_200_2011.tgz_AND_segmentations.tgz

A failed prepare leaves nothing that a later run would read as prepared.
"""

from absl import app, flags

from cam_jax import data

_DATASET = flags.DEFINE_string('dataset', 'cam_synth', 'Registered dataset name.')
_BUILDER_CONFIG = flags.DEFINE_string('builder_config', None, "The builder's config name.")
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default ~/tensorflow_datasets).')
_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', None, 'Folder with the archives of a manual dataset '
    '(default DATA_DIR/downloads/manual).')
_SKIP_BAD_IMAGES = flags.DEFINE_bool(
    'skip_bad_images', False, 'Skip truncated or corrupt images with a warning naming each, '
    'instead of stopping at the first.')


def main(argv):
  del argv
  kwargs = {'skip_bad_images': True} if _SKIP_BAD_IMAGES.value else {}
  builder = data.get_builder(_DATASET.value, _BUILDER_CONFIG.value, _DATA_DIR.value, **kwargs)
  data.prepare(builder, _MANUAL_DIR.value)
  print(f'{_DATASET.value}: prepared in {builder.data_dir}')


if __name__ == '__main__':
  app.run(main)

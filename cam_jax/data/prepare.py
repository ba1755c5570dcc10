"""Prepares a registered dataset as ArrayRecord, without TensorFlow.

  python -m cam_jax.data.prepare --dataset=cam_synth [--builder_config=tiny] [--data_dir=DIR]
"""

from absl import app, flags

from cam_jax import data

_DATASET = flags.DEFINE_string('dataset', 'cam_synth', 'Registered dataset name.')
_BUILDER_CONFIG = flags.DEFINE_string('builder_config', None, "The builder's config name.")
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default ~/tensorflow_datasets).')


def main(argv):
  del argv
  builder = data.get_builder(_DATASET.value, _BUILDER_CONFIG.value, _DATA_DIR.value)
  builder.download_and_prepare()
  print(f'{_DATASET.value}: prepared in {builder.data_dir}')


if __name__ == '__main__':
  app.run(main)

"""Entry point: `python -m cam_jax.main --config=configs/synthetic_gap.py --workdir=DIR`.

Only flags and one call: the logic lives in `cam_jax.train` and `cam_jax.evaluate`, which
can be imported and tested, and used from Colab.
"""

import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

from cam_jax import train

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics.jsonl, eval.json '
                               'and pictures go; re-using it resumes.', required=True)
_MODE = flags.DEFINE_enum('mode', 'train_and_evaluate', ['train_and_evaluate', 'evaluate'],
                          'Train (resuming if possible) then evaluate, or evaluate the '
                          'latest checkpoint.')
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:arg]).',
                                lock_config=True)


class _QuietLibraries(py_logging.Filter):
  """Drops INFO lines of orbax and TFDS (dozens per checkpoint), so progress lines show."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    noisy = '/orbax/' in record.pathname or '/tensorflow_datasets/' in record.pathname
    return record.levelno > py_logging.INFO or not noisy


def main(argv):
  logging.get_absl_logger().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/synthetic_gap.py')
  if _MODE.value == 'train_and_evaluate':
    train.train_and_evaluate(config, _WORKDIR.value)
  else:
    train.evaluate_checkpoint(config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)

"""Entry point: `python -m cam_jax.main --config=configs/synthetic_gap.py --workdir=DIR`.

Only flags and one call: the logic lives in `cam_jax.train`, `cam_jax.evaluators` and
`cam_jax.localize`, which can be imported and tested, and used from Colab (or, for CAMs
of images in a notebook, `cam_jax.load`).

Modes: `train_and_evaluate` (default), `evaluate`, `transfer` (paper Sec. 4:
`--config.transfer.source=WORKDIR_OR_CHECKPOINT`, the target data in `config.data`),
`units` (paper Sec. 5: the class-specific units, `[--checkpoint] [--output_dir]`),
`objects` (Sec. 4.2, Fig. 9: informative objects of cam_synth classes, `[--checkpoint]`),
`concept` (Sec. 4.2, Fig. 10: a concept detector from two folders and its CAMs), and
`localize`
(`--images=PATH_OR_GLOB [--checkpoint=PATH] [--output_dir=DIR]`: CAM pictures, boxes and
predictions.jsonl for image files). Exit status: 0 when all went well; 3 when
`--mode=localize` skipped some file it could not use (each named in a warning); 1 on
errors (a damaged checkpoint, or a workdir held by another run: the message alone).
"""

# First, before the heavy imports, so that a re-exec costs only the interpreter's start:
# the host heap in transparent huge pages (cam_jax.huge_pages).
if __name__ == '__main__':
  from cam_jax import huge_pages  # pylint: disable=g-import-not-at-top
  huge_pages.reexec_with_huge_pages()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags, logging
from ml_collections import config_flags

from cam_jax import checkpoints
from cam_jax import concepts
from cam_jax import evaluators
from cam_jax import localize
from cam_jax import logs
from cam_jax import patterns
from cam_jax import train
from cam_jax import transfer
from cam_jax import units
from cam_jax import workdir_lock

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics.jsonl, eval.json '
                               'and pictures go; re-using it resumes.', required=True)
_MODE = flags.DEFINE_enum('mode', 'train_and_evaluate',
                          ['train_and_evaluate', 'evaluate', 'localize', 'transfer',
                           'units', 'objects', 'concept'],
                          'Train (resuming if possible) then evaluate; evaluate the latest '
                          'checkpoint; localize: top-k classes, CAM boxes and pictures of '
                          '--images, exit status 3 if some file was skipped as unusable; '
                          'transfer: a linear SVM on the GAP features of '
                          'config.transfer.source for config.data, and its CAMs (paper '
                          'Sec. 4), in WORKDIR/transfer; units: the class-specific units '
                          'of the latest (or --checkpoint) checkpoint (paper Sec. 5), in '
                          'WORKDIR/units (or --output_dir); objects: the informative objects '
                          'of cam_synth classes (Sec. 4.2, Fig. 9), in WORKDIR/patterns; '
                          'concept: a concept detector from config.concept.positives and '
                          '.negatives with hard-negative mining, and its CAMs (Sec. 4.2, '
                          'Fig. 10), in WORKDIR/concept.')
_IMAGES = flags.DEFINE_string('images', None, '--mode=localize: an image file, a folder of '
                              'images (not recursive) or a glob.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, '--mode=localize, units or objects: a '
                                  'workdir, its '
                                  'checkpoints/ or best/ folder, or one step folder; default '
                                  'the latest in WORKDIR/checkpoints.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, '--mode=localize (units): where the '
                                  'pictures and predictions.jsonl (units.json) go; default '
                                  'WORKDIR/localize (WORKDIR/units).')
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:arg]).',
                                lock_config=True)


def main(argv):
  logs.quiet_libraries()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/synthetic_gap.py')
  try:
    _run(config)
  except (checkpoints.DamagedCheckpointError, workdir_lock.WorkdirLockedError) as e:
    # What the user must act on, not a bug: the message, without a traceback.
    logging.error('%s', e)
    raise SystemExit(1) from None


def _run(config) -> None:
  if _MODE.value == 'train_and_evaluate':
    train.train_and_evaluate(config, _WORKDIR.value)
  elif _MODE.value == 'evaluate':
    evaluators.evaluate_checkpoint(config, _WORKDIR.value)
  elif _MODE.value == 'transfer':
    transfer.run_transfer(config, _WORKDIR.value)
  elif _MODE.value == 'objects':
    patterns.write_informative_objects(config, _WORKDIR.value, checkpoint=_CHECKPOINT.value)
  elif _MODE.value == 'concept':
    concepts.run_concept(config, _WORKDIR.value)
  elif _MODE.value == 'units':
    units.write_units(config, _WORKDIR.value, checkpoint=_CHECKPOINT.value,
                      output_dir=_OUTPUT_DIR.value)
  else:
    if not _IMAGES.value:
      raise app.UsageError('--mode=localize needs --images=FILE_FOLDER_OR_GLOB')
    summary = localize.localize(config, _WORKDIR.value, _IMAGES.value,
                                checkpoint=_CHECKPOINT.value, output_dir=_OUTPUT_DIR.value)
    if summary.num_skipped:
      logging.error('%d file(s) skipped (named in the warnings above); exit status %d',
                    summary.num_skipped, localize.EXIT_SKIPPED)
      raise SystemExit(localize.EXIT_SKIPPED)


if __name__ == '__main__':
  app.run(main)

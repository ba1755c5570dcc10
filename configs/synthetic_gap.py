r"""A small GAP network on the embedded synthetic dataset: the whole paper on a laptop.

  python -m cam_jax.main --config=configs/synthetic_gap.py --workdir=runs/synthetic

Prepares `cam_synth` (12,000 64×64 images: 10,000 train, 1,000 validation, 1,000 test;
about 20 s) on first use, trains SmallGAP (mapping resolution 32×32) for 600 steps,
choosing best/ on the validation images, evaluates classification and localization on
the 1,000 test images, and writes eval.json, metrics.jsonl, checkpoints, CAM pictures and
the paper's figures in the workdir. Measured on 2 CPU cores: 7 min 35 s to 10 min and
1.2 GB, classification error 0.7 %, GT-known localization 73 to 81 % (it moves with the
CPU's float rounding; benchmarks/RESULTS.md).

`--config=configs/synthetic_gap.py:tiny` is a few steps on 32×32 images, for tests and
smoke runs (seconds).

`:protocols` adds the reference protocols as evaluators (`config.evals`): the released
ILSVRC pipeline of zhoubolei/CAM (`cam_official`: ten crops, dt_box) and Choe et al.'s
(`wsolevaluation`: MaxBoxAcc, MaxBoxAccV2 with OpenCV), for `--mode=evaluate` of a
trained workdir:

  python -m cam_jax.main --config=configs/synthetic_gap.py:protocols --workdir=runs/synthetic \
      --mode=evaluate

Variants combine with commas: `:tiny,protocols`.

Sweeps (`get_hyper`; README, "Sweeps") are named like variants, and each is also the
variant its trials start from:

  python -m cam_jax.sweep --config=configs/synthetic_gap.py:sweep_map_resolution \
      --root=runs/map_resolution

`sweep_map_resolution`: the paper's Sec. 3 point that localization needs a fine mapping
resolution. SmallGAP's map at 32×32 (the default), 16×16, 8×8 and 4×4 (the paper's 1/16 of
the input: 14×14 at 224), each with a 64- and a 256-channel CAM conv: 8 runs of the default
schedule, roughly 1 to 1.5 hours on 2 CPU cores (estimated, not measured, from the default
run's 8 to 10 min: the coarse maps train faster, the wide CAM conv at 32×32 about 2×
slower). `sweep_smoke`: two seeds of `tiny`, seconds each, for tests.
"""

from configs import common

_VARIANTS = ('tiny', 'protocols')
# Each sweep's base variants: `:sweep_smoke` is the `tiny` config.
_SWEEPS = {'sweep_smoke': ('tiny',), 'sweep_map_resolution': ()}


def _variants(arg: str | None) -> list[str]:
  """The variants named in `arg`, a sweep's name standing for its base variants."""
  variants = []
  for name in (v for v in (arg or '').split(',') if v):
    if name not in _VARIANTS and name not in _SWEEPS:
      known = ', '.join(repr(v) for v in (*_VARIANTS, *_SWEEPS))
      raise ValueError(f'unknown variant {name!r} of synthetic_gap.py; known: {known}')
    variants.extend(_SWEEPS.get(name, (name,)))
  return variants


def get_config(arg: str | None = None):
  config = common.get_common()
  config.data.name = 'cam_synth'
  config.data.prepare = True  # Embedded: drawn, not downloaded.
  config.data.image_size = 64
  config.data.max_boxes = 4
  # Objects are 20-50 % of the side: a random crop would often cut the labelled one away.
  config.data.train_crop = 'resize'

  config.model.name = 'small_gap'
  config.model.kwargs = common.model_options('small_gap', widths=(16, 32, 64),
                                             stage_strides=(1, 2, 1), cam_channels=64)

  config.batch_size = 64
  config.total_steps = 600
  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_steps = 50

  config.eval.baselines = ('backprop',)  # --mode=evaluate: the paper's "Backprop" rows

  config.log_every = 50
  config.eval_every = 200
  config.eval_examples_during_training = 500
  config.checkpoint_every = 200

  variants = _variants(arg)
  if 'protocols' in variants:
    # The synthetic images are 64×64: the ten crops come from a 73×73 frame
    # (protocols.official_eval.frame_size), as 224 from 256.
    config.evals.official = dict(type='cam_official', batch_size=16)
    # The operating τ chosen on the validation images, reported on test beside the max.
    config.evals.wsol = dict(type='wsolevaluation', select_split='validation')
  if 'tiny' in variants:
    config.data.builder_config = 'tiny'
    config.data.image_size = 32
    config.model.name = 'tiny_gap'
    config.model.kwargs = common.model_options('tiny_gap')
    config.batch_size = 16
    config.total_steps = 6
    config.optimizer.warmup_steps = 2
    config.log_every = 2
    config.eval_every = 4
    config.eval_examples_during_training = 32
    config.checkpoint_every = 3
    config.eval.batch_size = 16
    config.eval.num_pictures = 4
    config.figures.num_examples = 32
    config.figures.num_classes = 2
    config.figures.per_class = 2
    config.figures.num_images = 4
  return config


def get_hyper(hyper, arg: str | None = None) -> list[dict]:
  """The trials of the sweep named in `arg` (`python -m cam_jax.sweep`)."""
  sweeps = [v for v in (arg or '').split(',') if v in _SWEEPS]
  if len(sweeps) != 1:
    raise ValueError(f'name one sweep of synthetic_gap.py (got {arg!r}); known sweeps: '
                     f'{", ".join(_SWEEPS)}')
  if sweeps[0] == 'sweep_smoke':
    return hyper.sweep('config.seed', [0, 1])
  # Max pooling of these strides before the three stages: 64 / product = the map's side.
  return hyper.product(
      hyper.sweep('config.model.kwargs.stage_strides',
                  [(1, 2, 1), (1, 2, 2), (2, 2, 2), (2, 4, 2)]),
      hyper.sweep('config.model.kwargs.cam_channels', [64, 256]))

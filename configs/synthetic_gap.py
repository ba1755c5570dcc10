r"""A small GAP network on the embedded synthetic dataset: the whole paper on a laptop.

  python -m cam_jax.main --config=configs/synthetic_gap.py --workdir=runs/synthetic

Prepares `cam_synth` (12,000 64×64 images: 10,000 train, 1,000 validation, 1,000 test;
about 20 s) on first use, trains SmallGAP (mapping resolution 32×32) for 600 steps with
progressive resizing (300 at 32×32, 100 at 48×48, 200 at 64×64), choosing best/ on the
validation images, evaluates classification and localization on the 1,000 test images,
and writes eval.json, metrics.jsonl, checkpoints, CAM pictures and the paper's figures in
the workdir. Measured on 2 CPU cores (benchmarks/RESULTS.md, "A five-minute default
run"): under 5 min and 1.2 GB; classification error 2 to 3 %, GT-known localization 78 to
82 %. `--config.progressive_resizing='()'` trains the 600 steps at 64×64 (7 to 10 min):
classification error 0.7 to 1.1 %, GT-known localization 73 to 81 % (the numbers move
with the CPU's float rounding).

`--config=configs/synthetic_gap.py:tiny` is a few steps on 32×32 images, for tests and
smoke runs (seconds).

`:novel_shapes` is the target of `--mode=transfer` (paper Sec. 4): the default network's
GAP features, frozen, on six shapes it never saw (a folder dataset the first command
writes), a linear SVM on them and the SVM's CAMs of the new classes (README, "The rest of
the paper"):

  python -m cam_jax.data.novel_shapes --root=data/novel_shapes
  python -m cam_jax.main --config=configs/synthetic_gap.py:novel_shapes \
      --workdir=runs/novel_shapes --mode=transfer

`:protocols` adds the reference protocols as evaluators (`config.evals`): the released
ILSVRC pipeline of zhoubolei/CAM (`cam_official`: ten crops, dt_box) and Choe et al.'s
(`wsolevaluation`: MaxBoxAcc, MaxBoxAccV2 with OpenCV), for `--mode=evaluate` of a
trained workdir:

  python -m cam_jax.main --config=configs/synthetic_gap.py:protocols --workdir=runs/synthetic \
      --mode=evaluate

Variants combine with commas: `:tiny,protocols`.

Sweeps (`get_hyper`; README, "Sweeps") are named like variants, and each is also the
variant its trials start from. The paper's claims on the synthetic set (README, "The
paper's claims as sweeps"):

  python -m cam_jax.sweep --config=configs/synthetic_gap.py:sweep_pooling --root=runs/pooling
  python -m cam_jax.sweep --config=configs/synthetic_gap.py:sweep_saliency --root=runs/saliency
  python -m cam_jax.sweep --config=configs/synthetic_gap.py:sweep_map_resolution \
      --root=runs/map_resolution

- `sweep_pooling`: global average against global max pooling (Sec. 2, Table 1's GMP row),
  the default network otherwise: 2 runs of the default schedule.
- `sweep_saliency`: CAM against backprop saliency and Grad-CAM, through the same box stage,
  on one trained network: each trial evaluates the weights of `init_from.workdir`
  (default `runs/synthetic`, README command 1's workdir) without training
  (`total_steps=0`), with `eval.saliency` swept: minutes.
- `sweep_map_resolution`: Sec. 3's point that localization needs a fine mapping
  resolution: SmallGAP's map at 32×32 (the default), 16×16 and 8×8 of the 64×64 input: 3
  runs of the default schedule.
- `sweep_smoke`: two seeds of `tiny`, seconds each, for tests.
"""

from configs import common

_VARIANTS = ('tiny', 'protocols', 'novel_shapes')
# Each sweep's base variants: `:sweep_smoke` is the `tiny` config.
_SWEEPS = {'sweep_smoke': ('tiny',), 'sweep_pooling': (), 'sweep_saliency': ('evaluate_only',),
           'sweep_map_resolution': ()}


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
  # Progressive resizing: steps 1-300 on the images resized to 32×32 (a quarter of the
  # FLOPs), 301-400 at 48×48, the last 200 at 64×64: about 55 % of the time of 600 steps at
  # 64×64 (benchmarks/RESULTS.md, "A five-minute default run").
  config.total_steps = 600
  config.progressive_resizing = ((32, 300), (48, 400))
  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_steps = 50

  config.eval.baselines = ('backprop',)  # --mode=evaluate: the paper's "Backprop" rows

  config.log_every = 50
  # Validation evaluations (which choose best/) run at full size only (cam_jax.train):
  # here at step 500.
  config.eval_every = 250
  config.eval_examples_during_training = 500
  config.checkpoint_every = 200

  variants = _variants(arg)
  if 'protocols' in variants:
    # The synthetic images are 64×64: the ten crops come from a 73×73 frame
    # (protocols.official_eval.frame_size), as 224 from 256.
    config.evals.official = dict(type='cam_official', batch_size=16)
    # The operating τ chosen on the validation images, reported on test beside the max.
    config.evals.wsol = dict(type='wsolevaluation', select_split='validation')
  if 'novel_shapes' in variants:
    # --mode=transfer's target (paper Sec. 4): shapes the network never saw, a folder
    # dataset with boxes (python -m cam_jax.data.novel_shapes --root=data/novel_shapes).
    config.data.name = 'folders'
    config.data.folders.root = 'data/novel_shapes'
    config.data.folders.boxes_file = 'data/novel_shapes/boxes.txt'
    config.data.select_split = 'validation'
    config.transfer.source = 'runs/synthetic'
    config.transfer.validation_split = 'validation'
    config.transfer.crops = ('full', 'cam', 'gt')
  if 'evaluate_only' in variants:
    # The weights of another run, evaluated as they are: no step, the head kept.
    config.init_from.workdir = 'runs/synthetic'
    config.init_from.reinit = ()
    config.total_steps = 0
    config.optimizer.warmup_steps = 0
    config.eval_every = 0
    config.eval.baselines = ()
  if 'tiny' in variants:
    config.data.builder_config = 'tiny'
    config.data.image_size = 32
    config.model.name = 'tiny_gap'
    config.model.kwargs = common.model_options('tiny_gap')
    config.batch_size = 16
    config.total_steps = 6
    config.progressive_resizing = ()
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
  if sweeps[0] == 'sweep_pooling':
    return hyper.sweep('config.model.kwargs.pooling', ['avg', 'max'])
  if sweeps[0] == 'sweep_saliency':
    return hyper.sweep('config.eval.saliency', ['cam', 'backprop', 'gradcam'])
  # Max pooling of these strides before the three stages: 64 / product = the map's side.
  return hyper.sweep('config.model.kwargs.stage_strides', [(1, 2, 1), (1, 2, 2), (2, 2, 2)])

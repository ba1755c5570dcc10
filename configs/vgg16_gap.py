r"""VGGnet-GAP (paper Sec. 3.1, Tables 1-2) with the official fine-tuning recipe.

  python -m cam_jax.main --config=configs/vgg16_gap.py --workdir=runs/vgg16_gap

The default trains on ILSVRC-2012 (`ilsvrc2012_loc`, which the data issue adds; until then
this config stops with the list of known datasets): SGD momentum 0.9, base lr 1e-3, ×0.1
every 40k iterations, 160k iterations, weight decay 5e-4, batch 64 (DESIGN.md §4).

  python -m cam_jax.main --config=configs/vgg16_gap.py:runlocal --workdir=runs/vgg16_local

`runlocal` trains the real architecture on the synthetic dataset at 64×64 for a few
steps on a CPU (about a minute) and writes eval.json.
"""

from configs import common


def get_config(arg: str | None = None):
  config = common.get_common()
  config.data.name = 'ilsvrc2012_loc'
  config.data.image_size = 224
  config.model.name = 'vgg16_gap'
  config.batch_size = 64
  config.total_steps = 160_000
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = 'step'
  config.optimizer.decay_every = 40_000
  config.log_every = 100
  config.eval_every = 10_000
  config.eval_examples_during_training = 10_000
  config.checkpoint_every = 5_000

  if arg == 'runlocal':
    config.data.name = 'cam_synth'
    config.data.prepare = True
    config.data.image_size = 64
    config.data.max_boxes = 4
    config.batch_size = 8
    config.total_steps = 4
    config.optimizer.decay_every = 1000
    config.log_every = 2
    config.eval_every = 0
    config.checkpoint_every = 4
    config.eval.batch_size = 8
    config.eval.num_examples = 16
    config.eval.num_pictures = 2
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of vgg16_gap.py; known: 'runlocal'")
  return config

r"""The original VGG16, the baseline of Tables 1-2. It has a fully connected classifier, so
CAM does not apply and evaluation reports classification only until the backprop/Grad-
CAM baselines land.

  python -m cam_jax.main --config=configs/vgg16.py --workdir=runs/vgg16

Trains on ILSVRC-2012 (`ilsvrc2012_loc`, added by the data issue) with the recipe of
DESIGN.md §4.

  python -m cam_jax.main --config=configs/vgg16.py:runlocal --workdir=runs/vgg16_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 64×64, on a CPU.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('vgg16', arg)

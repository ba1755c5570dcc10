r"""The original AlexNet (Caffe), the baseline of Tables 1-2. It has a fully connected
classifier, so CAM does not apply and evaluation reports classification only until the
backprop/Grad-CAM baselines land.

  python -m cam_jax.main --config=configs/alexnet.py --workdir=runs/alexnet

Trains on ILSVRC-2012 (`ilsvrc2012_loc`, added by the data issue) with the recipe of
DESIGN.md §4.

  python -m cam_jax.main --config=configs/alexnet.py:runlocal --workdir=runs/alexnet_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 99×99, on a CPU.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('alexnet', arg, image_size=227, runlocal_image_size=99)

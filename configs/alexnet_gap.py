r"""AlexNet-GAP (paper Sec. 3.1, Tables 1-2; Caffe AlexNet, input 227).

  python -m cam_jax.main --config=configs/alexnet_gap.py --workdir=runs/alexnet_gap

Trains on ILSVRC-2012 (`ilsvrc2012_loc`, added by the data issue) with the recipe of
DESIGN.md §4.

  python -m cam_jax.main --config=configs/alexnet_gap.py:runlocal --workdir=runs/alexnet_local

`runlocal`: 4 steps on the synthetic dataset at 99×99 (a 5×5 map; seconds on a CPU).
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('alexnet_gap', arg, image_size=227, runlocal_image_size=99)

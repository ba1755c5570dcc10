r"""AlexNet-GAP (paper Sec. 3.1, Tables 1-2; Caffe AlexNet, input 227).

  python -m cam_jax.main --config=configs/alexnet_gap.py --workdir=runs/alexnet_gap

Trains on `ilsvrc2012_loc` (prepared from your files: README, "Preparing ILSVRC and
CUB") with the official solver, `common.set_ilsvrc_finetuning`, which says where best/ is
chosen and the result reported.

  python -m cam_jax.main --config=configs/alexnet_gap.py:runlocal --workdir=runs/alexnet_local

`runlocal`: 4 steps on the synthetic dataset at 99×99 (a 5×5 map; seconds on a CPU).
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('alexnet_gap', arg, image_size=227, runlocal_image_size=99,
                                   variant='caffe')

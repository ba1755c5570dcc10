r"""NIN (Lin et al., 2014; Caffe's nin_imagenet), the GAP baseline of Tables 1-2: its last
1×1 conv gives one map per class, which is its CAM.

  python -m cam_jax.main --config=configs/nin.py --workdir=runs/nin

Trains on `ilsvrc2012_loc` (prepared from your files: README, "Preparing ILSVRC and
CUB") with the official solver, `common.set_ilsvrc_finetuning`, which says where best/ is
chosen and the result reported.

  python -m cam_jax.main --config=configs/nin.py:runlocal --workdir=runs/nin_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 99×99, on a CPU.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('nin', arg, image_size=227, runlocal_image_size=99)

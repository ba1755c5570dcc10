r"""The original GoogLeNet (bvlc_googlenet, no auxiliary heads), the baseline of Tables 1-2.
It ends in global average pooling and one linear layer, so its CAM has a 7×7 mapping
resolution at 224.

  python -m cam_jax.main --config=configs/googlenet.py --workdir=runs/googlenet

Trains on `ilsvrc2012_loc` (prepared from your files: README, "Preparing ILSVRC and
CUB") with the official solver, `common.set_ilsvrc_finetuning`, which says where best/ is
chosen and the result reported.

  python -m cam_jax.main --config=configs/googlenet.py:runlocal --workdir=runs/googlenet_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 64×64, on a CPU.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('googlenet', arg, variant='caffe')

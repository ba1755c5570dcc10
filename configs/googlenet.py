r"""The original GoogLeNet (bvlc_googlenet, no auxiliary heads), the baseline of Tables 1-2.
It ends in global average pooling and one linear layer, so its CAM has a 7×7 mapping
resolution at 224.

  python -m cam_jax.main --config=configs/googlenet.py --workdir=runs/googlenet

Trains on ILSVRC-2012 (`ilsvrc2012_loc`, added by the data issue) with the recipe of
DESIGN.md §4.

  python -m cam_jax.main --config=configs/googlenet.py:runlocal --workdir=runs/googlenet_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 64×64, on a CPU.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('googlenet', arg)

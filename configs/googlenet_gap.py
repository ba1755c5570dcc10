r"""GoogLeNet-GAP (paper Sec. 3.1, Tables 1-2; bvlc_googlenet to inception4e, then the
official CAM_conv 3×3/1024 group 2, global average pooling and CAM_fc).

  python -m cam_jax.main --config=configs/googlenet_gap.py --workdir=runs/googlenet_gap

Trains on `ilsvrc2012_loc` (prepared from your files: README, "Preparing ILSVRC and
CUB") with the official solver, `common.set_ilsvrc_finetuning`, which says where best/ is
chosen and the result reported.
`--config.model.kwargs.variant=torchvision` builds torchvision's layout.

  python -m cam_jax.main --config=configs/googlenet_gap.py:runlocal --workdir=runs/googlenet_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 64×64 (about 30 s
on 2 CPU cores), then eval.json.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('googlenet_gap', arg, variant='caffe')

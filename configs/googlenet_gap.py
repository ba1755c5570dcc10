r"""GoogLeNet-GAP (paper Sec. 3.1, Tables 1-2; bvlc_googlenet to inception4e, then the
official CAM_conv 3×3/1024 group 2, global average pooling and CAM_fc).

  python -m cam_jax.main --config=configs/googlenet_gap.py --workdir=runs/googlenet_gap

Trains on ILSVRC-2012 (`ilsvrc2012_loc`), prepared once from your downloaded files (README,
"Preparing ILSVRC and CUB"):

  python -m cam_jax.data.prepare --dataset=ilsvrc2012_loc --manual_dir=DIR

with the official fine-tuning solver (`set_ilsvrc_finetuning` in configs/common.py: SGD
momentum 0.9, base lr 1e-3 ×0.1 every 40k iterations, 160k iterations, weight decay 5e-4,
batch 64). The best checkpoint (workdir/best/) is chosen on 10,000 training images held
out from training (`config.data.holdout`, `config.data.select_split='holdout'`); the
result is reported on the validation split.
`--config.model.kwargs.variant=torchvision` builds torchvision's layout.

  python -m cam_jax.main --config=configs/googlenet_gap.py:runlocal --workdir=runs/googlenet_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 64×64 (about 30 s
on 2 CPU cores), then eval.json.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('googlenet_gap', arg, variant='caffe')

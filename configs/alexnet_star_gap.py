r"""AlexNet*-GAP (paper Sec. 3.1): AlexNet-GAP with two 3×3 conv layers before the 1024 conv.

`--config.model.name=alexnet_star_gap_official` builds the released
deploy_alexnetplusCAM_imagenet.prototxt instead (11×11 map, no 1024 conv).

  python -m cam_jax.main --config=configs/alexnet_star_gap.py --workdir=runs/alexnet_star_gap

Trains on ILSVRC-2012 (`ilsvrc2012_loc`), prepared once from your downloaded files (README,
"Preparing ILSVRC and CUB"):

  python -m cam_jax.data.prepare --dataset=ilsvrc2012_loc --manual_dir=DIR

with the official fine-tuning solver (`set_ilsvrc_finetuning` in configs/common.py: SGD
momentum 0.9, base lr 1e-3 ×0.1 every 40k iterations, 160k iterations, weight decay 5e-4,
batch 64). The best checkpoint (workdir/best/) is chosen on 10,000 training images held
out from training (`config.data.holdout`, `config.data.select_split='holdout'`); the
result is reported on the validation split.

  python -m cam_jax.main --config=configs/alexnet_star_gap.py:runlocal --workdir=runs/as_local

`runlocal`: 4 steps on the synthetic dataset at 99×99 (seconds on a CPU).
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('alexnet_star_gap', arg, image_size=227,
                                   runlocal_image_size=99)

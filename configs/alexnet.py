r"""The original AlexNet (Caffe), the baseline of Tables 1-2. It has a fully connected
classifier, so CAM does not apply: with the default `eval.saliency='cam'`, evaluation
reports classification only, and `--config.eval.saliency=backprop` (or `gradcam`) localizes
with that saliency baseline instead.

  python -m cam_jax.main --config=configs/alexnet.py --workdir=runs/alexnet

Trains on ILSVRC-2012 (`ilsvrc2012_loc`), prepared once from your downloaded files (README,
"Preparing ILSVRC and CUB"):

  python -m cam_jax.data.prepare --dataset=ilsvrc2012_loc --manual_dir=DIR

with the official fine-tuning solver (`set_ilsvrc_finetuning` in configs/common.py: SGD
momentum 0.9, base lr 1e-3 ×0.1 every 40k iterations, 160k iterations, weight decay 5e-4,
batch 64). The best checkpoint (workdir/best/) is chosen on 10,000 training images held
out from training (`config.data.holdout`, `config.data.select_split='holdout'`); the
result is reported on the validation split.

  python -m cam_jax.main --config=configs/alexnet.py:runlocal --workdir=runs/alexnet_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 99×99, on a CPU.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('alexnet', arg, image_size=227, runlocal_image_size=99)

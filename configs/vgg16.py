r"""The original VGG16, the baseline of Tables 1-2. It has a fully connected classifier, so
CAM does not apply: with the default `eval.saliency='cam'`, evaluation reports
classification only, and `--config.eval.saliency=backprop` (or `gradcam`) localizes with
that saliency baseline instead.

  python -m cam_jax.main --config=configs/vgg16.py --workdir=runs/vgg16

Trains on `ilsvrc2012_loc` (prepared from your files: README, "Preparing ILSVRC and
CUB") with the official solver, `common.set_ilsvrc_finetuning`, which says where best/ is
chosen and the result reported.

  python -m cam_jax.main --config=configs/vgg16.py:runlocal --workdir=runs/vgg16_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 64×64, on a CPU.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('vgg16', arg)

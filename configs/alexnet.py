r"""The original AlexNet (Caffe), the baseline of Tables 1-2. It has a fully connected
classifier, so CAM does not apply: with the default `eval.saliency='cam'`, evaluation
reports classification only, and `--config.eval.saliency=backprop` (or `gradcam`) localizes
with that saliency baseline instead.

  python -m cam_jax.main --config=configs/alexnet.py --workdir=runs/alexnet

Trains on `ilsvrc2012_loc` (prepared from your files: README, "Preparing ILSVRC and
CUB") with the official solver, `common.set_ilsvrc_finetuning`, which says where best/ is
chosen and the result reported.

  python -m cam_jax.main --config=configs/alexnet.py:runlocal --workdir=runs/alexnet_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 99×99, on a CPU.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('alexnet', arg, image_size=227, runlocal_image_size=99,
                                   variant='caffe')

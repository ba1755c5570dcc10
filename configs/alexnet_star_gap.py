r"""AlexNet*-GAP (paper Sec. 3.1): AlexNet-GAP with two 3×3 conv layers before the 1024 conv.

`--config.model.name=alexnet_star_gap_official` builds the released
deploy_alexnetplusCAM_imagenet.prototxt instead (11×11 map, no 1024 conv).

  python -m cam_jax.main --config=configs/alexnet_star_gap.py --workdir=runs/alexnet_star_gap

Trains on `ilsvrc2012_loc` (prepared from your files: README, "Preparing ILSVRC and
CUB") with the official solver, `common.set_ilsvrc_finetuning`, which says where best/ is
chosen and the result reported.

  python -m cam_jax.main --config=configs/alexnet_star_gap.py:runlocal --workdir=runs/as_local

`runlocal`: 4 steps on the synthetic dataset at 99×99 (seconds on a CPU).
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('alexnet_star_gap', arg, image_size=227,
                                   runlocal_image_size=99)

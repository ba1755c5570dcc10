r"""VGGnet-GAP (paper Sec. 3.1, Tables 1-2) with the official fine-tuning recipe.

  python -m cam_jax.main --config=configs/vgg16_gap.py --workdir=runs/vgg16_gap

Trains on `ilsvrc2012_loc` (prepared from your files: README, "Preparing ILSVRC and
CUB") with the official solver, `common.set_ilsvrc_finetuning`, which says where best/ is
chosen and the result reported.

  python -m cam_jax.main --config=configs/vgg16_gap.py:runlocal --workdir=runs/vgg16_local

`runlocal`: the real architecture, 4 steps on the synthetic dataset at 64×64 (about 20 s
on 2 CPU cores), then eval.json.
"""

from configs import common


def get_config(arg: str | None = None):
  return common.get_network_config('vgg16_gap', arg)

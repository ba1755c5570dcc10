"""A small GAP network that trains on a laptop CPU in minutes.

The shape of the paper's GAP networks at a toy scale: conv blocks, one added 3×3
convolution (the paper adds 1024 channels; here `cam_channels`), global average (or
max) pooling and one linear layer.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cam_jax.models import layers


class SmallGAP(nnx.Module):
  """Conv stages (`blocks_per_stage` blocks each, max pooling before each stage with
  `stage_strides`; the mapping resolution is the input over their product), an added 3×3
  conv, then global pooling and a linear head.

  Model contract (that of `cam_jax.models`): `model(images_BHWC, train) -> (logits_BC,
  aux)` with `aux['features']` the last conv map `B×h×w×K`; the head is `self.head`.
  """

  def __init__(self, num_classes: int, *, widths: Sequence[int] = (32, 64, 128),
               blocks_per_stage: int | Sequence[int] = 2,
               stage_strides: Sequence[int] | None = None, cam_channels: int = 256,
               pooling: str = 'avg', batch_norm: bool = True,
               in_channels: int = 3, dtype=jnp.float32, rngs: nnx.Rngs):
    layers.check_pooling(pooling)
    self.pooling = pooling
    # Max pooling of this stride before each stage; default: 2 before all but the first.
    self.stage_strides = tuple(stage_strides or (1,) + (2,) * (len(widths) - 1))
    if len(self.stage_strides) != len(widths):
      raise ValueError(f'stage_strides {self.stage_strides} needs one entry per stage of '
                       f'widths {tuple(widths)}')
    blocks = ((blocks_per_stage,) * len(widths) if isinstance(blocks_per_stage, int)
              else tuple(blocks_per_stage))
    if len(blocks) != len(widths):
      raise ValueError(f'blocks_per_stage {blocks} needs one entry per stage of widths '
                       f'{tuple(widths)}')
    stages = []
    ch = in_channels
    for width, num_blocks in zip(widths, blocks):
      stage = []
      for _ in range(num_blocks):
        stage.append(layers.ConvBNReLU(ch, width, 3, batch_norm=batch_norm, dtype=dtype,
                                       rngs=rngs))
        ch = width
      stages.append(nnx.List(stage))
    self.stages = nnx.List(stages)
    # The layer the paper adds before pooling: it gives the CAM its channels.
    self.cam_conv = layers.ConvBNReLU(ch, cam_channels, 3, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(cam_channels, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, images_BHWC: jax.Array, train: bool = False):
    x = images_BHWC
    for stride, stage in zip(self.stage_strides, self.stages):
      if stride > 1:
        x = layers.max_pool(x, stride, stride)
      for block in stage:
        x = block(x, train)
    feats_BhwK = self.cam_conv(x, train)
    return self.logits_from_features(feats_BhwK, train), {'features': feats_BhwK}

  def logits_from_features(self, feats_BhwK: jax.Array, train: bool = False) -> jax.Array:
    """What follows `aux['features']`: global pooling and `head` (Grad-CAM's d/df).

    `train` is unused (no dropout here); it keeps the signature of the other models.
    """
    del train
    return self.head(layers.global_pool(feats_BhwK, self.pooling))

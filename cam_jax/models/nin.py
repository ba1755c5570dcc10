"""Network in Network (Lin et al., 2014): Caffe's model-zoo "nin_imagenet".

Four mlpconv blocks (a k×k conv and two 1×1 "cccp" convs, each + ReLU), max pooling 3/2
after the first three (rounding up, as in Caffe), dropout 0.5 after pool3, and the last
block ending in cccp8 with `num_classes` outputs + ReLU; global average pooling of those
maps is the logits (Caffe: pool4, 6×6 average at 224). There is no linear layer.

Sizes: 224 → conv1 54 → pool 27 → pool 13 → pool 6, so the mapping resolution is 6×6;
227 → 55 → 27 → 13 → 6, also 6×6.

CAM: NIN's class maps are cccp8's ReLU'd outputs themselves (map k = class k), and
`logits == mean_hw(aux['features'])`. Moving cccp8 into a linear `head` applied after
pooling would be exact only without the ReLU that follows it, so the original is kept:
`aux['features']` (and `aux['class_maps']`) are those `B×h×w×num_classes` maps and there
is no `head` attribute; `models.head_params` refuses NIN, and `models.cam_weights` gives
the identity (class map c is feature c, no bias).

Parameters for 1000 classes: 7,595,176 (counted in tests/models/test_nin.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from cam_jax.models import layers

# Per block: (out_channels, kernel, stride, padding) of its k×k conv; two 1×1 cccp follow.
_BLOCKS = ((96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1), (1024, 3, 1, 1))


class NIN(nnx.Module):
  """nin_imagenet: `model(images_BHWC, train) -> (logits_BC, aux)`.

  `features_are_class_maps`: feature k is the map of class k (see the module docstring).

  With `batch_norm=True` every conv but cccp8 (the classifier) gets BatchNorm.
  """

  features_are_class_maps = True
  pooling = 'avg'

  def __init__(self, num_classes: int, *, batch_norm: bool = False, dropout_rate: float = 0.5,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.num_classes = num_classes
    conv = functools.partial(layers.ConvBNReLU, dtype=dtype, param_dtype=param_dtype,
                             rngs=rngs)
    blocks, ch = [], 3
    for i, (out, kernel, stride, pad) in enumerate(_BLOCKS):
      last = i == len(_BLOCKS) - 1
      blocks.append(nnx.List([
          conv(ch, out, kernel, stride=stride, padding=pad, batch_norm=batch_norm),
          conv(out, out, 1, padding=0, batch_norm=batch_norm),
          conv(out, num_classes if last else out, 1, padding=0,
               batch_norm=batch_norm and not last),
      ]))
      ch = out
    self.blocks = nnx.List(blocks)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, images_BHWC: jax.Array, train: bool = False):
    x = images_BHWC
    for i, block in enumerate(self.blocks):
      if i > 0:
        x = layers.max_pool(x, 3, 2, ceil_mode=True)
      if i == len(self.blocks) - 1:
        x = self.dropout(x, deterministic=not train)
      for conv in block:
        x = conv(x, train)
    maps_BhwC = x
    return self.logits_from_features(maps_BhwC, train), {'features': maps_BhwC,
                                                         'class_maps': maps_BhwC}

  def logits_from_features(self, maps_BhwC: jax.Array, train: bool = False) -> jax.Array:
    """What follows `aux['features']`: global average pooling (Grad-CAM's d/df).

    `train` is unused (no dropout after cccp8); it keeps the signature of the others.
    """
    del train
    return layers.global_pool(maps_BhwC, 'avg')

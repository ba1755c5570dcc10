"""VGG16 (Simonyan & Zisserman, 2015) and VGGnet-GAP (paper Sec. 3.1).

VGG16 is the same in Caffe and torchvision: 13 3×3 convolutions with biases in five
stages. VGGnet-GAP follows the official deploy_vgg16CAM.prototxt of zhoubolei/CAM:
conv5_3 + ReLU, then `CAM_conv` (3×3, pad 1, 1024 outputs, **group 2**) + ReLU, a 14×14
average pooling (GAP), dropout 0.5 and `CAM_fc` to the classes; pool5 and the fully
connected layers are removed. The mapping resolution is input / 16 (14×14 at 224).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from cam_jax.models import layers

# Output channels of each conv; 'M' is a 2×2/2 max pooling.
VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M',
             512, 512, 512)


class VGGTrunk(nnx.Module):
  """conv1_1 .. conv5_3 (+ ReLU); pool5 is left to the heads."""

  def __init__(self, *, batch_norm: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    layers_, ch = [], 3
    for v in VGG16_CFG:
      if v == 'M':
        layers_.append(None)
      else:
        layers_.append(layers.ConvBNReLU(ch, v, 3, padding=1, batch_norm=batch_norm,
                                         dtype=dtype, param_dtype=param_dtype, rngs=rngs))
        ch = v
    self.layers = nnx.List(layers_)
    self.out_channels = ch

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for layer in self.layers:
      x = layers.max_pool(x, 2, 2) if layer is None else layer(x, train)
    return x


class VGG16GAP(layers.GAPNetwork):
  """VGGnet-GAP (and -GMP with `pooling='max'`): `model(images_BHWC, train)`.

  `aux['features']` is the ReLU'd `CAM_conv` map `B×h×w×cam_channels`; `self.head` is
  `CAM_fc`. `cam_groups=2` as in the official prototxt (1 gives 20,459,304 parameters
  for 1000 classes, 2 gives 18,100,008).
  """

  def __init__(self, num_classes: int, *, cam_channels: int = 1024, cam_groups: int = 2,
               pooling: str = 'avg', batch_norm: bool = False, dropout_rate: float = 0.5,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.trunk = VGGTrunk(batch_norm=batch_norm, dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs)
    self.add_cam_head(self.trunk.out_channels, num_classes, cam_channels=cam_channels,
                      cam_groups=cam_groups, pooling=pooling, batch_norm=batch_norm,
                      dropout_rate=dropout_rate, dtype=dtype, param_dtype=param_dtype,
                      rngs=rngs)


VGG16GMP = functools.partial(VGG16GAP, pooling='max')


class VGG16(nnx.Module):
  """The original VGG16 with its fully connected classifier (torchvision layout).

  `aux['features']` is conv5_3 after ReLU (14×14 at 224). There is no `head`: the
  classifier is an MLP, so `models.head_params` refuses it and CAM does not apply.
  """

  def __init__(self, num_classes: int, *, batch_norm: bool = False, dropout_rate: float = 0.5,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.trunk = VGGTrunk(batch_norm=batch_norm, dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs)
    dense = functools.partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc6 = dense(512 * 7 * 7, 4096)
    self.fc7 = dense(4096, 4096)
    self.classifier = dense(4096, num_classes)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, images_BHWC: jax.Array, train: bool = False):
    feats_BhwK = self.trunk(images_BHWC, train)
    return self.logits_from_features(feats_BhwK, train), {'features': feats_BhwK}

  def logits_from_features(self, feats_BhwK: jax.Array, train: bool = False) -> jax.Array:
    """What follows `aux['features']` (conv5_3): pool5, the classifier (Grad-CAM's d/df)."""
    x = layers.adaptive_avg_pool(layers.max_pool(feats_BhwK, 2, 2), (7, 7))
    # Flattened in (h, w, c) order; torchvision flattens (c, h, w): same count, other layout.
    x = x.reshape(x.shape[0], -1)
    x = self.dropout(nnx.relu(self.fc6(x)), deterministic=not train)
    x = self.dropout(nnx.relu(self.fc7(x)), deterministic=not train)
    return self.classifier(x)

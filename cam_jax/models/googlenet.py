"""GoogLeNet (Inception v1, Szegedy et al. 2015), GoogLeNet-GAP and -GMP (paper Sec. 3.1).

Two variants of the trunk, chosen with `variant`:

- `'caffe'`: bvlc_googlenet, the network the paper fine-tuned. Convolutions with biases,
  no BatchNorm (`batch_norm=True` adds it, for training from scratch), LRN (size 5,
  alpha 1e-4, beta 0.75) after pool1 and after conv2/3x3, true 5×5 convolutions in the
  5×5 branch, every max pooling rounded up (Caffe always uses ceil), pool4 3×3/2.
- `'torchvision'`: torchvision.models.googlenet. BatchNorm after every convolution
  (convolutions without bias; always on, whatever `batch_norm` says), a 3×3 convolution in
  the "5×5" branch (torchvision's known deviation, pytorch/vision#906), no LRN, ceil_mode
  max poolings, pool4 2×2/2, BatchNorm epsilon 1e-3 (torchvision's), so that its ImageNet
  weights load exactly (cam_jax.pretrained). Differences kept on purpose: the default
  dropout is Caffe's 0.4 (torchvision: 0.2), and torchvision's `transform_input`
  re-normalisation of its ported weights is the input convention 'inception'
  (cam_jax.data.conventions), applied by the input pipeline.

Both stems are conv1 7×7/2 pad 3 (64), pool1 3×3/2, conv2 1×1 (64), conv3 3×3 pad 1
(192), pool2 3×3/2; Caffe calls conv2/conv3 `conv2/3x3_reduce` and `conv2/3x3`. The
auxiliary classifiers (loss1, loss2) are never built.

GoogLeNet-GAP follows the official `models/deploy_googlenetCAM.prototxt` of
zhoubolei/CAM: bvlc_googlenet up to `inception_4e/output` (832 channels, 14×14 at 224;
pool4, inception5a/5b, pool5, dropout and loss3/classifier removed), then `CAM_conv`
(Convolution, 1024 outputs, kernel 3, pad 1, stride 1, **group 2**) + `CAM_relu`,
`CAM_pool` (AVE, kernel 14, stride 14: global average pooling at 224; no dropout) and
`CAM_fc` (InnerProduct, 1000 outputs). Here `cam_groups=2` is the default to match it;
the paper's text just says "3×3, 1024 units", which is `cam_groups=1`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from cam_jax.models import layers

VARIANTS = ('caffe', 'torchvision')

# Inception blocks as in the paper's Table 1 and torchvision:
# (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj); the output is 1x1+3x3+5x5+proj.
INCEPTION_CFG = {
    '3a': (192, 64, 96, 128, 16, 32, 32),
    '3b': (256, 128, 128, 192, 32, 96, 64),
    '4a': (480, 192, 96, 208, 16, 48, 64),
    '4b': (512, 160, 112, 224, 24, 64, 64),
    '4c': (512, 128, 128, 256, 24, 64, 64),
    '4d': (512, 112, 144, 288, 32, 64, 64),
    '4e': (528, 256, 160, 320, 32, 128, 128),
    '5a': (832, 256, 160, 320, 32, 128, 128),
    '5b': (832, 384, 192, 384, 48, 128, 128),
}


def _check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}')


def _bn_epsilon(variant: str) -> float:
  """torchvision's BasicConv2d uses 1e-3; Caffe with `batch_norm=True` our usual 1e-5."""
  return 1e-3 if variant == 'torchvision' else 1e-5


class Inception(nnx.Module):
  """Four parallel branches concatenated on channels: 1×1; 1×1 → 3×3; 1×1 → 5×5 (3×3 in
  torchvision); 3×3/1 max pool → 1×1 projection. Spatial size is preserved. Every conv has
  BatchNorm in the torchvision variant, and in the caffe one with `batch_norm=True`."""

  def __init__(self, in_ch: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
               ch5x5: int, pool_proj: int, *, variant: str = 'caffe', batch_norm: bool = False,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    _check_variant(variant)
    conv = functools.partial(layers.ConvBNReLU, batch_norm=batch_norm or variant == 'torchvision',
                             bn_epsilon=_bn_epsilon(variant), dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)
    k5 = 5 if variant == 'caffe' else 3
    self.conv1x1 = conv(in_ch, ch1x1, 1, padding=0)
    self.reduce3x3 = conv(in_ch, ch3x3red, 1, padding=0)
    self.conv3x3 = conv(ch3x3red, ch3x3, 3, padding=1)
    self.reduce5x5 = conv(in_ch, ch5x5red, 1, padding=0)
    self.conv5x5 = conv(ch5x5red, ch5x5, k5, padding=k5 // 2)
    self.pool_proj = conv(in_ch, pool_proj, 1, padding=0)
    self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    pooled = layers.max_pool(x, 3, 1, padding=1, ceil_mode=True)
    return jnp.concatenate([
        self.conv1x1(x, train),
        self.conv3x3(self.reduce3x3(x, train), train),
        self.conv5x5(self.reduce5x5(x, train), train),
        self.pool_proj(pooled, train),
    ], axis=-1)


class GoogLeNetTrunk(nnx.Module):
  """conv1 .. `last` (an Inception block name: '4e' for the GAP networks, '5b' for the
  original), ReLU'd. Output stride 16 through '4e', 32 through '5a'/'5b'."""

  def __init__(self, *, variant: str = 'caffe', batch_norm: bool = False, last: str = '5b',
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    _check_variant(variant)
    if last not in INCEPTION_CFG:
      raise ValueError(f'last must be one of {tuple(INCEPTION_CFG)}, got {last!r}')
    self.variant = variant
    bn = batch_norm or variant == 'torchvision'
    conv = functools.partial(layers.ConvBNReLU, batch_norm=bn, bn_epsilon=_bn_epsilon(variant),
                             dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = conv(3, 64, 7, stride=2, padding=3)
    self.conv2 = conv(64, 64, 1, padding=0)
    self.conv3 = conv(64, 192, 3, padding=1)
    names = list(INCEPTION_CFG)
    self.block_names = tuple(names[:names.index(last) + 1])
    self.blocks = nnx.List([
        Inception(*INCEPTION_CFG[name], variant=variant, batch_norm=bn, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs) for name in self.block_names])
    self.out_channels = self.blocks[-1].out_channels

  def __call__(self, images_BHWC: jax.Array, train: bool = False) -> jax.Array:
    caffe = self.variant == 'caffe'
    lrn = layers.local_response_norm if caffe else (lambda x: x)
    pool = functools.partial(layers.max_pool, ceil_mode=True)
    x = pool(self.conv1(images_BHWC, train), 3, 2)
    x = self.conv3(self.conv2(lrn(x), train), train)
    x = pool(lrn(x), 3, 2)
    for name, block in zip(self.block_names, self.blocks):
      if name == '4a':  # pool3
        x = pool(x, 3, 2)
      elif name == '5a':  # pool4: 3×3/2 in Caffe, 2×2/2 in torchvision (same size at 224)
        x = pool(x, 3, 2) if caffe else pool(x, 2, 2)
      x = block(x, train)
    return x


class GoogLeNetGAP(layers.GAPNetwork):
  """GoogLeNet-GAP (and -GMP with `pooling='max'`): `model(images_BHWC, train)`.

  The trunk through inception4e, then `cam_conv` (3×3, pad 1, `cam_channels`, groups
  `cam_groups`, ReLU; BatchNorm only with `batch_norm=True`), global pooling, optional
  dropout (none in the official prototxt) and `self.head`. `aux['features']` is the
  ReLU'd `cam_conv` map `B×h×w×cam_channels`, h×w = input / 16 (14×14 at 224).
  """

  def __init__(self, num_classes: int, *, variant: str = 'caffe', batch_norm: bool = False,
               cam_channels: int = 1024, cam_groups: int = 2, pooling: str = 'avg',
               dropout_rate: float = 0.0, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    layers.check_pooling(pooling)  # before building the trunk, which takes seconds
    self.trunk = GoogLeNetTrunk(variant=variant, batch_norm=batch_norm, last='4e',
                                dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.add_cam_head(self.trunk.out_channels, num_classes, cam_channels=cam_channels,
                      cam_groups=cam_groups, pooling=pooling, batch_norm=batch_norm,
                      dropout_rate=dropout_rate, dtype=dtype, param_dtype=param_dtype,
                      rngs=rngs)


GoogLeNetGMP = functools.partial(GoogLeNetGAP, pooling='max')


class GoogLeNet(nnx.Module):
  """The original GoogLeNet without auxiliary classifiers: trunk through inception5b,
  global average pooling (Caffe's pool5 7×7/1 at 224), dropout, `self.head` (1024 →
  classes). It is itself a GAP network, so CAM applies to `aux['features']`, the
  inception5b output `B×h×w×1024`, h×w = input / 32 (7×7 at 224).
  """

  def __init__(self, num_classes: int, *, variant: str = 'caffe', batch_norm: bool = False,
               dropout_rate: float = 0.4, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.pooling = 'avg'
    self.trunk = GoogLeNetTrunk(variant=variant, batch_norm=batch_norm, last='5b',
                                dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.head = nnx.Linear(self.trunk.out_channels, num_classes, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)

  def __call__(self, images_BHWC: jax.Array, train: bool = False):
    feats_BhwK = self.trunk(images_BHWC, train)
    return self.logits_from_features(feats_BhwK, train), {'features': feats_BhwK}

  def logits_from_features(self, feats_BhwK: jax.Array, train: bool = False) -> jax.Array:
    """What follows `aux['features']` (inception5b): GAP, dropout, `head` (Grad-CAM's d/df)."""
    pooled_BK = self.dropout(layers.global_pool(feats_BhwK, 'avg'), deterministic=not train)
    return self.head(pooled_BK)

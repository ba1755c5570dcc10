"""AlexNet (Krizhevsky et al., 2012), AlexNet-GAP and AlexNet*-GAP (paper Sec. 3.1).

The trunk (conv1 .. conv5, each followed by ReLU) comes in three `variant`s:

- 'caffe': bvlc_alexnet as in Caffe's model zoo, the net the paper fine-tuned: 96/256/
  384/384/256 channels, groups of 2 in conv2, conv4 and conv5, LRN (size 5, alpha 1e-4,
  beta 0.75) *before* pool1 and pool2 (bvlc_alexnet's order). Pooling rounds up (Caffe);
  227 gives conv5 13×13 (224 too).
- 'caffenet': the same layers in bvlc_reference_caffenet's order, LRN *after* pool1 and
  pool2. This is the order of the official deploy_alexnetplusCAM_imagenet.prototxt
  (zhoubolei/CAM). Same parameters as 'caffe'.
- 'torchvision': torchvision.models.alexnet: 64/192/384/256/256 channels, conv1 pad 2,
  no groups, no LRN, pooling rounds down; 224 gives conv5 13×13.

Models (the contract of `cam_jax.models`: `model(images_BHWC, train) -> (logits_BC, aux)`):

- `AlexNet`: the original, pool5 then the fully connected classifier. No `head`
  attribute: `models.head_params` refuses it; `aux['features']` is conv5 after ReLU.
- `AlexNetGAP`: conv5, `cam_conv` 3×3/1 pad 1 1024 + ReLU, GAP, dropout, `head`.
  Mapping resolution 13×13.
- `AlexNetStarGAP`: exactly what the official prototxt has after conv4, see its docstring.
  Mapping resolution 11×11.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from cam_jax.models import layers

VARIANTS = ('caffe', 'caffenet', 'torchvision')

# (out_channels, kernel, stride, padding, groups) of conv1 .. conv5.
_TRUNKS = {
    'caffe': ((96, 11, 4, 0, 1), (256, 5, 1, 2, 2), (384, 3, 1, 1, 1), (384, 3, 1, 1, 2),
              (256, 3, 1, 1, 2)),
    'torchvision': ((64, 11, 4, 2, 1), (192, 5, 1, 2, 1), (384, 3, 1, 1, 1),
                    (256, 3, 1, 1, 1), (256, 3, 1, 1, 1)),
}
_TRUNKS['caffenet'] = _TRUNKS['caffe']


def _check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}')


class AlexNetTrunk(nnx.Module):
  """conv1 .. conv5 (+ ReLU) with pool1/pool2 and, for the Caffe variants, LRN.

  `conv5_channels` overrides conv5's width (AlexNet*-GAP's prototxt has 384).
  """

  def __init__(self, *, variant: str = 'caffe', conv5_channels: int | None = None,
               batch_norm: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    _check_variant(variant)
    self.variant = variant
    convs, ch = [], 3
    for i, (out, kernel, stride, pad, groups) in enumerate(_TRUNKS[variant]):
      if i == 4 and conv5_channels is not None:
        out = conv5_channels
      convs.append(layers.ConvBNReLU(ch, out, kernel, stride=stride, padding=pad,
                                     groups=groups, batch_norm=batch_norm, dtype=dtype,
                                     param_dtype=param_dtype, rngs=rngs))
      ch = out
    self.convs = nnx.List(convs)
    self.out_channels = ch

  @property
  def ceil_mode(self) -> bool:
    """Caffe rounds pooled sizes up, torchvision down."""
    return self.variant != 'torchvision'

  def _pool_and_norm(self, x: jax.Array) -> jax.Array:
    pool = functools.partial(layers.max_pool, window=3, stride=2, ceil_mode=self.ceil_mode)
    if self.variant == 'caffe':
      return pool(layers.local_response_norm(x))
    if self.variant == 'caffenet':
      return layers.local_response_norm(pool(x))
    return pool(x)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, conv in enumerate(self.convs):
      x = conv(x, train)
      if i < 2:
        x = self._pool_and_norm(x)
    return x


class AlexNet(nnx.Module):
  """The original AlexNet with its fully connected classifier (torchvision order).

  pool5 (3/2), adaptive average pooling to 6×6 (the identity at 224/227; it lets any
  input size through, as in torchvision), then Dropout, fc6 4096, ReLU, Dropout, fc7
  4096, ReLU, `classifier` (fc8). `aux['features']` is conv5 after ReLU, before pool5.
  There is no `head`: the classifier is an MLP, so `models.head_params` refuses it.
  Flattening is in (h, w, c) order; torchvision flattens (c, h, w) (same count).

  Parameters for 1000 classes: 61,100,840 ('torchvision'), 60,965,224 ('caffe',
  'caffenet'), as tests/models/test_alexnet.py counts by hand.
  """

  def __init__(self, num_classes: int, *, variant: str = 'caffe', batch_norm: bool = False,
               dropout_rate: float = 0.5, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.trunk = AlexNetTrunk(variant=variant, batch_norm=batch_norm, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)
    dense = functools.partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc6 = dense(self.trunk.out_channels * 6 * 6, 4096)
    self.fc7 = dense(4096, 4096)
    self.classifier = dense(4096, num_classes)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, images_BHWC: jax.Array, train: bool = False):
    feats_BhwK = self.trunk(images_BHWC, train)
    return self.logits_from_features(feats_BhwK, train), {'features': feats_BhwK}

  def logits_from_features(self, feats_BhwK: jax.Array, train: bool = False) -> jax.Array:
    """What follows `aux['features']` (conv5): pool5, the classifier (Grad-CAM's d/df)."""
    x = layers.max_pool(feats_BhwK, 3, 2, ceil_mode=self.trunk.ceil_mode)
    x = layers.adaptive_avg_pool(x, (6, 6))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.fc6(self.dropout(x, deterministic=not train)))
    x = nnx.relu(self.fc7(self.dropout(x, deterministic=not train)))
    return self.classifier(x)


class AlexNetGAP(layers.GAPNetwork):
  """AlexNet-GAP (and -GMP with `pooling='max'`), paper Sec. 3.1.

  The trunk through conv5 (pool5 .. prob removed), then `cam_conv` 3×3/1, pad 1, 1024
  outputs + ReLU (`aux['features']`, 13×13 at 224/227), global pooling, dropout (as the
  official VGG16 and AlexNet* CAM prototxts have after GAP) and `self.head`.

  There is no official prototxt for AlexNet-GAP; the paper's text gives an ungrouped
  conv, hence `cam_groups=1` (the official VGGnet-GAP uses group 2). Parameters for 1000
  classes: 5,719,400 ('caffe'), 5,855,016 ('torchvision'); 4,539,752 and 4,675,368
  with `cam_groups=2`.
  """

  def __init__(self, num_classes: int, *, variant: str = 'caffe', cam_channels: int = 1024,
               cam_groups: int = 1, pooling: str = 'avg', batch_norm: bool = False,
               dropout_rate: float = 0.5, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.trunk = AlexNetTrunk(variant=variant, batch_norm=batch_norm, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)
    self.add_cam_head(self.trunk.out_channels, num_classes, cam_channels=cam_channels,
                      cam_groups=cam_groups, pooling=pooling, batch_norm=batch_norm,
                      dropout_rate=dropout_rate, dtype=dtype, param_dtype=param_dtype,
                      rngs=rngs)


class AlexNetStarGAP(layers.GAPNetwork):
  """AlexNet*-GAP: AlexNet-GAP with two conv layers added before GAP (paper Table 1).

  `layout='paper'` (the registry's `alexnet_star_gap`) follows the paper's text: the
  AlexNet-GAP trunk (pool5 removed, 13×13 at 227), conv6 and conv7
  (3×3, pad 1, 512 outputs, group 2 in the Caffe variants, as in the official prototxt),
  then the paper's 1024-channel 3×3 conv (`self.cam_conv`), GAP, dropout, `self.head`.

  `layout='official'` (`alexnet_star_gap_official`) is the released
  models/deploy_alexnetplusCAM_imagenet.prototxt of zhoubolei/CAM
  ("imagenetCNN_alexnetdeep", input 227), which differs from the text:

  - conv5 has **384** outputs (3×3, pad 1, group 2), not AlexNet's 256;
  - pool5 **stays**, as a 3×3 max pooling with **stride 1** (13×13 → 11×11);
  - conv6: 3×3, pad 1, 512 outputs, group 2, ReLU;
  - conv7: 3×3, pad 1, 512 outputs, group 2, ReLU (`self.cam_conv`, `aux['features']`);
  - pool8_global: 11×11 average pooling (GAP), drop8 (dropout 0.5), fc9 (`self.head`).

  There is no 1024-channel conv there: the CAM has 512 channels and an 11×11 mapping
  resolution. The prototxt orders LRN after pooling: `variant='caffenet'` matches it
  exactly ('caffe' differs only in that order). For 'torchvision' (no official
  counterpart) conv5 keeps torchvision's 256 channels and conv6/conv7 are ungrouped.

  Parameters for 1000 classes: official 5,133,800 ('caffe', 'caffenet'), 6,522,664
  ('torchvision'); paper 9,849,192 ('caffe').
  """

  def __init__(self, num_classes: int, *, layout: str = 'official', variant: str = 'caffe',
               pooling: str = 'avg', batch_norm: bool = False, dropout_rate: float = 0.5,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    _check_variant(variant)
    if layout not in ('official', 'paper'):
      raise ValueError(f"layout must be 'official' or 'paper', got {layout!r}")
    self.official = layout == 'official'
    caffe = variant != 'torchvision'
    groups = 2 if caffe else 1
    conv = functools.partial(layers.ConvBNReLU, kernel=3, padding=1, groups=groups,
                             batch_norm=batch_norm, dtype=dtype, param_dtype=param_dtype,
                             rngs=rngs)
    self.trunk = AlexNetTrunk(variant=variant,
                              conv5_channels=384 if caffe and self.official else None,
                              batch_norm=batch_norm, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)
    self.conv6 = conv(self.trunk.out_channels, 512)
    if self.official:
      # conv7 of the prototxt is the CAM layer: 512 channels, grouped like conv6.
      self.add_cam_head(512, num_classes, cam_channels=512, cam_groups=groups,
                        pooling=pooling, batch_norm=batch_norm, dropout_rate=dropout_rate,
                        dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    else:
      self.conv7 = conv(512, 512)
      self.add_cam_head(512, num_classes, cam_channels=1024, cam_groups=1, pooling=pooling,
                        batch_norm=batch_norm, dropout_rate=dropout_rate, dtype=dtype,
                        param_dtype=param_dtype, rngs=rngs)

  def backbone(self, images_BHWC: jax.Array, train: bool) -> jax.Array:
    x = self.trunk(images_BHWC, train)
    if self.official:
      return self.conv6(layers.max_pool(x, 3, 1, ceil_mode=self.trunk.ceil_mode), train)
    return self.conv7(self.conv6(x, train), train)

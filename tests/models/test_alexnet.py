"""AlexNet, AlexNet-GAP, AlexNet*-GAP: counts by hand, mapping resolutions, the CAM identity.

Full-size networks are only built under `nnx.eval_shape` / `jax.eval_shape` (nothing is
allocated); real computation uses small inputs and 5 classes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cam_jax import models
from cam_jax.models import alexnet, layers


def _conv(cin, cout, k, groups=1):
  """A conv layer's parameters: cin/groups · cout · k · k weights + cout biases."""
  return cin // groups * cout * k * k + cout


def _fc(cin, cout):
  return cin * cout + cout


# Layer tables, written out from the papers / prototxts / torchvision, not from the code.
CAFFE_CONVS = [_conv(3, 96, 11),               # conv1:    34,944
               _conv(96, 256, 5, groups=2),    # conv2:   307,456
               _conv(256, 384, 3),             # conv3:   885,120
               _conv(384, 384, 3, groups=2),   # conv4:   663,936
               _conv(384, 256, 3, groups=2)]   # conv5:   442,624 -> convs 2,334,080
TORCHVISION_CONVS = [_conv(3, 64, 11),         # conv1:    23,296
                     _conv(64, 192, 5),        # conv2:   307,392
                     _conv(192, 384, 3),       # conv3:   663,936
                     _conv(384, 256, 3),       # conv4:   884,992
                     _conv(256, 256, 3)]       # conv5:   590,080 -> convs 2,469,696
# fc6 9216·4096 + 4096 = 37,752,832; fc7 16,781,312; fc8 4,097,000 -> 58,631,144.
FC = _fc(256 * 6 * 6, 4096) + _fc(4096, 4096) + _fc(4096, 1000)
# AlexNet-GAP: cam_conv 256·1024·9 + 1024 = 2,360,320; head 1024·1000 + 1000 = 1,025,000.
GAP_ADDED = _conv(256, 1024, 3) + _fc(1024, 1000)
# AlexNet*-GAP (deploy_alexnetplusCAM_imagenet.prototxt): conv5 384 (group 2) = 663,936
# instead of 442,624; conv6 384/2·512·9 + 512 = 885,248; conv7 256·512·9 + 512 =
# 1,180,160; fc9 512·1000 + 1000 = 513,000.
STAR_CAFFE = (sum(CAFFE_CONVS[:4]) + _conv(384, 384, 3, groups=2)
              + _conv(384, 512, 3, groups=2) + _conv(512, 512, 3, groups=2) + _fc(512, 1000))
# torchvision variant: conv5 stays 256, conv6 256·512·9 + 512, conv7 512·512·9 + 512.
STAR_TORCHVISION = (sum(TORCHVISION_CONVS) + _conv(256, 512, 3) + _conv(512, 512, 3)
                    + _fc(512, 1000))
# AlexNet*-GAP as the paper's text (layout='paper'): the AlexNet-GAP trunk, conv6
# 256/2·512·9 + 512 = 590,336, conv7 512/2·512·9 + 512 = 1,180,160, then the 1024 conv
# 512·1024·9 + 1024 = 4,719,616 and the head 1,025,000: 9,849,192 in all.
STAR_PAPER = (sum(CAFFE_CONVS) + _conv(256, 512, 3, groups=2) + _conv(512, 512, 3, groups=2)
              + _conv(512, 1024, 3) + _fc(1024, 1000))


def _count(cls, **kwargs):
  return layers.num_params(nnx.eval_shape(lambda: cls(1000, rngs=nnx.Rngs(0), **kwargs)))


@pytest.mark.parametrize('cls, kwargs, expected, known', [
    (alexnet.AlexNet, {'variant': 'torchvision'}, sum(TORCHVISION_CONVS) + FC, 61_100_840),
    (alexnet.AlexNet, {'variant': 'caffe'}, sum(CAFFE_CONVS) + FC, 60_965_224),
    (alexnet.AlexNet, {'variant': 'caffenet'}, sum(CAFFE_CONVS) + FC, 60_965_224),
    (alexnet.AlexNetGAP, {'variant': 'caffe'}, sum(CAFFE_CONVS) + GAP_ADDED, 5_719_400),
    (alexnet.AlexNetGAP, {'variant': 'torchvision'}, sum(TORCHVISION_CONVS) + GAP_ADDED,
     5_855_016),
    # A group-2 cam_conv halves its weights: 128·1024·9 + 1024 = 1,180,672.
    (alexnet.AlexNetGAP, {'cam_groups': 2},
     sum(CAFFE_CONVS) + _conv(256, 1024, 3, groups=2) + _fc(1024, 1000), 4_539_752),
    (alexnet.AlexNetStarGAP, {'variant': 'caffe'}, STAR_CAFFE, 5_133_800),
    (alexnet.AlexNetStarGAP, {'variant': 'torchvision'}, STAR_TORCHVISION, 6_522_664),
    (alexnet.AlexNetStarGAP, {'layout': 'paper'}, STAR_PAPER, 9_849_192),
])
def test_parameter_counts(cls, kwargs, expected, known):
  assert expected == known
  assert _count(cls, **kwargs) == known


@pytest.mark.parametrize('cls, channels, shrink', [
    (alexnet.AlexNet, 256, 0), (alexnet.AlexNetGAP, 1024, 0),
    (alexnet.AlexNetStarGAP, 512, 2),   # pool5 3×3/1 stays: 13 -> 11
])
@pytest.mark.parametrize('variant, size, hw', [
    ('caffe', 227, 13), ('caffe', 224, 13), ('caffenet', 227, 13),
    ('torchvision', 224, 13), ('torchvision', 227, 13),
    ('caffe', 259, 15), ('torchvision', 256, 15), ('caffe', 320, 19), ('torchvision', 320, 19),
])
def test_mapping_resolution(cls, channels, shrink, variant, size, hw):
  def forward(images):
    return cls(7, variant=variant, rngs=nnx.Rngs(0))(images)

  logits, aux = jax.eval_shape(forward, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert logits.shape == (2, 7)
  assert aux['features'].shape == (2, hw - shrink, hw - shrink, channels)


@pytest.mark.parametrize('name, size, shape', [
    ('alexnet_star_gap', 227, (13, 13, 1024)),           # the paper's text: 13×13
    ('alexnet_star_gap_official', 227, (11, 11, 512)),   # the released prototxt
])
def test_registered_star_layouts(name, size, shape):
  def forward(images):
    return models.get_model(name, num_classes=7, rngs=nnx.Rngs(0))(images)

  logits, aux = jax.eval_shape(forward, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert logits.shape == (2, 7)
  assert aux['features'].shape == (2, *shape)


def test_originals_have_no_head():
  model = nnx.eval_shape(lambda: alexnet.AlexNet(5, rngs=nnx.Rngs(0)))
  assert not hasattr(model, 'head')
  with pytest.raises(TypeError, match='no linear `head`'):
    models.head_params(model)


def _torch_adaptive_avg_pool(x, out_h, out_w):
  """Numpy reference: torch's bins [floor(i·H/out), ceil((i+1)·H/out))."""
  H, W = x.shape[1:3]
  y = np.empty((x.shape[0], out_h, out_w, x.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      h0, h1 = (i * H) // out_h, -(-((i + 1) * H) // out_h)
      w0, w1 = (j * W) // out_w, -(-((j + 1) * W) // out_w)
      y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return y


def test_adaptive_avg_pool_uses_torch_bins():
  # x[r, c] = 5r + c. Rows 7 -> 3 bins: [0, 3), [2, 5), [4, 7) (overlapping);
  # cols 5 -> 2 bins: [0, 3), [2, 5).
  x = np.arange(35, dtype=np.float32).reshape(1, 7, 5, 1)
  got = np.asarray(layers.adaptive_avg_pool(jnp.asarray(x), (3, 2)))
  np.testing.assert_allclose(got, _torch_adaptive_avg_pool(x, 3, 2), rtol=1e-6)
  assert got[0, 0, 0, 0] == 5 * 1 + 1    # mean row 1, mean col 1
  assert got[0, 1, 0, 0] == 5 * 3 + 1    # mean row 3
  assert got[0, 2, 1, 0] == 5 * 5 + 3    # mean row 5, mean col 3
  same = jnp.ones((2, 6, 6, 3))
  assert layers.adaptive_avg_pool(same, (6, 6)) is same


# 99 survives the strides: caffe 99 -> conv1 23 -> pool 11 -> pool 5 (-> pool5/1 3).
@pytest.fixture(scope='module')
def images():
  return jax.random.normal(jax.random.key(0), (2, 99, 99, 3))


@pytest.mark.parametrize('cls, variant, hw', [
    (alexnet.AlexNetGAP, 'caffe', 5),
    (alexnet.AlexNetStarGAP, 'caffenet', 3),
    (functools.partial(alexnet.AlexNetStarGAP, layout='paper'), 'caffe', 5),
])
def test_cam_identity(images, cls, variant, hw, random_model):
  model = random_model(lambda: cls(5, variant=variant, rngs=nnx.Rngs(0, dropout=1)))
  logits, aux = model(images, train=False)
  feats = aux['features']
  assert feats.shape[:3] == (2, hw, hw)
  kernel, bias = models.head_params(model)
  np.testing.assert_allclose(feats.mean((1, 2)) @ kernel + bias[None], logits,
                             rtol=1e-4, atol=1e-4)
  # The same through the per-location class maps: mean_hw(M_c) + b_c == logit c.
  cams = jnp.einsum('bhwk,kc->bhwc', feats, kernel)
  np.testing.assert_allclose(cams.mean((1, 2)) + bias[None], logits, rtol=1e-4, atol=1e-4)


def test_dropout_only_in_training(images, random_model):
  model = random_model(lambda: alexnet.AlexNetGAP(5, variant='torchvision',
                                                  rngs=nnx.Rngs(0, dropout=1)))
  eval_a, _ = model(images, train=False)
  eval_b, _ = model(images, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a, _ = model(images, train=True)
  train_b, _ = model(images, train=True)
  assert not np.allclose(train_a, train_b)


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match='variant'):
    nnx.eval_shape(lambda: alexnet.AlexNetGAP(5, variant='alexnet', rngs=nnx.Rngs(0)))
